"""Runs → paper-style tables (markdown and CSV) and learning-curve plots.

One row per design (``cell``, plus any other row parameters), one column per task setting (the
config values that vary across the runs, other than the row parameters and the sizes that
follow from them). Each cell is ``mean ± std`` over the seeds that did not diverge, with ``n``
and the count of diverged seeds; the best per column is bold; a Welch t-test (scipy) against a
reference design marks differences significant at 5% with ``*``; the paper's number, where the
sweep file gives one, stands beside ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gru_research.config import PROVENANCE_FIELDS, TASKS
from gru_research.gates import PRESETS
from gru_research.reporting import (
    SIGNIFICANCE,
    csv_table,
    format_mean_std,
    markdown_table,
    mean_std,
    welch_p,
)
from gru_research.tracking import read_json, write_atomic


def higher_is_better(metric: str) -> bool:
    """Accuracies (overall, per length bucket, the worst bucket's) rise; the rest fall."""
    return "accuracy" in metric


IGNORED_IN_SETTINGS = ("cell", "seed", "seeds", "hidden", "wandb", *PROVENANCE_FIELDS)
METRIC_ALIASES = {"bits_per_token": "bpc"}
STATE_TRACKING_METRICS = tuple(
    f"{m}_{b}" for m in ("loss", "accuracy") for b in ("40_64", "64_128", "128_256")
)
METRIC_NAMES = (
    "loss", "accuracy", "bits_per_token", "bpc", "perplexity", "worst_accuracy",
    *STATE_TRACKING_METRICS,
)  # fmt: skip
"""The metrics the tasks log (each task logs some of them)."""
TUNE_SPLITS = ("validation",)
"""A metric's older name, read where a run folder predates the new one (word-level PTB runs
logged their bits per word as "bpc")."""


@dataclass(frozen=True)
class Run:
    folder: Path
    config: dict
    summary: dict

    def values(self, metric: str) -> list[float]:
        """The final test values of ``metric`` of the seeds that did not diverge."""
        final = self.summary["final"]
        values = final.get(metric, final.get(METRIC_ALIASES.get(metric, ""), []))
        return [v for v in values if v is not None]

    def evaluations(self, split: str, metric: str) -> list[dict]:
        """The ``metrics.jsonl`` records of ``split`` that hold ``metric`` (under that name,
        whatever the run called it), for the seeds that did not diverge."""
        alias = METRIC_ALIASES.get(metric)
        path = self.folder / "metrics.jsonl"
        try:
            records = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON lines: {err}") from None
        records = [
            {**r, metric: r[alias]} if r.get(metric) is None and r.get(alias) is not None else r
            for r in records
        ]
        return [
            r
            for r in records
            if r["split"] == split
            and r.get(metric) is not None
            and r["seed"] not in self.summary["diverged"]
        ]


@dataclass(frozen=True)
class Tuning:
    """``tune: {parameter: lr, on: validation, metric: loss}`` of a sweep's report."""

    parameter: str
    on: str = "validation"
    metric: str = "loss"


@dataclass
class Entry:
    """One entry of a table: the seeds' values of one design in one task setting (and, in a
    tuned table, the value of the tuned parameter they were read at)."""

    values: list[float]
    diverged: int
    paper: float | None = None
    p_value: float | None = None
    best: bool = False
    tuned: str | None = None

    @property
    def mean(self) -> float:
        return mean_std(self.values)[0]

    @property
    def std(self) -> float:
        return mean_std(self.values)[1]


@dataclass
class Table:
    metric: str
    rows: list[tuple]
    row_keys: list[str]
    columns: list[tuple]
    column_keys: list[str]
    entries: dict[tuple, Entry] = field(default_factory=dict)
    baselines: dict[tuple, float] = field(default_factory=dict)
    reference: str | None = None
    total_seconds: float = 0.0
    tuning: Tuning | None = None

    def where(self, row: tuple, column: tuple) -> dict:
        """The config values an entry stands for: its row's and its column's."""
        return dict(zip(self.row_keys, row, strict=True)) | dict(
            zip(self.column_keys, column, strict=True)
        )

    def selected(self, where: dict) -> list[tuple[tuple, tuple, Entry]]:
        """The (row, column, entry) with values whose config matches ``where``."""
        return [
            (row, column, entry)
            for (row, column), entry in self.entries.items()
            if entry.values
            and all(_matches(self.where(row, column).get(k), v) for k, v in where.items())
        ]


def _matches(value, wanted) -> bool:
    """A config value against a claim's ``where`` entry: equal, or one of a list."""
    return value in wanted if isinstance(wanted, list) else value == wanted


def load_runs(root: str | Path) -> list[Run]:
    """Every finished run folder (one with a ``summary.json``) under ``root``."""
    runs = []
    for summary in sorted(Path(root).rglob("summary.json")):
        config = read_json(summary.parent / "config.json")
        if not isinstance(config, dict) or not isinstance(config.get("run"), dict):
            raise ValueError(f"{summary.parent / 'config.json'} holds no run config")
        values = read_json(summary)
        if not isinstance(values, dict) or not isinstance(values.get("final"), dict):
            raise ValueError(f"{summary} holds no final metrics")
        runs.append(Run(summary.parent, config["run"], values))
    if not runs:
        raise FileNotFoundError(f"no finished run folders (with summary.json) under {root}")
    return runs


def tuning_problem(spec: Any, parameters: dict) -> str | None:
    """What is wrong with a report's ``tune`` entry, or None: a mapping naming a parameter
    the sweep varies, a split to select on and a metric name."""
    if not isinstance(spec, dict) or not isinstance(spec.get("parameter"), str):
        return f"must be a mapping with a 'parameter', got {spec!r}"
    if unknown := sorted(set(spec) - {"parameter", "on", "metric"}):
        return f"unknown keys {unknown}; valid: parameter, on, metric"
    name = spec["parameter"]
    if "values" not in parameters.get(name, {}):
        varied = [k for k, v in parameters.items() if "values" in v]
        return f"parameter {name!r} is not varied by the sweep; varied: {', '.join(varied)}"
    if spec.get("on", "validation") not in TUNE_SPLITS:
        return f"unknown split {spec['on']!r} to tune on; valid: {', '.join(TUNE_SPLITS)}"
    if spec.get("metric", "loss") not in METRIC_NAMES:
        return f"unknown metric {spec['metric']!r} to tune on; valid: {', '.join(METRIC_NAMES)}"
    return None


def final_evaluation(run: Run, split: str, metric: str) -> float | None:
    """The mean over the seeds of ``metric`` at the run's last ``split`` evaluation (None if it
    logged none); raises naming the logged metrics for an unknown one."""
    records = run.evaluations(split, metric)
    if not records:
        return None
    last = max(r["step"] for r in records)
    return float(np.mean([r[metric] for r in records if r["step"] == last]))


def tune_runs(runs: list[Run], tuning: Tuning) -> tuple[list[Run], dict[Path, Any]]:
    """The runs at each tuning group's chosen value of ``tuning.parameter``, and the value
    chosen for each kept run's folder.

    A tuning group is the runs that agree on every other varying key. Its chosen value has the
    best mean final ``on`` metric over the seeds (highest for accuracy, lowest otherwise); a
    value with a diverged seed ranks after every value without one; ties go to the smaller
    value.
    """
    if tuning.metric not in (logged := _logged_evaluations(runs, tuning.on)):
        raise ValueError(
            f"cannot tune on {tuning.on} {tuning.metric!r}: no run logged it; logged: "
            f"{', '.join(logged)}"
        )
    others = [k for k in varying_keys(runs) if k != tuning.parameter]
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(repr(run.config.get(k)) for k in others), []).append(run)
    sign = -1 if higher_is_better(tuning.metric) else 1
    kept, chosen = [], {}
    for members in groups.values():

        def rank(run: Run) -> tuple:
            score = final_evaluation(run, tuning.on, tuning.metric)
            missing = score is None or bool(run.summary["diverged"])
            return (
                missing,
                sign * score if score is not None else 0.0,
                run.config.get(tuning.parameter),
            )

        best = min(members, key=rank)
        value = best.config.get(tuning.parameter)
        for run in members:
            if run.config.get(tuning.parameter) == value:
                kept.append(run)
                chosen[run.folder] = value
    return kept, chosen


