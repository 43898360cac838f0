"""Deciding the textbook claims: verdicts from the measured numbers, never from text.

Each function takes the rows of :mod:`.measure` and the thresholds the experiment file states,
and returns named checks, each True (held) or False (not held). :mod:`.render` prints them.
"""

from __future__ import annotations

from gru_research.reporting import significantly_better
from gru_research.tables import higher_is_better


def parameters(rows: list[dict], design: str, other: str) -> dict[str, bool]:
    return {
        "the count equals the closed form": all(
            r[f"{d} closed form"] == r[f"{d} counted"] for r in rows for d in (design, other)
        ),
        f"{design} has fewer parameters": all(
            r[f"{design} counted"] < r[f"{other} counted"] for r in rows
        ),
    }


def throughput(rows: list[dict], design: str) -> dict[tuple[str, str], bool]:
    """(implementation, basis) → whether ``design``'s step is faster in every configuration."""
    return {
        (implementation, basis): all(
            r[f"{design} speed-up, {basis}"] > 1
            for r in rows
            if r["implementation"] == implementation
        )
        for implementation in dict.fromkeys(r["implementation"] for r in rows)
        for basis in ("equal hidden", "equal params")
    }


def outcome(row: dict, comparison: str, names: tuple[str, str]) -> str:
    """Who is significantly better (Welch's test) in one comparison of a pair's row."""
    samples = row["samples"].get(comparison)
    if samples is None:
        return "no evaluation"
    better = significantly_better(*samples, higher_is_better=higher_is_better(row["metric"]))
    return {
        "a": f"{names[0]} better",
        "b": f"{names[1]} better",
        "neither": "no significant difference",
        "too few seeds": "too few seeds",
    }[better]


def with_outcomes(rows: list[dict], names: tuple[str, str]) -> list[dict]:
    """The rows with their outcome at equal steps (and at equal time, where timed)."""
    return [
        row
        | {c: outcome(row, c, names) for c in ("equal steps", "equal time") if c in row["samples"]}
        for row in rows
    ]


def quality(rows: list[dict], other: str) -> dict[str, bool]:
    """Comparable quality: ``other`` is significantly better in no setting."""
    return {
        comparison: not any(r.get(comparison) == f"{other} better" for r in rows)
        for comparison in ("equal steps", "equal time")
    }


def vanishing(
    rates: dict[str, dict[str, float]], solved: list[dict], baseline: str
) -> dict[str, bool]:
    """Every gated design's gradient decays more slowly than the ``baseline``'s (at each of
    ``rates``' moments), and some gated design solves a setting the baseline solves none of."""
    checks = {
        f"slower decay than {baseline} ({when})": all(
            rate > by_design[baseline] for design, rate in by_design.items() if design != baseline
        )
        for when, by_design in rates.items()
    }
    baseline_solves = any(r["solved"] for r in solved if r["cell"] == baseline)
    gated_solve = any(r["solved"] for r in solved if r["cell"] != baseline)
    checks[f"gated designs solve, {baseline} does not"] = gated_solve and not baseline_solves
    return checks


def reset(
    rows: list[dict], design: str, without_reset: str, effects: list[dict], effect_at_most: float
) -> dict[str, bool]:
    """The reset gate helps (``design`` significantly better than ``without_reset`` on every
    task) and falls at the boundary (an effect size ≤ ``effect_at_most`` in every seed)."""
    against = [r for r in rows if f"{without_reset} mean" in r]
    return {
        f"{design} beats {without_reset}": bool(against)
        and all(r["equal steps"] == f"{design} better" for r in against),
        "r falls at the boundary": bool(effects)
        and all(e["effect"] <= effect_at_most for e in effects),
    }


def state_tracking(
    rows: list[dict], design: str, linear: list[str], metric: str, solved_at: float
) -> dict[str, bool]:
    """``design`` solves every task (the mean ``metric`` at least ``solved_at``), and each
    ``linear`` design fails some task that ``design`` solves."""
    mean = {(r["task"], r["cell"]): r[f"{metric} mean"] for r in rows}
    tasks = sorted({r["task"] for r in rows})
    solves = {t for t in tasks if mean.get((t, design), -1.0) >= solved_at}
    checks = {f"{design} solves every task": bool(tasks) and solves == set(tasks)}
    for other in linear:
        checks[f"{other} fails a task {design} solves"] = any(
            (t, other) in mean and mean[t, other] < solved_at for t in solves
        )
    return checks
