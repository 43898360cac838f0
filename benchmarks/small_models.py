"""The papers' small-model regime: the copy and adding experiments' own models, timed.

Part of the campaign behind results/benchmarks.md (``campaign.py --regimes copy,adding``):
every design against Flax ``nn.RNN`` and PyTorch at its better thread setting, each beside
the roofline of its recurrent FLOPs; S seeds vmapped against S single-seed steps; the step
of the real training loop beside the bench step of the same model; and where a step's time
goes, before and after the speed work, from ``phases.py`` run on both commits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from common import Reading, Target

from gru_research import bench
from gru_research.bench import RegimeTiming
from gru_research.reporting import how_many

ROOT = Path(__file__).resolve().parents[1]
CELLS = ("gru", "lstm")
WHY_ONE_SEED = (
    "per-op costs, not arithmetic: every time step runs tens of small XLA operations (about "
    "1 µs each) and matmuls far below one large matmul's throughput, so the step reaches only "
    "the roofline share shown; Flax's step pays the same costs (docs/design.md §4)"
)
WHY_SEEDS = (
    "on a CPU most of a one-seed step is work that grows with S (the per-seed matmuls, each no "
    "faster per FLOP in a batch of S, and the gates' element-wise arithmetic, about 2 ns per "
    "element): each further seed costs the share of a one-seed step in the seeds table, so S "
    "seeds share only the rest"
)
FLAX_NAMES = {"gru": "GRUCell", "lstm": "OptimizedLSTMCell", "mgu": "MGUCell"}
TORCH_NAMES = {"gru": "GRU", "lstm": "LSTM"}
ANCHOR_GOAL = 1.5
SEED_GOALS = {"copy": 3.0, "adding": 1.5}
SEED_FLOOR = 0.95
LOOP_GOAL = 1.15
GPU_SEED_GOAL = 5.0
ROOFLINE_SHARE = 0.7
LOOP_SEEDS = (1, 8)


@dataclass(frozen=True)
class LoopTiming:
    """The training loop's step and the bench step of the same model and seeds, seconds."""

    regime: str
    cell: str
    seeds: int
    loop_s: float
    bench_s: float


@dataclass(frozen=True)
class SmallModels:
    """Everything the small-model sections print, as measured."""

    regimes: tuple[str, ...]
    timings: list[RegimeTiming]
    seeds: dict[tuple[str, str], dict[int, float]]  # (regime, cell) -> S -> speed-up
    loops: list[LoopTiming]
    phases: dict[str, dict[str, dict[str, float]]]  # "before"/"after" -> impl -> phase -> s
    before: str | None  # the commit of the "before" profile
    wall_s: float


def measure(
    regimes: list[str], rounds: int, seed_counts: list[int], before: str | None
) -> SmallModels:
    started = time.perf_counter()
    chosen = {name: bench._regimes()[name] for name in regimes}
    timings = [t for regime in chosen.values() for t in bench.compare_regime(regime, rounds)]
    seeds = {
        (name, cell): bench.regime_seed_scaling(regime, cell, seed_counts, rounds)
        for name, regime in chosen.items()
        for cell in CELLS
    }
    loops = []
    for name, regime in chosen.items():
        for cell in CELLS:
            for s in LOOP_SEEDS:
                loops.append(
                    LoopTiming(name, cell, s, *bench.loop_overhead(regime, cell, s, rounds))
                )
    phases = {"after": profile(None, rounds)}
    if before:
        phases["before"] = profile(before, rounds)
    return SmallModels(
        tuple(regimes), timings, seeds, loops, phases, before, time.perf_counter() - started
    )


