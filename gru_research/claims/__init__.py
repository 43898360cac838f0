"""The five textbook claims about the GRU, tested: measured, decided, rendered.

Every introduction to the GRU (Cho et al., 2014; Chung et al., 2014) says that it

1. has fewer parameters than the LSTM (3 gate blocks against 4);
2. trains faster;
3. performs comparably to the LSTM;
4. has gates that keep the gradient from vanishing as it does in the tanh RNN (Hochreiter,
   1991; Bengio et al., 1994);
5. has a reset gate that lets it forget past information selectively;

and, beyond the introductions, that

6. its gates let it track state (parity, counting modulo m) that a linear recurrence cannot
   (Grazzi et al., 2024), read from the committed state-tracking sweep.

:func:`run_claims` reads an experiment file (``experiments/textbook_claims.yaml``, which names
every design, sweep, boundary and threshold the verdicts use), trains its own sweeps, reads the
committed ones, and writes ``report.md`` with one section per claim, each held or not held at
this scale with the figures behind the verdict, and a CSV per table beside it. The numbers come
from :mod:`.measure`, the verdicts from :mod:`.decide` and the text from :mod:`.render`.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax

from gru_research import gradflow
from gru_research.claims import decide, measure, render
from gru_research.reporting import csv_table, markdown_table, report_header
from gru_research.sweep import read_yaml
from gru_research.tracking import read_json, write_atomic

REQUIRED = {
    "design": None,
    "other": None,
    "parameters": ("sizes",),
    "throughput": ("configs", "rounds"),
    "quality": ("sources", "timing_rounds"),
    "gradflow": (
        "cells",
        "baseline",
        "task",
        "seq_len",
        "hidden",
        "seeds",
        "batch_size",
        "trained_sweep",
    ),
    "solved_sources": None,
    "reset": ("compare", "without_reset", "sweeps", "lm_sweep", "boundaries", "offsets", "verdict"),
    "sweeps": None,
    "state_tracking": ("source", "linear", "metric", "solved_at"),
}


def load_experiment(path: str | Path) -> dict:
    """Read and check an experiment file; one clear line for anything missing or wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no experiment file at {path}")
    spec = read_yaml(path.read_text()) or {}
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise ValueError(f"{path}: missing sections {missing}; needed: {', '.join(REQUIRED)}")
    for section, keys in REQUIRED.items():
        absent = [k for k in keys or () if k not in spec[section]]
        if absent:
            raise ValueError(f"{path}: section {section!r} needs {', '.join(absent)}")
    named = [spec["gradflow"]["trained_sweep"], spec["reset"]["lm_sweep"], *spec["reset"]["sweeps"]]
    unknown = [name for name in named if name not in spec["sweeps"]]
    if unknown:
        raise ValueError(f"{path}: sweeps {unknown} are named but not defined under 'sweeps'")
    rule = spec["reset"]["verdict"]
    if rule.get("boundary") not in spec["reset"]["boundaries"]:
        raise ValueError(
            f"{path}: reset.verdict.boundary must be one of {list(spec['reset']['boundaries'])}"
        )
    return spec


def check_trained_parameters(spec: dict, out: Path) -> None:
    """One line, before any measurement, if a run whose trained parameters the gradient-flow or
    the reset section reads has no checkpoint (committed run folders keep metrics only)."""
    from gru_research.train import checkpoint_steps

    flow, reset = spec["gradflow"], spec["reset"]
    needed = [
        measure.find_run(out / flow["trained_sweep"], cell=cell, seq_len=flow["seq_len"])
        for cell in flow["cells"]
    ] + [measure.find_run(out / reset["lm_sweep"], cell=spec["design"])]
    if missing := [str(run) for run in needed if not checkpoint_steps(run)]:
        raise FileNotFoundError(
            f"no checkpoint in {', '.join(missing)}: the gradient-flow and reset sections read "
            "trained parameters; remove these run folders and rerun to train them again"
        )