def _logged_evaluations(runs: list[Run], split: str) -> list[str]:
    names = set()
    for run in runs:
        path = run.folder / "metrics.jsonl"
        for line in path.read_text("utf-8").splitlines() if path.exists() else []:
            record = json.loads(line)
            if record.get("split") == split:
                names |= {k for k, v in record.items() if isinstance(v, float)}
    return sorted(n for n in names if not n.startswith("baseline_"))


def varying_keys(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1]


def build_table(
    runs: list[Run],
    metric: str = "loss",
    *,
    row_keys: tuple[str, ...] = ("cell",),
    reference: str | None = None,
    paper: list[dict] | None = None,
    tuning: Tuning | None = None,
    row_settings: tuple[str, ...] = (),
) -> Table:
    """The table of ``metric`` (a final test metric) over the runs; with ``tuning``, each
    design and setting at its chosen value of the tuned parameter (:func:`tune_runs`), that
    value printed in its cell. ``row_settings`` are parameters some designs set for themselves
    (a sweep's ``per_cell``): they vary between rows, so they must not make columns."""
    reference = check_request(runs, metric, row_keys, reference)
    chosen: dict[Path, Any] = {}
    if tuning is not None:
        runs, chosen = tune_runs(runs, tuning)
    ignored = (
        row_keys + row_settings + IGNORED_IN_SETTINGS + ((tuning.parameter,) if tuning else ())
    )
    column_keys = [k for k in varying_keys(runs) if k not in ignored]
    column_keys = ["task", *(k for k in column_keys if k != "task")]  # labels start with it

    def key(run: Run, keys) -> tuple:
        return tuple(run.config.get(k) for k in keys)

    rows = sorted(dict.fromkeys(key(r, row_keys) for r in runs), key=_design_order)
    columns = sorted(dict.fromkeys(key(r, column_keys) for r in runs), key=_task_order)
    table = Table(
        metric, rows, list(row_keys), columns, column_keys, reference=reference, tuning=tuning
    )
    for run in runs:
        at = (key(run, row_keys), key(run, column_keys))
        entry = table.entries.setdefault(at, Entry([], 0))
        if run.folder in chosen:
            entry.tuned = f"{tuning.parameter} {_value_text(chosen[run.folder])}"
        entry.values.extend(run.values(metric))
        entry.diverged += len(run.summary["diverged"])
        table.total_seconds += run.summary.get("wall_time_s", 0.0)
        baseline = run.summary.get("baseline", {})
        baseline = baseline.get(metric, baseline.get(METRIC_ALIASES.get(metric, "")))
        if baseline is not None:
            table.baselines[at[1]] = baseline
    for (row, column), entry in table.entries.items():
        entry.paper = _paper_value(paper or [], table.where(row, column), metric)
        if reference is not None and row[0] != reference:
            ref = table.entries.get(((reference, *row[1:]), column))
            if ref:
                entry.p_value = welch_p(entry.values, ref.values)
    sign = -1 if higher_is_better(metric) else 1
    for column in columns:
        scored = [e for (_, col), e in table.entries.items() if col == column and e.values]
        if scored:
            min(scored, key=lambda e: sign * e.mean).best = True
    return table


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def logged_metrics(runs: list[Run]) -> list[str]:
    """The final test metrics the runs logged, under their names and their newer names."""
    names = {name for run in runs for name in run.summary["final"]}
    return sorted(names | {new for new, old in METRIC_ALIASES.items() if old in names})