def profile(revision: str | None, rounds: int) -> dict[str, dict[str, float]]:
    """``phases.py`` on the working tree, or on the package as of ``revision`` (extracted
    with ``git archive``), in a process of its own."""
    command = [sys.executable, str(ROOT / "benchmarks" / "phases.py"), "--rounds", str(rounds)]
    if revision is None:
        return json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    archive = subprocess.run(
        ["git", "archive", revision, "gru_research"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tempfile.TemporaryDirectory() as folder:
        tarfile.open(fileobj=BytesIO(archive)).extractall(folder, filter="data")
        env = {**os.environ, "PYTHONPATH": folder}
        out = subprocess.run(command, check=True, capture_output=True, env=env, cwd=folder)
    return json.loads(out.stdout)


# ---------------------------------------------------------------------------------------------
# targets


def group_timings(m: SmallModels, regime: str, group: str) -> list[RegimeTiming]:
    return [t for t in m.timings if (t.regime, t.group) == (regime, group)]


def roofline_gflops(timings: list[RegimeTiming]) -> float | None:
    return next((t.gflops for t in timings if t.name.startswith("roofline")), None)


def anchor_reading(timings: list[RegimeTiming], prefix: str) -> Reading:
    """Ours against the fastest step whose name starts with ``prefix`` (PyTorch: its better
    thread setting), with our share of the roofline."""
    ours = next((t for t in timings if t.name.startswith("gru-research")), None)
    anchors = [t for t in timings if t.name.startswith(prefix)]
    if ours is None or not anchors:
        missing = "gru-research" if ours is None else prefix
        why = " (torch is not installed)" if missing.startswith("torch") else ""
        return Reading(None, f"not measured: no {missing} step{why}")
    best = min(anchors, key=lambda t: t.seconds)
    roofline = roofline_gflops(timings)
    share = None if roofline is None else ours.gflops / roofline
    note = f"against {best.name}" if len(anchors) > 1 else ""
    return Reading(best.seconds / ours.seconds, note, share)


def seed_target_reading(m: SmallModels, regime: str, cell: str, seeds: int = 8) -> Reading:
    speed_ups = m.seeds.get((regime, cell), {})
    if seeds not in speed_ups:
        return Reading(None, f"not measured: {seeds} is not among the seed counts")
    single = next(t for t in group_timings(m, regime, cell) if t.name.startswith("gru-research"))
    roofline = roofline_gflops(group_timings(m, regime, cell))
    # S seeds do S times the FLOPs of one in (1 / speed-up) × S single-seed steps' time
    gflops = single.gflops * speed_ups[seeds]
    return Reading(speed_ups[seeds], "", None if roofline is None else gflops / roofline)


def floor_reading(m: SmallModels, regime: str, cell: str) -> Reading:
    speed_ups = {s: v for s, v in m.seeds.get((regime, cell), {}).items() if s >= 2}
    if not speed_ups:
        return Reading(None, "not measured: no seed count of 2 or more")
    worst = min(speed_ups, key=speed_ups.get)
    return Reading(speed_ups[worst], f"at S = {worst}")


def targets(m: SmallModels) -> list[tuple[Target, Reading]]:
    pairs = []
    for regime in m.regimes:
        for cell in CELLS:
            timings = group_timings(m, regime, cell)
            for prefix in (f"flax nn.RNN({FLAX_NAMES[cell]})", f"torch nn.{TORCH_NAMES[cell]}"):
                text = f"{regime}, 1 seed: gru-research {cell} vs {prefix}, step throughput"
                goal = Target(text, ANCHOR_GOAL, roofline_share=ROOFLINE_SHARE, why=WHY_ONE_SEED)
                pairs.append((goal, anchor_reading(timings, prefix)))
    for regime in m.regimes:
        for cell in CELLS:
            text = f"{regime}: 8 seeds vmapped vs 8 single-seed steps ({cell}), on a CPU"
            goal = Target(
                text,
                SEED_GOALS[regime],
                backend="cpu",
                roofline_share=ROOFLINE_SHARE,
                why=WHY_SEEDS,
            )
            pairs.append((goal, seed_target_reading(m, regime, cell)))
            floor = f"{regime}: S seeds vmapped vs S single-seed steps ({cell}), every S ≥ 2"
            pairs.append((Target(floor, SEED_FLOOR, why=WHY_SEEDS), floor_reading(m, regime, cell)))
        gpu = f"{regime}: 8 seeds vmapped vs 8 single-seed steps (gru), on a GPU"
        pairs.append(
            (Target(gpu, GPU_SEED_GOAL, backend="gpu"), seed_target_reading(m, regime, "gru"))
        )
    for loop in m.loops:
        text = (
            f"{loop.regime}: the training loop's step over the bench step ({loop.cell}, "
            f"{how_many(loop.seeds, 'seed')})"
        )
        pairs.append((Target(text, LOOP_GOAL, at_most=True), Reading(loop.loop_s / loop.bench_s)))
    return pairs


# ---------------------------------------------------------------------------------------------
# tables


def timing_rows(m: SmallModels) -> list[dict]:
    """Every implementation's step, its recurrent GFLOP/s and its share of the roofline."""
    return bench.regime_records(m.timings)


def seed_cost(speed_ups: dict[int, float]) -> float | None:
    """What each further seed costs, as a share of a one-seed step, at the largest S measured:
    (t_S / t_1 − 1) / (S − 1), where t_S / t_1 = S / speed-up. None with no S > 1."""
    largest = max(speed_ups)
    if largest < 2:
        return None
    return (largest / speed_ups[largest] - 1) / (largest - 1)


def seed_rows(m: SmallModels) -> list[dict]:
    """Each design's speed-up at every S, and what a further seed costs."""
    counts = sorted({s for ups in m.seeds.values() for s in ups})
    return [
        {"regime": regime, "design": cell}
        | {f"S = {s}": ups.get(s) for s in counts}
        | {"cost of a further seed": seed_cost(ups)}
        for (regime, cell), ups in m.seeds.items()
    ]


def loop_rows(m: SmallModels) -> list[dict]:
    return [
        {
            "regime": loop.regime,
            "design": loop.cell,
            "seeds": loop.seeds,
            "training loop, ms/step": loop.loop_s * 1e3,
            "bench step, ms/step": loop.bench_s * 1e3,
            "loop / bench": loop.loop_s / loop.bench_s,
        }
        for loop in m.loops
    ]


PHASE_NAMES = ("forward", "forward + backward", "whole step")


def phase_rows(m: SmallModels) -> list[dict]:
    """Milliseconds per phase (backward and update are differences of medians), and the whole
    step's throughput over Flax's in the same process."""
    rows = []
    for version in ("before", "after"):
        if version not in m.phases:
            continue
        label = f"before ({m.before})" if version == "before" else "after (this commit)"
        phases = m.phases[version]
        for name, p in phases.items():
            forward, backward, whole = (p[k] * 1e3 for k in PHASE_NAMES)
            flax = phases[f"flax {name.split()[-1]}"]["whole step"] * 1e3
            rows.append(
                {
                    "code": label,
                    "implementation": name,
                    "forward": forward,
                    "backward": backward - forward,
                    "optimiser and rest": whole - backward,
                    "whole step": whole,
                    "Flax's step time over this one": flax / whole,
                }
            )
    return rows