def run_claims(path: str | Path, out: str | Path, *, command: str, progress=print) -> Path:
    """Train the experiment's sweeps (resumable), measure every claim, write the report."""
    from gru_research.report import write_report
    from gru_research.sweep import run_sweep
    from gru_research.tables import load_runs

    start = time.perf_counter()
    spec = load_experiment(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, sweep in spec["sweeps"].items():
        progress(f"sweep {name}")
        sweep_start = time.perf_counter()
        run_sweep({"name": name, **sweep}, out / name, progress=progress)
        write_report(
            out / name,
            {"name": name, **sweep},
            command=command,
            wall_time_s=time.perf_counter() - sweep_start,
        )
    check_trained_parameters(spec, out)
    sections = [
        parameters_claim(spec, out),
        throughput_claim(spec, out, progress),
        quality_claim(spec, out, progress),
        vanishing_claim(spec, out, progress),
        reset_claim(spec, out, progress),
        state_tracking_claim(spec, out),
    ]
    runs = [r for name in spec["sweeps"] for r in load_runs(out / name)]
    trained_minutes = sum(r.summary.get("wall_time_s", 0.0) for r in runs) / 60
    commits = sorted({read_json(r.folder / "config.json").get("git_commit") or "?" for r in runs})
    seeds = ", ".join(f"{name} {sweep.get('seeds', 1)}" for name, sweep in spec["sweeps"].items())
    lines = [
        *report_header(
            spec.get("name", "textbook_claims"),
            spec.get("description", ""),
            command,
            f"wall time: {(time.perf_counter() - start) / 60:.1f} min for this invocation "
            "(a sweep already finished is read, not retrained); the sweeps' runs trained for "
            f"{trained_minutes:.1f} min in all, at commit {', '.join(f'`{c}`' for c in commits)}",
            f"seeds per point (vmapped): {seeds}",
            "this experiment's sweeps, each with its own report, tables and curves: "
            + ", ".join(f"[{n}]({n}/report.md)" for n in spec["sweeps"]),
        ),
        "",
        f"**Scale.** {spec.get('scale', 'not stated').strip()}",
        "",
        "## Verdicts",
        "",
        markdown_table([{"claim": title, "verdict": v} for title, v, _ in sections]),
    ]
    for title, _, body in sections:
        lines += [f"## {title}", "", body.strip(), ""]
    report = out / "report.md"
    write_atomic(report, "\n".join(lines))
    return report


def parameters_claim(spec: dict, out: Path) -> render.Section:
    rows = measure.parameter_rows([tuple(s) for s in spec["parameters"]["sizes"]])
    write_atomic(out / "parameters.csv", csv_table(rows))
    checks = decide.parameters(rows, spec["design"], spec["other"])
    return render.parameters(rows, checks, spec["design"], spec["other"])


def throughput_claim(spec: dict, out: Path, progress) -> render.Section:
    settings, design, other = spec["throughput"], spec["design"], spec["other"]
    progress(f"throughput: {design} vs {other}, ours, Flax and PyTorch")
    rows = measure.throughput_rows(settings["configs"], settings["rounds"], design, other)
    write_atomic(out / "throughput.csv", csv_table(rows))
    checks = decide.throughput(rows, design)
    return render.throughput(rows, checks, design, other, settings["rounds"])


def quality_claim(spec: dict, out: Path, progress) -> render.Section:
    settings, design, other = spec["quality"], spec["design"], spec["other"]
    roots = [Path(s) for s in settings["sources"]] + [out / name for name in spec["sweeps"]]
    progress(f"quality: {design} vs {other}, Welch tests; timing each pair's own training step")
    rows = measure.comparisons(roots, design, other, settings["timing_rounds"])
    rows = decide.with_outcomes(rows, (design, other))
    write_atomic(out / "quality.csv", csv_table(render.table_rows(rows)))
    checks = decide.quality(rows, other)
    return render.quality(rows, checks, design, other, settings["timing_rounds"])


def vanishing_claim(spec: dict, out: Path, progress) -> render.Section:
    settings = spec["gradflow"]
    cells, key = settings["cells"], jax.random.key(1234)
    progress("gradient flow at initialisation and trained")
    initial = gradflow.initial_curves(
        cells,
        settings["task"],
        settings["seq_len"],
        settings["hidden"],
        settings["seeds"],
        settings["batch_size"],
        key,
    )
    trained = {
        cell: gradflow.run_curves(
            measure.find_run(
                out / settings["trained_sweep"], cell=cell, seq_len=settings["seq_len"]
            ),
            settings["batch_size"],
            key,
        )
        for cell in cells
    }
    label = f"{settings['task']}, T = {settings['seq_len']}"
    rates = {
        "init": gradflow.write_curves(initial, out / "gradflow_init", f"{label}, initialisation"),
        "trained": gradflow.write_curves(trained, out / "gradflow_trained", f"{label}, trained"),
    }
    rate_rows = [
        {
            "design": cell,
            "decay rate at init (per step)": rates["init"][cell],
            "decay rate trained (per step)": rates["trained"][cell],
            "norm at t = 1 / norm at t = T, init": measure.curve_span(initial[cell]),
            "norm at t = 1 / norm at t = T, trained": measure.curve_span(trained[cell]),
        }
        for cell in cells
    ]
    write_atomic(out / "gradflow_rates.csv", csv_table(rate_rows))
    roots = [Path(s) for s in spec["solved_sources"]] + [out / settings["trained_sweep"]]
    solved = measure.solved_rows(roots, cells)
    write_atomic(out / "solved.csv", csv_table(solved))
    checks = decide.vanishing(rates, solved, settings["baseline"])
    return render.vanishing(label, settings, rate_rows, solved, checks)


def reset_claim(spec: dict, out: Path, progress) -> render.Section:
    settings = {**spec["reset"], "design": spec["design"]}
    design, rule = settings["design"], settings["verdict"]
    roots = [out / name for name in settings["sweeps"]]
    rows = [
        row
        for other in settings["compare"]
        for row in decide.with_outcomes(
            measure.comparisons(roots, design, other, None), (design, other)
        )
    ]
    write_atomic(out / "reset_comparisons.csv", csv_table(render.table_rows(rows)))
    tables = []
    for other in settings["compare"]:
        columns = ["source", "setting", "metric", f"{design} mean", f"{design} std"]
        columns += [f"{other} mean", f"{other} std", "p (equal steps)", "equal steps"]
        tables.append(markdown_table([r for r in rows if f"{other} mean" in r], columns))
    progress("reset-gate statistics around boundaries")
    lm_run = measure.find_run(out / settings["lm_sweep"], cell=design)
    low, high = rule["lowest_within"]
    offsets = range(settings["offsets"][0], settings["offsets"][1] + 1)
    profile_rows, summary = measure.reset_statistics(
        lm_run, settings["boundaries"], offsets, range(low, high + 1)
    )
    write_atomic(out / "reset_profile.csv", csv_table(profile_rows))
    render.plot_reset_profile(
        profile_rows, out / "reset_profile.png", f"trained {design}, validation split"
    )
    summary_rows = [
        {"boundary": kind, "boundaries in validation": s[0]["count"]}
        | {
            "overall mean r": sum(x["overall"] for x in s) / len(s),
            f"lowest mean r, offsets {low}..{high}": sum(x["lowest after"] for x in s) / len(s),
            "effect size per seed": ", ".join(f"{x['effect']:+.2f}" for x in s),
        }
        for kind, s in summary.items()
    ]
    checks = decide.reset(
        rows,
        design,
        settings["without_reset"],
        summary[rule["boundary"]],
        rule["effect_at_most"],
    )
    return render.reset(settings, tables, summary_rows, checks)


def state_tracking_claim(spec: dict, out: Path) -> render.Section:
    settings, design = spec["state_tracking"], spec["design"]
    cells = [design, *settings["linear"]]
    rows = measure.state_tracking_rows(
        Path(settings["source"]), cells, settings["metric"], settings.get("tune")
    )
    write_atomic(out / "state_tracking.csv", csv_table(rows))
    checks = decide.state_tracking(
        rows, design, settings["linear"], settings["metric"], settings["solved_at"]
    )
    return render.state_tracking(settings, rows, checks, design)


__all__ = ["decide", "load_experiment", "measure", "render", "run_claims"]
