"""An experiment's report: provenance, tables, plots, the paper's numbers and its claims checked.

The sweep file's ``report`` section says what the report holds::

    report:
      metrics: [loss, accuracy]   # final test metrics, one table each (first: the claims')
      reference: gru              # the Welch t-test's reference design
      rows: cell                  # row parameters (comma-separated), default cell
      tune: {parameter: lr, on: validation, metric: loss}   # each design at its best lr
      paper:                      # published numbers, matched on the listed config values
        - {cell: lstm, seq_len: 100, value: 0.145, source: "Fig. 1, read off the plot"}
      claims:                     # each checked on the table's means
        - text: "the tanh RNN stays at the memoryless baseline at T = 200"
          where: {cell: rnn_tanh, seq_len: 200}
          within_baseline: 0.05   # |mean / baseline − 1| <= 0.05
        # other checks: below: X, above: X, below_baseline: F (mean <= F × baseline),
        # better_than: {cell: gru} (at the same column), close_to: {cell: gru, tolerance: 0.1},
        # metric: NAME (default: the first)

A claim holds when every table entry it selects passes its check; the report says
"held", "not held" or "no data" and shows the numbers behind the verdict.
"""

from __future__ import annotations

from pathlib import Path

from gru_research.executors import IN_PROCESS
from gru_research.reporting import claims_table, markdown_table, report_header, verdict
from gru_research.tables import HIGHER_IS_BETTER, Table, Tuning, label, to_markdown, write_table
from gru_research.tracking import write_atomic

CHECKS = ("below", "above", "within_baseline", "below_baseline", "better_than", "close_to")


def check_claim(claim: dict, table: Table) -> tuple[str, str]:
    """(verdict, the figures behind it) of one claim on one table."""
    kind = next((k for k in CHECKS if k in claim), None)
    if kind is None:
        raise ValueError(f"claim {claim.get('text')!r} has no check; valid checks: {CHECKS}")
    selected = table.selected(claim.get("where", {}))
    if not selected:
        return verdict(None), "no finished runs match"
    sign = -1 if table.metric in HIGHER_IS_BETTER else 1
    results, evidence = [], []
    for row, column, entry in selected:
        name = f"{label(table.row_keys, row)} @ {label(table.column_keys, column)}"
        baseline = table.baselines.get(column)
        if kind == "below":
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
            else:
                ok = abs(entry.mean - other.mean) <= against["tolerance"]
                note = f"{entry.mean:.4g} vs {other.mean:.4g}"
        results.append(ok)
        evidence.append(f"{name}: {note}")
    return verdict(all(results)), "; ".join(evidence)


def write_report(
    out: str | Path,
    sweep: dict,
    *,
    command: str,
    wall_time_s: float,
    points_run: str = IN_PROCESS,
) -> Path:
    """Tables, plots and ``report.md`` for the sweep whose run folders are under ``out``.

    ``points_run`` says how this invocation ran the points (in this process, worker processes,
    SLURM jobs): a provenance line; the tables are read from the run folders alone.
    """
    out = Path(out)
    spec = sweep.get("report", {})
    metrics = spec.get("metrics", ["loss"])
    row_keys = tuple(spec.get("rows", "cell").split(","))
    tuning = Tuning(**spec["tune"]) if spec.get("tune") else None
    tables = [
        write_table(
            out,
            m,
            reference=spec.get("reference"),
            row_keys=row_keys,
            paper=spec.get("paper"),
            tuning=tuning,
        )
        for m in metrics
    ]
    fixed = {k: v["value"] for k, v in sweep["parameters"].items() if "value" in v}
    varied = {k: v["values"] for k, v in sweep["parameters"].items() if "values" in v}
    lines = report_header(
        sweep.get("name", out.name),
        sweep.get("description", ""),
        command,
        f"wall time: {wall_time_s / 60:.1f} min for this invocation of the sweep; "
        f"{sum(t.total_seconds for t in tables[:1]) / 60:.1f} min of training summed over its "
        "points (each point's own run, resumed parts included)",
        f"points run: {points_run}",
        f"seeds per point: {sweep.get('seeds', 1)} (vmapped)",
        f"varied: {', '.join(f'{k} ∈ {v}' for k, v in varied.items())}",
        f"fixed: {', '.join(f'{k}={v}' for k, v in fixed.items())}",
    )
    if spec.get("scale_note"):
        lines += ["", f"**Scale.** {spec['scale_note'].strip()}"]
    for table in tables:
        lines += ["", f"## Final test {table.metric}", "", to_markdown(table)]
    if tuning is not None:
        lines += ["", f"## The whole grid over {tuning.parameter} (descriptive)", ""]
        for table in tables:
            lines += [(out / f"table_{table.metric}_grid.md").read_text()]
    plots = sorted(p.name for p in out.glob("curves_*.png"))
    if plots:
        lines += ["## Learning curves (validation)", ""]
        lines += [f"![{p}]({p})" for p in plots]
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
        lines += claims_table(
            [
                (claim["text"], *check_claim(claim, by_metric[claim.get("metric", metrics[0])]))
                for claim in spec["claims"]
            ]
        )
    path = out / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path
