"""An experiment's report: provenance, tables, plots, the paper's numbers and its claims checked.

The sweep file's ``report`` section says what the report holds::

    report:
      metrics: [loss, accuracy]   # final test metrics, one table each (first: the claims')
      reference: gru              # the Welch t-test's reference design
      rows: cell                  # row parameters (comma-separated), default cell
      tune: {parameter: lr, on: validation, metric: loss}   # each design at its best lr
      length_plot: [accuracy_40_64, accuracy_64_128]   # metrics per length bucket, plotted
      paper:                      # published numbers, matched on the listed config values
        - {cell: lstm, seq_len: 100, value: 0.145, source: "Fig. 1, read off the plot"}
      claims:                     # each checked on the table's means
        - text: "the tanh RNN stays at the memoryless baseline at T = 200"
          where: {cell: rnn_tanh, seq_len: 200}
          within_baseline: 0.05   # |mean / baseline − 1| <= 0.05
        # other checks: below: X, above: X, below_baseline: F (mean <= F × baseline),
        # better_than: {cell: gru} (at the same column), close_to: {cell: gru, tolerance: 0.1},
        # no_worse_than: {cell: gru, tolerance: 0.1} (better, or worse by at most 0.1),
        # metric: NAME (default: the first); on the validation curve: by_step: {step: 5000,
        # below: 0.01}, leaves_baseline: {ratio: 0.97, after_step: 2000, before_step: 50000};
        # a value in ``where`` may be a list: any of its values

A claim holds when every table entry it selects passes its check; the report says
"held", "not held" or "no data" and shows the numbers behind the verdict.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gru_research.config import TrainConfig
from gru_research.executors import IN_PROCESS
from gru_research.reporting import (
    CHECKS,
    CURVE_CHECKS,
    claims_table,
    how_many,
    markdown_table,
    report_header,
    verdict,
)
from gru_research.sweep import per_cell_keys
from gru_research.tables import (
    Table,
    Tuning,
    higher_is_better,
    label,
    learning_curves,
    load_runs,
    plot_by_length,
    plot_name,
    to_markdown,
    tune_runs,
    write_table,
)
from gru_research.tracking import file_at_commit, read_json, write_atomic

Curves = dict[tuple, dict[tuple, tuple[np.ndarray, np.ndarray]]]
PINS_FILE = "tests/output_pins.json"


def mean_curve(curves: Curves, row: tuple, column: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(steps, the mean over seeds) of one entry's validation curve; empty if it has none."""
    steps, grid = curves.get(column, {}).get(row, (np.zeros(0), np.zeros((0, 0))))
    if grid.size == 0:
        return np.zeros(0), np.zeros(0)
    return steps, np.nanmean(grid, axis=0)


def check_curve(
    kind: str, spec: dict, steps: np.ndarray, mean: np.ndarray, baseline, higher: bool
) -> tuple[bool, str]:
    """A curve claim on one entry's mean validation curve.

    ``by_step: {step: N, below: X}``: the last record at or before step N is at most X.
    ``leaves_baseline: {ratio: r, after_step: a, before_step: b}``: the first record at most
    r × the baseline (at least, for accuracy) comes after step a and before step b (either
    bound may be left out).
    """
    if not steps.size:
        return False, "no validation records"
    if kind == "by_step":
        upto = steps <= spec["step"]
        if not upto.any():
            return False, f"no record by step {spec['step']}"
        value = float(mean[upto][-1])
        at = int(steps[upto][-1])
        return value <= spec["below"], f"{value:.4g} at step {at} vs {spec['below']}"
    if baseline is None:
        return False, "no baseline"
    bound = spec["ratio"] * baseline
    left = mean >= bound if higher else mean <= bound
    if not left.any():
        return False, f"never {'above' if higher else 'below'} {spec['ratio']}× baseline"
    first = int(steps[np.argmax(left)])
    ok = spec.get("after_step", -1) < first < spec.get("before_step", float("inf"))
    return ok, f"leaves {spec['ratio']}× baseline at step {first}"


@dataclass(frozen=True)
class Convergence:
    """Whether one entry's mean validation curve has flattened by its last record.

    Converged: over the last 20 % of the records (from the record at 80 % of the way to the
    last) the mean over seeds improves by less than the tolerance, max(1 % of the final value,
    the seeds' standard deviation at the last record). ``flat_from``: the first step from which
    every record stays within the tolerance of the final value.
    """

    steps: int
    improvement: float
    tolerance: float
    flat_from: int

    @property
    def converged(self) -> bool:
        return self.improvement < self.tolerance


