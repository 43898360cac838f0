"""The five textbook claims about the GRU, tested on this machine.

Every introduction to the GRU (Cho et al., 2014; Chung et al., 2014) says that it

1. has fewer parameters than the LSTM (3 gate blocks against 4);
2. trains faster;
3. performs comparably to the LSTM;
4. has gates that keep the gradient from vanishing as it does in the tanh RNN (Hochreiter,
   1991; Bengio et al., 1994);
5. has a reset gate that lets it forget past information selectively.

:func:`run_claims` reads an experiment file (``experiments/textbook_claims.yaml``), trains its
own sweeps, reads the committed ones, and writes ``report.md`` with one section per claim,
each marked held or not held at this scale with the figures behind the verdict, and a CSV per
table beside it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from gru_research import gradflow
from gru_research.bench import (
    CONFIGS,
    BenchConfig,
    Step,
    bench_model,
    flax_anchor,
    machine,
    ours,
    time_interleaved,
    torch_anchor,
)
from gru_research.cells import (
    fused_recurrent_kernel,
    gate_values,
    input_projection,
    matmul,
    recurrent_update,
    split_gates,
    state_fed,
)
from gru_research.model import ModelConfig, design_param_count, model_param_count, seed_keys
from gru_research.report import report_header, write_report
from gru_research.sweep import run_sweep
from gru_research.tables import HIGHER_IS_BETTER, Run, load_runs, varying_keys
from gru_research.tracking import read_json, write_atomic

SIGNIFICANCE = 0.05
EXPERIMENT_KEYS = (
    "parameters",
    "throughput",
    "quality",
    "gradflow",
    "solved_sources",
    "reset",
    "sweeps",
)


# ---------------------------------------------------------------------------------------------
# 1. parameters


def closed_form_params(family: str, input_size: int, hidden_size: int) -> int:
    """One layer: G gate blocks of W (I×H), U (H×H) and b (H); the GRU (reset after, as cuDNN,
    Flax and PyTorch) adds the candidate's recurrent bias. G = 3 (GRU) or 4 (LSTM)."""
    blocks = {"gru": 3, "lstm": 4}[family]
    extra = hidden_size if family == "gru" else 0
    return blocks * (input_size * hidden_size + hidden_size**2 + hidden_size) + extra