def check_request(runs: list[Run], metric: str, row_keys: tuple[str, ...], reference: Any) -> Any:
    """The reference row value (``"2"`` names the row ``layers=2``), after one line naming the
    valid ones unless the runs logged ``metric``, have the row parameters, and ``reference`` is
    None or one of their rows (a value of the first row parameter)."""
    if metric not in (logged := logged_metrics(runs)):
        raise ValueError(f"no run logged the metric {metric!r}; logged: {', '.join(logged)}")
    keys = sorted({k for run in runs for k in run.config})
    if unknown := [k for k in row_keys if k not in keys]:
        raise ValueError(f"unknown row parameters {unknown}; valid: {', '.join(keys)}")
    if reference is None:
        return None
    rows = sorted({run.config.get(row_keys[0]) for run in runs}, key=str)
    match = [row for row in rows if row == reference or str(row) == str(reference)]
    if not match:
        valid = ", ".join(map(str, rows))
        raise ValueError(f"reference {reference!r} is not a row ({row_keys[0]}); valid: {valid}")
    return match[0]


def _design_order(row: tuple) -> tuple:
    names = list(PRESETS)
    return (names.index(row[0]) if row[0] in names else len(names), *map(str, row))


def _task_order(column: tuple) -> tuple:
    return (
        TASKS.index(column[0]) if column[0] in TASKS else len(TASKS),
        *((0, v, "") if isinstance(v, int | float) else (1, 0, str(v)) for v in column[1:]),
    )