def convergence(steps: np.ndarray, grid: np.ndarray, higher: bool) -> Convergence | None:
    """The :class:`Convergence` of one entry's curve (``grid``: seeds × records), or None with
    fewer than 5 records."""
    if len(steps) < 5:
        return None
    mean = np.nanmean(grid, axis=0)
    sign = -1.0 if higher else 1.0
    start = round(0.8 * (len(steps) - 1))
    spread = float(np.nanstd(grid[:, -1], ddof=1)) if grid.shape[0] > 1 else 0.0
    tolerance = max(0.01 * abs(float(mean[-1])), 0.0 if np.isnan(spread) else spread)
    outside = np.flatnonzero(np.abs(mean - mean[-1]) > tolerance)
    flat = int(steps[outside[-1] + 1]) if outside.size else int(steps[0])
    improvement = sign * float(mean[start] - mean[-1])
    return Convergence(int(steps[-1]), improvement, tolerance, flat)


def convergence_section(table: Table, curves: Curves) -> list[str]:
    """The report's convergence rows, one per entry of ``table`` with a validation curve."""
    rows = []
    for column, row in itertools.product(table.columns, table.rows):
        steps, grid = curves.get(column, {}).get(row, (np.zeros(0), np.zeros((0, 0))))
        found = convergence(steps, grid, higher_is_better(table.metric)) if grid.size else None
        if found is None:
            continue
        rows.append(
            {
                "entry": f"{label(table.row_keys, row)} @ {label(table.column_keys, column)}",
                "steps": found.steps,
                "last 20 %: improvement": found.improvement,
                "tolerance": found.tolerance,
                "converged": "yes" if found.converged else "**no** (stopped at the step cap)",
                "flat from step": found.flat_from,
            }
        )
    if not rows:
        return []
    return [
        "",
        f"## Convergence (validation {table.metric})",
        "",
        "Converged: the mean over seeds improves over the last 20 % of the validation records "
        "by less than the tolerance, max(1 % of the final value, the seeds' std at the last "
        "record). Flat from: the first step from which every record stays within the "
        "tolerance of the final value.",
        "",
        markdown_table(rows).rstrip("\n"),
    ]


def check_claim(claim: dict, table: Table, curves: Curves | None = None) -> tuple[str, str]:
    """(verdict, the figures behind it) of one claim on one table (curve claims read the
    entries' validation ``curves``, :func:`gru_research.tables.learning_curves`)."""
    kind = next((k for k in CHECKS if k in claim), None)
    if kind is None:
        raise ValueError(f"claim {claim.get('text')!r} has no check; valid checks: {CHECKS}")
    selected = table.selected(claim.get("where", {}))
    if not selected:
        return verdict(None), "no finished runs match"
    sign = -1 if higher_is_better(table.metric) else 1
    results, evidence = [], []
    for row, column, entry in selected:
        name = f"{label(table.row_keys, row)} @ {label(table.column_keys, column)}"
        baseline = table.baselines.get(column)
        if kind in CURVE_CHECKS:
            steps, mean = mean_curve(curves or {}, row, column)
            higher = higher_is_better(table.metric)
            ok, note = check_curve(kind, claim[kind], steps, mean, baseline, higher)
        elif kind == "below":
            ok, note = entry.mean <= claim["below"], f"{entry.mean:.4g} vs {claim['below']}"
        elif kind == "above":
            ok, note = entry.mean >= claim["above"], f"{entry.mean:.4g} vs {claim['above']}"
        elif baseline is None:
            ok, note = False, "no baseline"
        elif kind == "within_baseline":
            ratio = entry.mean / baseline
            ok, note = abs(ratio - 1) <= claim["within_baseline"], f"{ratio:.3f}× baseline"
        elif kind == "below_baseline":
            ratio = entry.mean / baseline
            ok, note = ratio <= claim["below_baseline"], f"{ratio:.3f}× baseline"
        else:
            against = claim[kind]
            other_row = tuple(against.get(k, v) for k, v in zip(table.row_keys, row, strict=True))
            other = table.entries.get((other_row, column))
            if other is None or not other.values:
                ok, note = False, f"no runs of {label(table.row_keys, other_row)}"
            elif kind == "better_than":
                ok = sign * entry.mean < sign * other.mean
                note = f"{entry.mean:.4g} vs {other.mean:.4g}"
            elif kind == "no_worse_than":
                ok = sign * (entry.mean - other.mean) <= against["tolerance"]
                note = f"{entry.mean:.4g} vs {other.mean:.4g}"
            else:
                ok = abs(entry.mean - other.mean) <= against["tolerance"]
                note = f"{entry.mean:.4g} vs {other.mean:.4g}"
        results.append(ok)
        evidence.append(f"{name}: {note}")
    return verdict(all(results)), "; ".join(evidence)