def parameter_rows(sizes: list[tuple[int, int]]) -> list[dict]:
    rows = []
    for input_size, hidden in sizes:
        gru, lstm = (design_param_count(d, input_size, hidden) for d in ("gru", "lstm"))
        rows.append(
            {
                "input": input_size,
                "hidden": hidden,
                "gru closed form": closed_form_params("gru", input_size, hidden),
                "gru counted": gru,
                "lstm closed form": closed_form_params("lstm", input_size, hidden),
                "lstm counted": lstm,
                "gru / lstm": gru / lstm,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# 2. throughput


def equal_param_hidden(cfg: BenchConfig, cell: str = "lstm", like: str = "gru") -> int:
    """The largest hidden size at which ``cell``'s whole model (embedding, layers, readout) has
    no more parameters than ``like``'s at ``cfg.hidden``."""
    budget = model_param_count(bench_model(cfg, like))
    low, high = 1, cfg.hidden
    while low < high:
        mid = (low + high + 1) // 2
        size = model_param_count(bench_model(dataclasses.replace(cfg, hidden=mid), cell))
        low, high = (mid, high) if size <= budget else (low, mid - 1)
    return low


IMPLEMENTATIONS: dict[str, Callable[[BenchConfig, str], Step | None]] = {
    "gru-research": ours,
    "Flax nn.RNN": flax_anchor,
    "PyTorch": torch_anchor,
}


def throughput_rows(config_names: list[str], rounds: int) -> list[dict]:
    """Seconds per training step of gru, lstm, and lstm at gru's parameter count, for each
    implementation; all nine steps of a configuration timed interleaved."""
    rows = []
    for name in config_names:
        cfg = CONFIGS[name]
        lean = dataclasses.replace(cfg, hidden=equal_param_hidden(cfg))
        variants = {
            "gru": (cfg, "gru"),
            "lstm": (cfg, "lstm"),
            "lstm, equal params": (lean, "lstm"),
        }
        steps = {}
        for implementation, make in IMPLEMENTATIONS.items():
            for variant, (config, cell) in variants.items():
                step = make(config, cell)
                if step is not None:
                    label = f"{implementation}: {variant}"
                    steps[implementation, variant] = dataclasses.replace(step, name=label)
        medians = time_interleaved(list(steps.values()), rounds)
        for implementation in IMPLEMENTATIONS:
            if (implementation, "gru") not in steps:
                continue
            seconds = {v: medians[steps[implementation, v].name] for v in variants}
            rows.append(
                {
                    "config": name,
                    "batch": cfg.batch,
                    "length": cfg.length,
                    "hidden": cfg.hidden,
                    "lstm hidden at equal params": lean.hidden,
                    "implementation": implementation,
                    "gru ms": 1e3 * seconds["gru"],
                    "lstm ms": 1e3 * seconds["lstm"],
                    "lstm equal-params ms": 1e3 * seconds["lstm, equal params"],
                    "gru speed-up, equal hidden": seconds["lstm"] / seconds["gru"],
                    "gru speed-up, equal params": seconds["lstm, equal params"] / seconds["gru"],
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# 3. quality: pairs of runs that differ only in the design


def design_pairs(runs: list[Run], design: str, other: str) -> list[tuple[str, Run, Run]]:
    """(setting, run of ``design``, run of ``other``) for each setting both were trained on;
    the setting names what varies across the runs (e.g. ``seq_len=100``)."""
    varying = [k for k in varying_keys(runs) if k not in ("cell", "task")]

    def setting(run: Run) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in run.config.items() if k != "cell"))

    by_setting = defaultdict(dict)
    for run in runs:
        by_setting[setting(run)][run.config["cell"]] = run
    pairs = []
    for found in by_setting.values():
        if design in found and other in found:
            run = found[design]
            label = " ".join([run.config["task"]] + [f"{k}={run.config[k]}" for k in varying])
            pairs.append((label, found[design], found[other]))
    return sorted(pairs, key=lambda p: p[0])


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Welch's t-test p-value (scipy), or None with fewer than two values on a side."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return float(p) if math.isfinite(p) else None


def verdict(a: list[float], b: list[float], metric: str, names: tuple[str, str]) -> str:
    """'<name> better' when Welch's test finds the difference significant, else 'no
    significant difference' (or 'too few seeds')."""
    p = welch_p(a, b)
    if p is None:
        return "too few seeds"
    if p >= SIGNIFICANCE:
        return "no significant difference"
    a_better = (np.mean(a) > np.mean(b)) == (metric in HIGHER_IS_BETTER)
    return f"{names[0] if a_better else names[1]} better"


def validation_at(run: Run, step: int, metric: str) -> tuple[int, list[float]]:
    """The last validation evaluation at or before ``step``: (its step, per-seed values of the
    seeds that did not diverge)."""
    records = run.evaluations("validation", metric)
    steps = [r["step"] for r in records if r["step"] <= step]
    if not steps:
        return 0, []
    used = max(steps)
    return used, [r[metric] for r in records if r["step"] == used]


def seconds_per_step(run_dirs: list[Path], rounds: int, steps_per_call: int = 5) -> list[float]:
    """Seconds per training step of each run's own program (all its seeds, vmapped), the runs
    timed interleaved in this process."""
    from gru_research.tasks import make_task
    from gru_research.train import build_program, load_run_config

    timed = []
    for run_dir in run_dirs:
        n = steps_per_call
        config = dataclasses.replace(
            load_run_config(run_dir), steps=n, log_every=n, eval_every=n, checkpoint_every=n
        )
        task = make_task(config.task_config())
        program = build_program(config, task, config.model_config(task))
        holder = {"state": program.init(seed_keys(config.seed_list))}

        def run(program=program, holder=holder, data=task.data):
            holder["state"], metrics = program.train_chunk(holder["state"], data)
            jax.block_until_ready(metrics)

        start = time.perf_counter()
        run()
        timed.append(Step(str(run_dir), run, time.perf_counter() - start))
    medians = time_interleaved(timed, rounds, warmup=1)
    return [medians[str(d)] / steps_per_call for d in run_dirs]


def compare_pair(
    source: str, setting: str, a: Run, b: Run, metric: str, seconds: tuple[float, float] | None
) -> dict:
    """Design ``a`` against ``b``: final test values at equal steps (Welch), and, given their
    seconds per step, validation values at equal wall time: the faster design at its last
    step, the slower at its last evaluation within the same time."""
    names = (a.config["cell"], b.config["cell"])
    va, vb = a.values(metric), b.values(metric)
    row = {
        "source": source,
        "setting": setting,
        "metric": metric,
        f"{names[0]} params": a.summary.get("params_per_seed"),
        f"{names[1]} params": b.summary.get("params_per_seed"),
        "steps": a.summary["steps"],
        f"{names[0]} mean": float(np.mean(va)) if va else math.nan,
        f"{names[0]} std": float(np.std(va, ddof=1)) if len(va) > 1 else math.nan,
        f"{names[0]} n": len(va),
        f"{names[1]} mean": float(np.mean(vb)) if vb else math.nan,
        f"{names[1]} std": float(np.std(vb, ddof=1)) if len(vb) > 1 else math.nan,
        f"{names[1]} n": len(vb),
        "p (equal steps)": welch_p(va, vb),
        "equal steps": verdict(va, vb, metric, names),
    }
    if seconds is not None:
        steps = a.summary["steps"]
        fast, slow = (a, b) if seconds[0] <= seconds[1] else (b, a)
        budget = steps * min(seconds) / max(seconds)
        _, fast_values = validation_at(fast, steps, metric)
        slow_step, slow_values = validation_at(slow, int(budget), metric)
        ea, eb = (fast_values, slow_values) if fast is a else (slow_values, fast_values)
        row |= {
            f"{names[0]} ms/step": 1e3 * seconds[0],
            f"{names[1]} ms/step": 1e3 * seconds[1],
            "slower design's step at equal time": slow_step,
            f"{names[0]} validation at equal time": float(np.mean(ea)) if ea else math.nan,
            f"{names[1]} validation at equal time": float(np.mean(eb)) if eb else math.nan,
            "p (equal time)": welch_p(ea, eb),
            "equal time": verdict(ea, eb, metric, names) if slow_step else "no evaluation",
        }
    return row


def find_run(root: Path, **where) -> Path:
    """The folder of the one finished run under ``root`` whose config has these values."""
    found = [r.folder for r in load_runs(root) if all(r.config[k] == v for k, v in where.items())]
    if len(found) != 1:
        raise FileNotFoundError(f"{len(found)} finished runs with {where} under {root}; need 1")
    return found[0]


def sweep_metric(root: Path) -> str:
    """A committed sweep's first report metric (its sweep.yaml), else the loss."""
    path = root / "sweep.yaml"
    spec = yaml.safe_load(path.read_text()) if path.exists() else {}
    return spec.get("report", {}).get("metrics", ["loss"])[0]


def comparisons(
    roots: list[Path], design: str, other: str, timing_rounds: int | None
) -> list[dict]:
    """:func:`compare_pair` of every setting of every sweep under ``roots``; with
    ``timing_rounds``, each pair's two programs are timed for the equal-time comparison."""
    rows = []
    for root in roots:
        metric = sweep_metric(root)
        for setting, a, b in design_pairs(load_runs(root), design, other):
            seconds = None
            if timing_rounds:
                seconds = tuple(seconds_per_step([a.folder, b.folder], timing_rounds))
            rows.append(compare_pair(root.name, setting, a, b, metric, seconds))
    return rows


# ---------------------------------------------------------------------------------------------
# 4. vanishing gradients: which designs solve the long-lag tasks


def solved_rows(roots: list[Path], cells: list[str]) -> list[dict]:
    """Per design and setting: how many seeds met the task's solved rule."""
    rows = []
    for root in roots:
        for run in load_runs(root):
            if run.config["cell"] not in cells:
                continue
            solved = [bool(s) for s in run.summary.get("solved", [])]
            rows.append(
                {
                    "source": root.name,
                    "task": run.config["task"],
                    "seq_len": run.config["seq_len"],
                    "cell": run.config["cell"],
                    "steps": run.summary["steps"],
                    "solved": sum(solved),
                    "seeds": len(solved),
                    "rule": run.summary.get("solved_rule", ""),
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# 5. the reset gate around boundaries


def gate_trace(params, config: ModelConfig, inputs: jax.Array, gate: str = "r") -> jax.Array:
    """The mean over units of one gate's activation at every step, (B, T), of a one-layer
    model read from a zero state (a gate fixed by the design is its constant)."""
    design, layer = config.design, params["layers"][0]
    x = params["embed"][inputs] if config.vocab_size else inputs
    pre = input_projection(layer, design, jnp.swapaxes(x, 0, 1))
    kernel = fused_recurrent_kernel(layer, design)
    h0 = jnp.zeros((inputs.shape[0], config.hidden_size))

    def step(h, pre_t):
        hp = matmul(h, kernel)
        value = gate_values(design, pre_t, split_gates(hp, state_fed(design)))[gate]
        h, _ = recurrent_update(layer, design, h, pre_t, hp)
        return h, jnp.mean(jnp.broadcast_to(value, h.shape), axis=-1)

    _, trace = jax.lax.scan(step, h0, pre)
    return trace.T


def boundary_positions(inputs: np.ndarray, boundary: list[int]) -> np.ndarray:
    """(B, T) mask of the steps whose input ends the id sequence ``boundary``."""
    mask = np.ones(inputs.shape, bool)
    for back, token in enumerate(reversed(boundary)):
        shifted = np.zeros(inputs.shape, bool)
        shifted[:, back:] = inputs[:, : inputs.shape[1] - back] == token
        mask &= shifted
    return mask


def boundary_profile(trace: np.ndarray, mask: np.ndarray, offsets: range) -> dict[int, float]:
    """The mean of ``trace`` (B, T) at ``offset`` steps from every boundary in ``mask``,
    counting only the steps that stay inside the window."""
    profile = {}
    for offset in offsets:
        rows, cols = np.nonzero(mask)
        cols = cols + offset
        keep = (cols >= 0) & (cols < trace.shape[1])
        profile[offset] = float(trace[rows[keep], cols[keep]].mean()) if keep.any() else math.nan
    return profile


def reset_statistics(
    run_dir: Path, boundaries: dict[str, str], offsets: range
) -> tuple[list[dict], dict]:
    """Per seed and boundary kind, the mean reset-gate activation at each offset, on the
    validation split cut into the run's training windows (each read from a zero state)."""
    config, task, model, params = gradflow.trained_population(run_dir)
    inputs, _ = task.eval_stream("validation")
    traces = np.asarray(jax.jit(jax.vmap(lambda p: gate_trace(p, model, inputs)))(params))
    ids = {char: i for i, char in enumerate(task.vocabulary)}
    rows, summary = [], {}
    for kind, text in boundaries.items():
        mask = boundary_positions(inputs, [ids[c] for c in text])
        for seed, trace in zip(config.seed_list, traces, strict=True):
            profile = boundary_profile(trace, mask, offsets)
            mean, std = float(trace.mean()), float(trace.std())
            rows += [
                {"boundary": kind, "seed": seed, "offset": k, "mean r": v, "overall mean r": mean}
                for k, v in profile.items()
            ]
            lowest = min(profile[k] for k in offsets if 0 <= k <= 2)
            summary.setdefault(kind, []).append(
                {
                    "seed": seed,
                    "count": int(mask.sum()),
                    "overall": mean,
                    "lowest after": lowest,
                    "effect": (lowest - mean) / std,
                }
            )
    return rows, summary


def plot_reset_profile(rows: list[dict], path: Path) -> None:
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
    ax.set(ylabel="mean reset gate r", title="trained gru, tiny_shakespeare validation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the report


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buffer, fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _number(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def to_markdown(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_number(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def held(ok: bool) -> str:
    return "**held**" if ok else "**not held**"


def load_experiment(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no experiment file at {path}")
    spec = yaml.safe_load(path.read_text())
    missing = [k for k in EXPERIMENT_KEYS if k not in (spec or {})]
    if missing:
        raise ValueError(
            f"{path}: missing sections {missing}; needed: {', '.join(EXPERIMENT_KEYS)}"
        )
    return spec


def run_claims(path: str | Path, out: str | Path, *, command: str, progress=print) -> Path:
    """Train the experiment's sweeps (resumable), measure every claim, write the report."""
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
    sections = [
        _parameters_section(spec, out),
        _throughput_section(spec, out, progress),
        _quality_section(spec, out, progress),
        _vanishing_section(spec, out, progress),
        _reset_section(spec, out, progress),
    ]
    runs = [r for name in spec["sweeps"] for r in load_runs(out / name)]
    trained_minutes = sum(r.summary.get("wall_time_s", 0.0) for r in runs) / 60
    commits = sorted({read_json(r.folder / "config.json").get("git_commit") or "?" for r in runs})
    seeds = ", ".join(f"{name} {sweep.get('seeds', 1)}" for name, sweep in spec["sweeps"].items())
    lines = [
        *report_header(spec.get("name", "textbook_claims"), spec.get("description", ""), command),
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {machine()}",
        f"- wall time: {(time.perf_counter() - start) / 60:.1f} min for this invocation "
        "(a sweep already finished is read, not retrained); the sweeps' runs trained for "
        f"{trained_minutes:.1f} min in all, at commit {', '.join(f'`{c}`' for c in commits)}",
        f"- seeds per point (vmapped): {seeds}",
        "- this experiment's sweeps, each with its own report, tables and curves: "
        + ", ".join(f"[{n}]({n}/report.md)" for n in spec["sweeps"]),
        "",
        f"**Scale.** {spec.get('scale', 'not stated').strip()}",
        "",
        "## Verdicts",
        "",
        "| claim | verdict |",
        "|---|---|",
        *[f"| {title} | {v} |" for title, v, _ in sections],
        "",
    ]
    for title, _, body in sections:
        lines += [f"## {title}", "", body.strip(), ""]
    report = out / "report.md"
    write_atomic(report, "\n".join(lines))
    return report


def _parameters_section(spec: dict, out: Path) -> tuple[str, str, str]:
    rows = parameter_rows([tuple(s) for s in spec["parameters"]["sizes"]])
    write_atomic(out / "parameters.csv", to_csv(rows))
    exact = all(
        r["gru closed form"] == r["gru counted"] and r["lstm closed form"] == r["lstm counted"]
        for r in rows
    )
    fewer = all(r["gru counted"] < r["lstm counted"] for r in rows)
    body = (
        "One layer with input size I and hidden size H. The GRU has three blocks of W (I×H), "
        "U (H×H) and b (H), plus the candidate's recurrent bias (H) of the reset-after form that "
        "cuDNN, Flax and PyTorch use: 3(IH + H² + H) + H. The LSTM has four: 4(IH + H² + H). "
        "The ratio tends to 3/4 as H grows.\n\n"
        + to_markdown(rows)
        + f"\nThe counted parameters (`design_param_count`) equal the closed form: "
        f"{'yes' if exact else 'NO'}. The counted parameters of the models actually trained "
        "are in the table of the next-but-one section (columns `gru params`, `lstm params`).\n"
    )
    return "1. Fewer parameters than the LSTM", held(fewer and exact), body


def _throughput_section(spec: dict, out: Path, progress) -> tuple[str, str, str]:
    settings = spec["throughput"]
    progress("throughput: gru vs lstm, ours, Flax and PyTorch")
    rows = throughput_rows(settings["configs"], settings["rounds"])
    write_atomic(out / "throughput.csv", to_csv(rows))
    verdicts = []
    for implementation in dict.fromkeys(r["implementation"] for r in rows):
        mine = [r for r in rows if r["implementation"] == implementation]
        for basis in ("equal hidden", "equal params"):
            speed_ups = [r[f"gru speed-up, {basis}"] for r in mine]
            verdicts.append(
                f"| {implementation} | {basis} | "
                + ", ".join(f"{s:.2f}×" for s in speed_ups)
                + f" | {held(all(s > 1 for s in speed_ups))} |"
            )
    everywhere = all("**held**" in v for v in verdicts if "equal hidden" in v)
    anywhere = any("**held**" in v for v in verdicts if "equal hidden" in v)
    body = (
        "One full training step (embedding, one recurrent layer, readout, cross-entropy, backward "
        "pass, Adam) of the benchmark harness's configurations (`gru_research/bench.py`), median "
        f"of {settings['rounds']} interleaved rounds. At equal params the LSTM's hidden size is "
        "cut until its whole model has no more parameters than the GRU's. A speed-up above 1 "
        "means the GRU's step is faster.\n\n"
        + to_markdown(rows)
        + "\n| implementation | basis | gru speed-up per config | the GRU trains faster |\n"
        "|---|---|---|---|\n" + "\n".join(verdicts) + "\n\n"
        "The verdict is per implementation: the same two cells give different answers depending "
        "on whose kernels run them.\n"
    )
    verdict_text = (
        "**held**"
        if everywhere
        else "**held for some implementations only**"
        if anywhere
        else "**not held**"
    )
    return "2. Trains faster than the LSTM (per step)", verdict_text, body


def _quality_section(spec: dict, out: Path, progress) -> tuple[str, str, str]:
    settings = spec["quality"]
    roots = [Path(s) for s in settings["sources"]] + [out / name for name in spec["sweeps"]]
    progress("quality: gru vs lstm, Welch tests; timing each pair's own training step")
    rows = comparisons(roots, "gru", "lstm", settings["timing_rounds"])
    write_atomic(out / "quality.csv", to_csv(rows))
    columns = [
        "source",
        "setting",
        "metric",
        "gru params",
        "lstm params",
        "steps",
        "gru mean",
        "gru std",
        "lstm mean",
        "lstm std",
        "p (equal steps)",
        "equal steps",
        "gru ms/step",
        "lstm ms/step",
        "slower design's step at equal time",
        "gru validation at equal time",
        "lstm validation at equal time",
        "p (equal time)",
        "equal time",
    ]
    lstm_steps = sum(r["equal steps"] == "lstm better" for r in rows)
    lstm_time = sum(r.get("equal time") == "lstm better" for r in rows)
    gru_steps = sum(r["equal steps"] == "gru better" for r in rows)
    gru_time = sum(r.get("equal time") == "gru better" for r in rows)
    body = (
        "GRU against LSTM on every setting that a committed sweep or this experiment trained both "
        "on, same protocol, same steps. *Equal steps*: final test values, Welch's t-test over the "
        f"seeds (5%). *Equal time*: each pair's own training step (its seeds vmapped) is timed "
        f"interleaved here ({settings['timing_rounds']} rounds); the faster design is read at its "
        "last validation and the slower at its last validation within the same wall time (the "
        "step shown).\n\n"
        + to_markdown(rows, columns)
        + f"\nAt equal steps the LSTM is significantly better in {lstm_steps} of {len(rows)} "
        f"settings and the GRU in {gru_steps}; at equal time, {lstm_time} and {gru_time}. The "
        "claim holds here if the LSTM is significantly better in none.\n"
    )
    return (
        "3. Quality comparable to the LSTM",
        held(lstm_steps == 0) + " (equal steps), " + held(lstm_time == 0) + " (equal time)",
        body,
    )


def _vanishing_section(spec: dict, out: Path, progress) -> tuple[str, str, str]:
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
    runs = [
        find_run(out / settings["trained_sweep"], cell=cell, seq_len=settings["seq_len"])
        for cell in cells
    ]
    trained = gradflow.trained_curves(runs, settings["batch_size"], key)
    trained = {name.split(" (")[0]: norms for name, norms in trained.items()}
    label = f"{settings['task']}, T = {settings['seq_len']}"
    init_rates = gradflow.write_curves(initial, out / "gradflow_init", f"{label}, initialisation")
    trained_rates = gradflow.write_curves(trained, out / "gradflow_trained", f"{label}, trained")
    rate_rows = [
        {
            "design": cell,
            "decay rate at init (per step)": init_rates[cell],
            "decay rate trained (per step)": trained_rates[cell],
            "norm at t = 1 / norm at t = T, init": _span(initial[cell]),
            "norm at t = 1 / norm at t = T, trained": _span(trained[cell]),
        }
        for cell in cells
    ]
    write_atomic(out / "gradflow_rates.csv", to_csv(rate_rows))
    gated = [c for c in cells if c != "rnn_tanh"]
    slower = {
        when: all(rates[c] > rates["rnn_tanh"] for c in gated)
        for when, rates in (("init", init_rates), ("trained", trained_rates))
    }
    roots = [Path(s) for s in spec["solved_sources"]] + [out / settings["trained_sweep"]]
    solved = solved_rows(roots, cells)
    write_atomic(out / "solved.csv", to_csv(solved))
    columns = sorted({(r["source"], r["task"], r["seq_len"]) for r in solved})
    table = [
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
    tanh_solves = any(r["solved"] for r in solved if r["cell"] == "rnn_tanh")
    gated_solve = any(r["solved"] for r in solved if r["cell"] != "rnn_tanh")
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
        + to_markdown(rate_rows)
        + f"\n- Every gated design's gradient decays more slowly than the tanh RNN's at "
        f"initialisation: {held(slower['init'])}; after training: {held(slower['trained'])}.\n"
        "\nSeeds that met the solved rule ("
        + "; ".join(rules)
        + "):\n\n"
        + to_markdown(table)
        + f"\n- The tanh RNN solves none of these settings and some gated design solves at least "
        f"one: {held(not tanh_solves and gated_solve)}.\n"
    )
    verdicts = (
        f"{held(slower['init'])} (slower decay at init), {held(slower['trained'])} (slower decay "
        f"trained), {held(not tanh_solves and gated_solve)} (gated designs solve, tanh does not)"
    )
    return "4. Gates mitigate the vanishing gradient of the tanh RNN", verdicts, body


def _span(norms: dict) -> float:
    mean = np.asarray(norms["h"]).mean(axis=0)
    return float(mean[0] / mean[-1])


def _reset_section(spec: dict, out: Path, progress) -> tuple[str, str, str]:
    settings = spec["reset"]
    roots = [out / name for name in spec["sweeps"] if name.startswith("reset")]
    rows = [r for other in settings["compare"] for r in comparisons(roots, "gru", other, None)]
    write_atomic(out / "reset_comparisons.csv", to_csv(rows))
    tables = []
    for other in settings["compare"]:
        mine = [r for r in rows if f"{other} mean" in r]
        columns = ["source", "setting", "metric", "gru mean", "gru std"]
        columns += [f"{other} mean", f"{other} std", "p (equal steps)", "equal steps"]
        tables.append(to_markdown(mine, columns))
    no_reset = [r for r in rows if "gru_no_reset mean" in r]
    reset_helps = bool(no_reset) and all(r["equal steps"] == "gru better" for r in no_reset)
    progress("reset-gate statistics around boundaries")
    lm_run = find_run(out / settings["lm_sweep"], cell="gru")
    offsets = range(settings["offsets"][0], settings["offsets"][1] + 1)
    profile_rows, summary = reset_statistics(lm_run, settings["boundaries"], offsets)
    write_atomic(out / "reset_profile.csv", to_csv(profile_rows))
    plot_reset_profile(profile_rows, out / "reset_profile.png")
    summary_rows = [
        {"boundary": kind, "boundaries in validation": s[0]["count"]}
        | {
            "overall mean r": float(np.mean([x["overall"] for x in s])),
            "lowest mean r, offsets 0..2": float(np.mean([x["lowest after"] for x in s])),
            "effect size per seed": ", ".join(f"{x['effect']:+.2f}" for x in s),
        }
        for kind, s in summary.items()
    ]
    closes = all(x["effect"] <= -0.5 for x in summary.get("speech end", []))
    body = (
        "GRU against the GRU without reset gate and Zhou's MGU (one gate that resets and writes) "
        "on the tasks where forgetting matters: character-level language modelling "
        f"(`{settings['lm_sweep']}`) and selective copying. Final test values, Welch's t-test "
        "(5%).\n\n"
        + "\n".join(tables)
        + f"\n- The reset gate helps (gru significantly better than gru_no_reset on every "
        f"task): {held(reset_helps)}.\n\n"
        "**Where the trained GRU resets.** The mean over units of r_t, the gate on h_{t−1} in "
        "the candidate, on the validation split cut into the training windows (each read from a "
        "zero state). Offset 0 is the step that reads the boundary's last character; a speech end "
        "is a blank line. The effect size is (the lowest mean r at offsets 0..2 − the mean r over "
        "all steps) / the standard deviation of r over all steps, per seed.\n\n"
        "![reset gate around boundaries](reset_profile.png)\n\n"
        + to_markdown(summary_rows)
        + "\n- r falls after a speech end by at least half a standard deviation in every seed "
        f"(the gate forgets selectively, at the boundary): {held(closes)}.\n"
    )
    verdicts = (
        f"{held(reset_helps)} (gru beats gru_no_reset), {held(closes)} (r falls at boundaries)"
    )
    return "5. The reset gate forgets selectively", verdicts, body