def _paper_value(entries: list[dict], where: dict, metric: str) -> float | None:
    for entry in entries:
        if entry.get("metric", "loss") != metric:
            continue
        conditions = {k: v for k, v in entry.items() if k not in ("value", "metric", "source")}
        if all(where.get(k) == v for k, v in conditions.items()):
            return entry["value"]
    return None


def label(keys: list[str], values: tuple) -> str:
    """A row's or column's name: ``copy seq_len=100`` (the task and the cell bare)."""
    return (
        " ".join(
            f"{k}={v}" if k not in ("task", "cell") else str(v)
            for k, v in zip(keys, values, strict=True)
        )
        or "all"
    )


def format_entry(entry: Entry | None) -> str:
    """``**0.123 ± 0.01** (n=3, 1 div.) * [paper: 0.12]``."""
    if entry is None:
        return "–"
    if not entry.values:
        text = f"all diverged ({entry.diverged})"
    else:
        text = format_mean_std(entry.values)
        text = f"**{text}**" if entry.best else text
        text += f" (n={len(entry.values)}" + (f", {entry.diverged} div." if entry.diverged else "")
        text += f", {entry.tuned})" if entry.tuned else ")"
    if entry.p_value is not None and entry.p_value < SIGNIFICANCE:
        text += " *"
    if entry.paper is not None:
        text += f" [paper: {entry.paper:g}]"
    return text


def to_markdown(table: Table) -> str:
    corner = " / ".join(table.row_keys)
    columns = [label(table.column_keys, c) for c in table.columns]
    rows = [
        {corner: label(table.row_keys, row)}
        | {
            name: format_entry(table.entries.get((row, c)))
            for name, c in zip(columns, table.columns, strict=True)
        }
        for row in table.rows
    ]
    baselines = [table.baselines.get(c) for c in table.columns]
    if any(b is not None for b in baselines):
        rows.append(
            {corner: "memoryless baseline"}
            | {
                name: "–" if b is None else f"{b:#.4g}"
                for name, b in zip(columns, baselines, strict=True)
            }
        )
    notes = [
        f"Final test `{table.metric}`, mean ± std over the seeds that did not diverge; "
        "n = seeds counted, div. = seeds that diverged; bold = best in the column."
    ]
    if table.reference:
        notes.append(f"`*`: Welch t-test against `{table.reference}` significant at 5%.")
    if table.tuning:
        t = table.tuning
        notes.append(
            f"Tuned: each cell at the `{t.parameter}` (in the cell) of the best mean final "
            f"{t.on} `{t.metric}` for its design and setting."
        )
    return markdown_table(rows, [corner, *columns]) + "\n" + " ".join(notes) + "\n"


def to_csv(table: Table) -> str:
    rows = [
        table.where(row, column)
        | {
            "metric": table.metric,
            "mean": entry.mean,
            "std": entry.std,
            "n": len(entry.values),
            "diverged": entry.diverged,
            "p_value": entry.p_value,
            "paper": entry.paper,
        }
        for (row, column), entry in table.entries.items()
    ]
    columns = [*table.row_keys, *table.column_keys]
    return csv_table(rows, [*columns, "metric", "mean", "std", "n", "diverged", "p_value", "paper"])


def learning_curves(runs: list[Run], table: Table, split: str = "validation") -> dict:
    """{column: {row: (steps, per-seed values (S, steps))}} of the metric on ``split``."""
    curves: dict = {}
    for run in runs:
        row = tuple(run.config.get(k) for k in table.row_keys)
        column = tuple(run.config.get(k) for k in table.column_keys)
        records = run.evaluations(split, table.metric)
        steps = sorted({r["step"] for r in records})
        seeds = sorted({r["seed"] for r in records})
        grid = np.full((len(seeds), len(steps)), np.nan)
        for r in records:
            grid[seeds.index(r["seed"]), steps.index(r["step"])] = r[table.metric]
        curves.setdefault(column, {})[row] = (np.array(steps), grid)
    return curves


