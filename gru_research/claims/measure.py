"""Measuring the textbook claims: numbers only, no verdicts and no markdown.

Each function returns rows (dicts of numbers and labels) that :mod:`.decide` turns into
verdicts and :mod:`.render` into the report.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np

from gru_research.bench import (
    CONFIGS,
    BenchConfig,
    Step,
    bench_model,
    flax_anchor,
    ours,
    time_interleaved,
    torch_anchor,
)
from gru_research.model import ModelConfig, apply_model, design_param_count, model_param_count
from gru_research.reporting import mean_std, welch_p
from gru_research.sweep import read_yaml
from gru_research.tables import Run, load_runs, varying_keys

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
    no more parameters than ``like``'s at ``cfg.hidden_size``."""
    budget = model_param_count(bench_model(cfg, like))
    low, high = 1, cfg.hidden_size
    while low < high:
        mid = (low + high + 1) // 2
        size = model_param_count(bench_model(dataclasses.replace(cfg, hidden_size=mid), cell))
        low, high = (mid, high) if size <= budget else (low, mid - 1)
    return low


IMPLEMENTATIONS = {"gru-research": ours, "Flax nn.RNN": flax_anchor, "PyTorch": torch_anchor}


def throughput_rows(config_names: list[str], rounds: int, design: str, other: str) -> list[dict]:
    """Seconds per training step of ``design``, ``other``, and ``other`` at ``design``'s
    parameter count, for each implementation; all steps of a configuration timed interleaved.
    """
    rows = []
    for name in config_names:
        cfg = CONFIGS[name]
        lean = dataclasses.replace(cfg, hidden_size=equal_param_hidden(cfg, other, design))
        variants = {design: (cfg, design), other: (cfg, other), "equal params": (lean, other)}
        steps = {}
        for implementation, make in IMPLEMENTATIONS.items():
            for variant, (config, cell) in variants.items():
                step = make(config, cell)
                if step is not None:
                    label = f"{implementation}: {variant}"
                    steps[implementation, variant] = dataclasses.replace(step, name=label)
        medians = time_interleaved(list(steps.values()), rounds)
        for implementation in IMPLEMENTATIONS:
            if (implementation, design) not in steps:
                continue
            seconds = {v: medians[steps[implementation, v].name] for v in variants}
            rows.append(
                {
                    "config": name,
                    "batch": cfg.batch,
                    "length": cfg.length,
                    "hidden": cfg.hidden_size,
                    f"{other} hidden at equal params": lean.hidden_size,
                    "implementation": implementation,
                    f"{design} ms": 1e3 * seconds[design],
                    f"{other} ms": 1e3 * seconds[other],
                    f"{other} equal-params ms": 1e3 * seconds["equal params"],
                    f"{design} speed-up, equal hidden": seconds[other] / seconds[design],
                    f"{design} speed-up, equal params": seconds["equal params"] / seconds[design],
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
    from gru_research.config import load_run_config
    from gru_research.model import seed_keys
    from gru_research.tasks import make_task
    from gru_research.train import build_program

    timed = []
    for run_dir in run_dirs:
        n = steps_per_call  # chunks of n steps of the run's own schedule (warm-up included)
        config = dataclasses.replace(
            load_run_config(run_dir), log_every=n, eval_every=n, checkpoint_every=n
        )
        task = make_task(config.task_config())
        program = build_program(config, task, config.model_config(task))
        holder = {"state": program.init(seed_keys(config.seed_list))}

        def run(program=program, holder=holder, data=task.data):
            holder["state"], metrics = program.train_chunk(holder["state"], data, 0)
            jax.block_until_ready(metrics)

        start = time.perf_counter()
        run()
        timed.append(Step(str(run_dir), run, time.perf_counter() - start))
    medians = time_interleaved(timed, rounds, warmup=1)
    return [medians[str(d)] / steps_per_call for d in run_dirs]


def compare_pair(
    source: str, setting: str, a: Run, b: Run, metric: str, seconds: tuple[float, float] | None
) -> dict:
    """Design ``a`` against ``b``: final test values at equal steps, and, given their seconds
    per step, validation values at equal wall time: the faster design at its last step, the
    slower at its last evaluation within the same time. The samples themselves are kept under
    ``samples`` for :mod:`.decide`."""
    names = (a.config["cell"], b.config["cell"])
    va, vb = a.values(metric), b.values(metric)
    (mean_a, std_a), (mean_b, std_b) = mean_std(va), mean_std(vb)
    row = {
        "source": source,
        "setting": setting,
        "metric": metric,
        f"{names[0]} params": a.summary.get("params_per_seed"),
        f"{names[1]} params": b.summary.get("params_per_seed"),
        "steps": a.summary["steps"],
        f"{names[0]} mean": mean_a,
        f"{names[0]} std": std_a,
        f"{names[0]} n": len(va),
        f"{names[1]} mean": mean_b,
        f"{names[1]} std": std_b,
        f"{names[1]} n": len(vb),
        "p (equal steps)": welch_p(va, vb),
        "samples": {"equal steps": (va, vb)},
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
            f"{names[0]} validation at equal time": mean_std(ea)[0],
            f"{names[1]} validation at equal time": mean_std(eb)[0],
            "p (equal time)": welch_p(ea, eb),
        }
        row["samples"]["equal time"] = (ea, eb) if slow_step else None
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
    spec = read_yaml(path.read_text()) if path.exists() else {}
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


def curve_span(norms: dict) -> float:
    """||dL_T / dh_1|| / ||dL_T / dh_T|| of the seeds' mean curve."""
    mean = np.asarray(norms["h"]).mean(axis=0)
    return float(mean[0] / mean[-1])


# ---------------------------------------------------------------------------------------------
# 5. the reset gate around boundaries


def gate_trace(
    params, config: ModelConfig, inputs: jax.Array, gate: str = "r", layer: int = 0
) -> jax.Array:
    """The mean over units of one gate's activation at every step, (B, T), in one layer of a
    model read from its initial state (a gate fixed by the design is its constant)."""
    _, _, traces = apply_model(params, config, inputs, trace=True)
    return traces[layer].gates[gate].mean(axis=-1)


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
    run_dir: Path, boundaries: dict[str, str], offsets: range, lowest_within: range
) -> tuple[list[dict], dict[str, list[dict]]]:
    """Per seed and boundary kind, the mean reset-gate activation at each offset, on the
    validation split cut into the run's training windows (each read from the initial state);
    and per boundary kind and seed, the effect size (the lowest mean r at the offsets of
    ``lowest_within`` − the mean r over all steps) / the standard deviation of r."""
    from gru_research.train import load_run

    config, task, model, params = load_run(run_dir)
    inputs, _ = task.eval_stream("validation")
    traces = np.asarray(jax.jit(jax.vmap(lambda p: gate_trace(p, model, inputs)))(params))
    ids = {token: i for i, token in enumerate(task.vocabulary)}
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
            lowest = min(profile[k] for k in lowest_within)
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


# ---------------------------------------------------------------------------------------------
# 6. state tracking: the worst length bucket per design and task


def state_tracking_rows(
    root: Path, cells: list[str], metric: str, tuning: dict | None = None
) -> list[dict]:
    """Per task and design: the seeds' final test ``metric`` (the tuned value's, with
    ``tuning``), from the committed sweep under ``root``."""
    from gru_research.tables import Tuning, build_table

    runs = load_runs(root)
    if not runs:
        raise FileNotFoundError(f"no finished runs under {root}")
    table = build_table(runs, metric, tuning=Tuning(**tuning) if tuning else None)
    rows = []
    for (row, column), entry in table.entries.items():
        where = table.where(row, column)
        if where["cell"] in cells and entry.values:
            rows.append(
                {
                    "task": where.get("task"),
                    "cell": where["cell"],
                    f"{metric} mean": entry.mean,
                    f"{metric} std": entry.std,
                    "seeds": len(entry.values),
                    "diverged": entry.diverged,
                    "tuned": entry.tuned or "",
                }
            )
    return sorted(rows, key=lambda r: (str(r["task"]), cells.index(r["cell"])))
