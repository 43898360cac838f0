"""Rendering the textbook claims: one markdown section per claim, and the reset-gate plot.

Every section is (title, verdict line, body); the numbers come from :mod:`.measure` and the
verdicts from :mod:`.decide`, printed through :mod:`gru_research.reporting`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gru_research.reporting import bold, markdown_table, verdict

Section = tuple[str, str, str]


def verdicts(checks: dict) -> str:
    """'**held** (check), **not held** (other check)'."""
    return ", ".join(f"{bold(verdict(ok))} ({name})" for name, ok in checks.items())


def table_rows(rows: list[dict]) -> list[dict]:
    """The rows as tables and CSV files show them: without the raw samples."""
    return [{k: v for k, v in r.items() if k != "samples"} for r in rows]


def parameters(rows: list[dict], checks: dict, design: str, other: str) -> Section:
    body = (
        "One layer with input size I and hidden size H. The GRU has three blocks of W (I×H), "
        "U (H×H) and b (H), plus the candidate's recurrent bias (H) of the reset-after form that "
        "cuDNN, Flax and PyTorch use: 3(IH + H² + H) + H. The LSTM has four: 4(IH + H² + H). "
        "The ratio tends to 3/4 as H grows.\n\n"
        + markdown_table(rows)
        + "\nThe counted parameters (`design_param_count`) against the closed form, and the "
        "comparison: "
        + verdicts(checks)
        + ". The counted parameters of the models actually trained are in the table of the "
        f"next-but-one section (columns `{design} params`, `{other} params`).\n"
    )
    return f"1. Fewer parameters than the {other.upper()}", verdicts(checks), body


def throughput(rows: list[dict], checks: dict, design: str, other: str, rounds: int) -> Section:
    per_implementation = [
        {
            "implementation": implementation,
            "basis": basis,
            f"{design} speed-up per config": ", ".join(
                f"{r[f'{design} speed-up, {basis}']:.2f}×"
                for r in rows
                if r["implementation"] == implementation
            ),
            f"the {design} trains faster": bold(verdict(ok)),
        }
        for (implementation, basis), ok in checks.items()
    ]
    equal_hidden = [ok for (_, basis), ok in checks.items() if basis == "equal hidden"]
    overall = (
        bold("held")
        if all(equal_hidden)
        else bold("held for some implementations only")
        if any(equal_hidden)
        else bold("not held")
    )
    body = (
        "One full training step (embedding, one recurrent layer, readout, cross-entropy, backward "
        "pass, Adam) of the benchmark harness's configurations (`gru_research/bench.py`), median "
        f"of {rounds} interleaved rounds. At equal params the {other}'s hidden size is cut until "
        f"its whole model has no more parameters than the {design}'s. A speed-up above 1 means "
        f"the {design}'s step is faster.\n\n"
        + markdown_table(rows)
        + "\n"
        + markdown_table(per_implementation)
        + "\nThe verdict is per implementation: the same two cells give different answers "
        "depending on whose kernels run them.\n"
    )
    return f"2. Trains faster than the {other.upper()} (per step)", overall, body


def quality(rows: list[dict], checks: dict, design: str, other: str, rounds: int) -> Section:
    columns = [
        "source",
        "setting",
        "metric",
        f"{design} params",
        f"{other} params",
        "steps",
        f"{design} mean",
        f"{design} std",
        f"{other} mean",
        f"{other} std",
        "p (equal steps)",
        "equal steps",
        f"{design} ms/step",
        f"{other} ms/step",
        "slower design's step at equal time",
        f"{design} validation at equal time",
        f"{other} validation at equal time",
        "p (equal time)",
        "equal time",
    ]

    def count(comparison: str, who: str) -> int:
        return sum(r.get(comparison) == f"{who} better" for r in rows)

    body = (
        f"{design} against {other} on every setting that a committed sweep or this experiment "
        "trained both on, same protocol, same steps. *Equal steps*: final test values, Welch's "
        "t-test over the seeds (5%). *Equal time*: each pair's own training step (its seeds "
        f"vmapped) is timed interleaved here ({rounds} rounds); the faster design is read at "
        "its last validation and the slower at its last validation within the same wall time "
        "(the step shown).\n\n"
        + markdown_table(table_rows(rows), columns)
        + f"\nAt equal steps the {other} is significantly better in "
        f"{count('equal steps', other)} of {len(rows)} settings and the {design} in "
        f"{count('equal steps', design)}; at equal time, {count('equal time', other)} and "
        f"{count('equal time', design)}. The claim holds here if the {other} is significantly "
        "better in none.\n"
    )
    return f"3. Quality comparable to the {other.upper()}", verdicts(checks), body


def vanishing(
    label: str,
    settings: dict,
    rate_rows: list[dict],
    solved: list[dict],
    checks: dict,
) -> Section:
    cells = settings["cells"]
    columns = sorted({(r["source"], r["task"], r["seq_len"]) for r in solved})
    solved_table = [
        {"design": cell}
        | {
            f"{task} T={length} ({source})": next(
                (
                    f"{r['solved']}/{r['seeds']}"
                    for r in solved
                    if (r["source"], r["task"], r["seq_len"], r["cell"])
                    == (source, task, length, cell)
                ),
                "–",
            )
            for source, task, length in columns
        }
        for cell in cells
    ]
    rules = sorted({f"{r['task']}: {r['rule']}" for r in solved})
    body = (
        f"||dL_T / dh_t|| on {label} (one backward pass, `gru-research gradflow`), mean over "
        f"{settings['seeds']} seeds, hidden {settings['hidden']}, batch {settings['batch_size']}; "
        f"trained: the seeds of `{settings['trained_sweep']}` at T = {settings['seq_len']}. The "
        "decay rate is the slope of the log-norm against the distance T − t (steps where the "
        "norm underflows float32 to 0 are left out); the band of each line in the plots is the "
        "seeds' range.\n\n"
        "![gradient flow at initialisation](gradflow_init/gradflow.png)\n"
        "![gradient flow after training](gradflow_trained/gradflow.png)\n\n"
        + markdown_table(rate_rows)
        + "\nSeeds that met the solved rule ("
        + "; ".join(rules)
        + "):\n\n"
        + markdown_table(solved_table)
        + "\n"
        + "".join(f"- {name}: {bold(verdict(ok))}.\n" for name, ok in checks.items())
    )
    return "4. Gates mitigate the vanishing gradient of the tanh RNN", verdicts(checks), body


def reset(
    settings: dict,
    tables: list[str],
    summary_rows: list[dict],
    checks: dict,
) -> Section:
    rule = settings["verdict"]
    low, high = rule["lowest_within"]
    body = (
        f"{settings['design']} against {', '.join(settings['compare'])} on the tasks where "
        f"forgetting matters (the sweeps {', '.join(f'`{s}`' for s in settings['sweeps'])}). "
        "Final test values, Welch's t-test (5%).\n\n"
        + "\n".join(tables)
        + f"\n**Where the trained {settings['design']} resets.** The mean over units of r_t, the "
        "gate on h_{t−1} in the candidate, on the validation split of "
        f"`{settings['lm_sweep']}` cut into the training windows (each read from the initial "
        "state). Offset 0 is the step that reads the boundary's last character. The effect "
        f"size is (the lowest mean r at offsets {low}..{high} − the mean r over all steps) / the "
        "standard deviation of r over all steps, per seed; the verdict reads the "
        f"`{rule['boundary']}` boundary and asks for an effect size ≤ {rule['effect_at_most']} "
        "in every seed.\n\n"
        "![reset gate around boundaries](reset_profile.png)\n\n"
        + markdown_table(summary_rows)
        + "\n"
        + "".join(f"- {name}: {bold(verdict(ok))}.\n" for name, ok in checks.items())
    )
    return "5. The reset gate forgets selectively", verdicts(checks), body


def state_tracking(settings: dict, rows: list[dict], checks: dict, design: str) -> Section:
    metric, source = settings["metric"], settings["source"]
    body = (
        f"The committed sweep [{Path(source).name}]({_relative(source)}/report.md): trained on "
        "lengths 3 to 40, tested on 40 to 256. The final test "
        f"{metric} (the lowest accuracy of the three length buckets), mean ± std over the "
        f"seeds{', at the tuned learning rate' if settings.get('tune') else ''}; solved at "
        f"≥ {settings['solved_at']}. A diagonal linear recurrence with decays in (0, 1) cannot "
        "hold a parity, one with decays in (−1, 1) cannot count modulo 3 or more (Grazzi et al., "
        f"2024); {design}'s gates make its transition depend on the state.\n\n"
        + markdown_table(rows)
        + "\n"
        + "".join(f"- {name}: {bold(verdict(ok))}.\n" for name, ok in checks.items())
    )
    title = "6. The GRU's gates let it track state that a linear recurrence cannot"
    return title, verdicts(checks), body


def _relative(source: str) -> str:
    """A committed sweep's folder as seen from the claims report beside it in results/."""
    return "../" + Path(source).name


def plot_reset_profile(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kind in dict.fromkeys(r["boundary"] for r in rows):
        offsets = sorted({r["offset"] for r in rows if r["boundary"] == kind})
        grid = np.array(
            [
                [r["mean r"] for r in rows if r["boundary"] == kind and r["offset"] == k]
                for k in offsets
            ]
        )
        line = ax.plot(offsets, grid.mean(axis=1), marker="o", label=kind)[0]
        ax.fill_between(offsets, grid.min(1), grid.max(1), alpha=0.2, color=line.get_color())
    overall = np.mean([r["overall mean r"] for r in rows])
    ax.axhline(overall, color="grey", linestyle="--", label="mean over all steps")
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.set(xlabel="steps from the boundary (0: the step reading its last character)")
    ax.set(ylabel="mean reset gate r", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