def attempt_commits(runs: list) -> Counter[str]:
    """Each commit that trained some of ``runs`` (every attempt of a resumed run counted), with
    how many runs it trained."""
    counts: Counter[str] = Counter()
    for run in runs:
        saved = read_json(run.folder / "config.json")
        attempts = {a["git_commit"] for a in saved.get("attempts", [])}
        counts.update(str(c) for c in attempts or {saved.get("git_commit") or "unrecorded"})
    return counts


def training_commits(counts: Counter[str]) -> str:
    """The commits that trained the runs and how many runs each (``counts`` from
    :func:`attempt_commits`): more than one commit means the run folders span commits; then
    :func:`pins_line` says whether the numerics moved."""
    return ", ".join(
        f"`{commit[:12]}` ({how_many(n, 'run')})" for commit, n in sorted(counts.items())
    )


def pins_line(commits: Sequence[str]) -> str:
    """Whether the output pins (float64 outputs and gradients of the main designs, pinned to
    1e-12 by the tests) are the same file at every commit that trained the runs."""
    if len(commits) == 1:
        return f"output pins: nothing to compare (one commit, {commits[0][:12]})"
    pins = {c: file_at_commit(PINS_FILE, c.removesuffix("+dirty")) for c in commits}
    unknown = [c[:12] for c, blob in pins.items() if blob is None]
    dirty = [c[:12] for c in commits if c.endswith("+dirty")]
    if unknown:
        return f"output pins: not compared ({', '.join(unknown)}: not a commit of this checkout)"
    versions = len(set(pins.values()))
    same = (
        f"the same at all {len(pins)} commits"
        if versions == 1
        else f"**{versions} different versions** across the {len(pins)} commits"
    )
    caveat = f" (with local changes at {', '.join(dirty)})" if dirty else ""
    return f"output pins (`{PINS_FILE}`): {same}{caveat}"


def sizes_line(sweep: dict) -> str:
    """Whether the designs were compared at equal parameter counts or at equal hidden sizes,
    and the designs with settings of their own (``per_cell``)."""

    def given(name: str):
        spec = sweep["parameters"].get(name, {})
        return spec.get("values", spec.get("value"))

    hidden = given("hidden")
    hidden = TrainConfig().hidden if hidden is None else hidden
    if (budget := given("param_budget")) is not None:
        line = (
            "sizes: parameter-matched, each design at the largest hidden size within "
            f"param_budget = {budget}"
        )
    elif (anchor := given("size_like")) is not None:
        line = (
            "sizes: parameter-matched, each design at the largest hidden size within the "
            f"parameters of {anchor} at hidden = {hidden}"
        )
    else:
        line = f"sizes: equal hidden sizes, hidden = {hidden}"
    own = [
        f"{cell} " + ", ".join(f"{k}={v}" for k, v in settings.items())
        for cell, settings in sweep.get("per_cell", {}).items()
    ]
    return line + (f"; per cell: {'; '.join(own)}" if own else "")