def plot_curves(runs: list[Run], table: Table, out_dir: Path, split: str = "validation"):
    """One PNG per task setting: a line per design (mean over seeds) with a min–max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for column, by_row in learning_curves(runs, table, split).items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for row, (steps, grid) in sorted(by_row.items(), key=lambda kv: _design_order(kv[0])):
            if grid.size == 0 or np.all(np.isnan(grid)):
                continue
            mean = np.nanmean(grid, axis=0)
            line = ax.plot(steps, mean, label=label(table.row_keys, row))[0]
            ax.fill_between(
                steps, np.nanmin(grid, 0), np.nanmax(grid, 0), alpha=0.2, color=line.get_color()
            )
        ax.set_xlabel("step")
        ax.set_ylabel(f"{split} {table.metric}")
        ax.set_title(label(table.column_keys, column))
        if not higher_is_better(table.metric):
            ax.set_yscale("log")
        written.append(_save_plot(fig, ax, out_dir / plot_name("curves", table, column)))
    return written


def plot_name(prefix: str, table: Table, column: tuple) -> str:
    """``<prefix>_<task setting>.png``, the setting's label made a file name."""
    return f"{prefix}_{label(table.column_keys, column).replace(' ', '_').replace('/', '_')}.png"


def _save_plot(fig, ax, path: Path) -> Path:
    """The legend, a tight layout, the PNG written and the figure closed."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_by_length(tables: list[Table], out_dir: Path) -> list[Path]:
    """One PNG per task setting: each design's final test metric (mean over seeds, min–max
    band) in each length bucket, one table per bucket in order of length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, written = tables[0], []
    buckets = [t.metric.rsplit("_", 2)[-2:] for t in tables]  # accuracy_40_64 -> 40, 64
    ticks = [f"{low}–{high}" for low, high in buckets]
    styles = ["o-", "s--", "^-.", "v:", "D-", "x--", "*-."]  # overlapping lines stay visible
    for column in first.columns:
        fig, ax = plt.subplots(figsize=(6, 4))
        for n, row in enumerate(sorted(first.rows, key=_design_order)):
            entries = [t.entries.get((row, column)) for t in tables]
            if not all(e is not None and e.values for e in entries):
                continue
            x = np.arange(len(entries))
            style = styles[n % len(styles)]
            line = ax.plot(x, [e.mean for e in entries], style, label=label(first.row_keys, row))
            ax.fill_between(
                x, [min(e.values) for e in entries], [max(e.values) for e in entries],
                alpha=0.15, color=line[0].get_color(),
            )  # fmt: skip
        if (chance := first.baselines.get(column)) is not None:
            ax.axhline(chance, color="grey", linewidth=0.8, linestyle=":", label="chance")
        ax.set_xticks(np.arange(len(ticks)), ticks)
        ax.set_xlabel("test length")
        ax.set_ylabel(f"test {first.metric.rsplit('_', 2)[0]}")
        ax.set_title(label(first.column_keys, column))
        written.append(_save_plot(fig, ax, out_dir / plot_name("by_length", first, column)))
    return written


def write_table(
    root: str | Path,
    metric: str = "loss",
    *,
    reference: str | None = None,
    row_keys: tuple[str, ...] = ("cell",),
    paper: list[dict] | None = None,
    out_dir: str | Path | None = None,
    tuning: Tuning | None = None,
    runs: list[Run] | None = None,
    row_settings: tuple[str, ...] = (),
) -> Table:
    """Read the runs under ``root`` (or take ``runs``, read from it already); write table.md,
    table.csv and the curves beside them (tuned: the tuned table, and the whole grid as
    ``table_<metric>_grid.md`` / ``.csv``)."""
    runs = load_runs(root) if runs is None else runs
    table = build_table(
        runs,
        metric,
        row_keys=row_keys,
        reference=reference,
        paper=paper,
        tuning=tuning,
        row_settings=row_settings,
    )
    out_dir = Path(out_dir or root)
    write_atomic(out_dir / f"table_{metric}.md", to_markdown(table))
    write_atomic(out_dir / f"table_{metric}.csv", to_csv(table))
    if tuning is not None:
        grid = build_table(
            runs, metric, row_keys=row_keys, reference=reference, row_settings=row_settings
        )
        write_atomic(out_dir / f"table_{metric}_grid.md", to_markdown(grid))
        write_atomic(out_dir / f"table_{metric}_grid.csv", to_csv(grid))
    plot_curves(tune_runs(runs, tuning)[0] if tuning else runs, table, out_dir)
    return table