def write_report(
    out: str | Path,
    sweep: dict,
    *,
    command: str,
    wall_time_s: float | None,
    points_run: str = IN_PROCESS,
    unfinished: Sequence[str] = (),
) -> Path:
    """Tables, plots and ``report.md`` for the sweep whose run folders are under ``out``.

    ``points_run`` says how this invocation ran the points (in this process, worker processes,
    SLURM jobs): a provenance line; the tables are read from the run folders alone.
    ``wall_time_s`` is None for a report that trained nothing (``sweep --report-only``).
    ``unfinished`` names the points not trained yet (``sweep --report-only`` on a sweep under
    way): the report says that its tables cover the finished points only.
    """
    out = Path(out)
    spec = sweep.get("report", {})
    metrics = spec.get("metrics", ["loss"])
    row_keys = tuple(spec.get("rows", "cell").split(","))
    tuning = Tuning(**spec["tune"]) if spec.get("tune") else None
    reference = spec.get("reference")
    runs = load_runs(out)
    trained_rows = {run.config.get(row_keys[0]) for run in runs}
    if unfinished and reference not in trained_rows:  # its runs are not trained yet: no tests
        reference = None
    tables = [
        write_table(
            out,
            m,
            reference=reference,
            row_keys=row_keys,
            paper=spec.get("paper"),
            tuning=tuning,
            runs=runs,
            row_settings=per_cell_keys(sweep),
        )
        for m in metrics
    ]
    fixed = {k: v["value"] for k, v in sweep["parameters"].items() if "value" in v}
    varied = {k: v["values"] for k, v in sweep["parameters"].items() if "values" in v}
    invocation = (
        "nothing trained in this invocation (a report only)"
        if wall_time_s is None
        else f"{wall_time_s / 60:.1f} min for this invocation of the sweep"
    )
    commits = attempt_commits(runs)
    lines = report_header(
        sweep.get("name", out.name),
        sweep.get("description", ""),
        command,
        f"wall time: {invocation}; "
        f"{sum(t.total_seconds for t in tables[:1]) / 60:.1f} min of training summed over its "
        "points (each point's own run, resumed parts included)",
        f"points run: {points_run}",
        f"commits that trained the runs: {training_commits(commits)}",
        pins_line(sorted(commits)),
        f"seeds per point: {sweep.get('seeds', 1)} (vmapped)",
        sizes_line(sweep),
        f"varied: {', '.join(f'{k} ∈ {v}' for k, v in varied.items())}",
        f"fixed: {', '.join(f'{k}={v}' for k, v in fixed.items())}",
    )
    if spec.get("scale_note"):
        lines += ["", f"**Scale.** {spec['scale_note'].strip()}"]
    if unfinished:
        lines += [
            "",
            f"**Unfinished.** {how_many(len(unfinished), 'point')} not trained yet: "
            f"{'; '.join(unfinished)}. The tables, curves and claims below cover the finished "
            "points only; rerunning the sweep's command trains the rest.",
        ]
    for table in tables:
        lines += ["", f"## Final test {table.metric}", "", to_markdown(table)]
    if tuning is not None:
        lines += ["", f"## The whole grid over {tuning.parameter} (descriptive)", ""]
        for table in tables:
            lines += [(out / f"table_{table.metric}_grid.md").read_text()]
    if spec.get("length_plot"):
        by_name = {t.metric: t for t in tables}
        plots = plot_by_length([by_name[m] for m in spec["length_plot"]], out)
        lines += ["", "## Test accuracy against length", ""]
        lines += [f"![{p.name}]({p.name})" for p in plots]
    named = sorted({plot_name("curves", tables[0], column) for column in tables[0].columns})
    plots = [name for name in named if (out / name).exists()]  # not a stale one of older runs
    if plots:
        lines += ["", "## Learning curves (validation)", ""]
        lines += [f"![{p}]({p})" for p in plots]
    runs = tune_runs(runs, tuning)[0] if tuning else runs
    lines += convergence_section(tables[0], learning_curves(runs, tables[0]))
    if spec.get("paper"):
        rows = [
            {
                "where": ", ".join(
                    f"{k}={v}" for k, v in e.items() if k not in ("value", "source", "metric")
                ),
                "value": str(e["value"]),  # as published, not rounded
                "source": e.get("source", ""),
            }
            for e in spec["paper"]
        ]
        lines += ["", "## The paper's numbers", "", markdown_table(rows).rstrip("\n")]
    if spec.get("claims"):
        by_metric = {t.metric: t for t in tables}
        checked = []
        for claim in spec["claims"]:
            table = by_metric[claim.get("metric", metrics[0])]
            curves = learning_curves(runs, table) if any(k in claim for k in CURVE_CHECKS) else {}
            checked.append((claim["text"], *check_claim(claim, table, curves)))
        lines += claims_table(checked)
    path = out / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path
