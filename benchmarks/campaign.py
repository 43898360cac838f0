"""The training-step benchmark campaign behind results/benchmarks.md.

    python benchmarks/campaign.py --configs small,medium,long --rounds 7 --seeds 1,2,4,8,16 \\
        --lengths 64,256,1024,4096 --out results/benchmarks.md

It measures with the harness (``gru_research.bench``) and writes one report: the speed targets
with their verdicts, every implementation's step, where a step's time goes, seeds vmapped, step
time against T, and a plot beside the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import small_models
from common import (
    OneLineParser,
    Reading,
    Target,
    configs,
    joined,
    positive_int,
    positive_ints,
    publish,
    readable,
    shortfalls,
    target_row,
)

from gru_research import bench
from gru_research.bench import CONFIGS, BenchConfig, RematMemory, Timing
from gru_research.reporting import markdown_table, report_header

PROFILED = ("small", "medium")  # where a step's phases are timed (long's steps take seconds)
REMAT_LENGTH = 10_000


@dataclass(frozen=True)
class Measurements:
    """Everything the report prints, as the harness measured it."""

    configs: dict[str, BenchConfig]
    rounds: int
    timings: list[Timing]
    seed_speed_ups: dict[int, float]
    length_curves: dict[str, dict[int, float]]
    phases: dict[str, dict[str, dict[str, float]]]  # config → implementation → phase → s
    remat: RematMemory
    compile_2_layers_s: float
    wall_s: float


def length_rounds(rounds: int) -> int:
    """Rounds of the step time against T (its long steps take seconds)."""
    return max(3, rounds // 2)


def measure(
    chosen: list[BenchConfig],
    rounds: int,
    seed_counts: list[int],
    lengths: list[int],
    small: BenchConfig = CONFIGS["small"],
    remat_length: int = REMAT_LENGTH,
) -> Measurements:
    """Run every measurement of the report; ``small`` is the configuration of the seed scaling
    and of the 2-layer compile time."""
    started = time.perf_counter()
    timings = [t for cfg in chosen for t in bench.compare(cfg, rounds)]
    seed_speed_ups = bench.seed_scaling(small, seed_counts, rounds)
    curves = bench.length_scaling(lengths, length_rounds(rounds))
    phases = {cfg.name: bench.profile(cfg, rounds) for cfg in chosen if cfg.name in PROFILED}
    remat = bench.remat_memory(remat_length)
    compile_2_layers = bench.ours(dataclasses.replace(small, layers=2), "gru").compile_s
    return Measurements(
        {cfg.name: cfg for cfg in chosen},
        rounds,
        timings,
        seed_speed_ups,
        curves,
        phases,
        remat,
        compile_2_layers,
        time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------------
# the speed targets


WHY_ANCHOR = (
    "both steps run the same per-step matmul and element-wise work inside the time loop; ours "
    "only moves the kernel gradients out of it, a small part of the step at these sizes"
)
WHY_LONG = (
    "on a CPU, auto runs min_gru's sequential linear scan, which still pays every step's "
    "element-wise work; the associative scan has no idle parallel units to fill on 2 cores"
)
WHY_AUTO = "auto picks the scan by backend (sequential on a CPU), not by measurement"


# (group, gru-research's implementation, the anchor, how many times the anchor's throughput)
ANCHOR_TARGETS = [
    ("gru", "gru-research gru", "flax nn.RNN(GRUCell)", 1.5),
    ("gru", "gru-research gru", "torch nn.GRU", 2.0),
    ("lstm", "gru-research lstm", "torch nn.LSTM", 1.0),
    ("lstm", "gru-research lstm", "flax nn.RNN(OptimizedLSTMCell)", 1.5),
]
MIN_GRU_SCANS = {
    "auto": "gru-research min_gru",
    "sequential": "gru-research min_gru (sequential scan)",
    "parallel": "gru-research min_gru (parallel scan)",
    "gru": "gru-research gru",
}


def group_seconds(timings: list[Timing], config: str, group: str) -> dict[str, float]:
    return {t.name: t.seconds for t in timings if (t.config, t.group) == (config, group)}


def not_run(config: str) -> Reading:
    return Reading(None, f"not measured: configuration {config} was not run")


def throughput_ratio(seconds: dict[str, float], name: str, other: str) -> Reading:
    """How many times ``name``'s throughput is ``other``'s, timed in one group."""
    missing = [n for n in (name, other) if n not in seconds]
    if missing:
        why = " (torch is not installed)" if missing[0].startswith("torch") else ""
        return Reading(None, f"not measured: no {missing[0]} step{why}")
    return Reading(seconds[other] / seconds[name])


def better_scan_slack(seconds: dict[str, float]) -> Reading:
    """The auto scan's step time over the better explicit scan's."""
    names = [MIN_GRU_SCANS[k] for k in ("auto", "sequential", "parallel")]
    missing = [n for n in names if n not in seconds]
    if missing:
        return Reading(None, f"not measured: no {missing[0]} step")
    auto, sequential, parallel = (seconds[n] for n in names)
    return Reading(auto / min(sequential, parallel))


def seed_reading(speed_ups: dict[int, float], seeds: int = 8) -> Reading:
    if seeds not in speed_ups:
        return Reading(None, f"not measured: {seeds} is not among the seed counts")
    return Reading(speed_ups[seeds])


def remat_reading(remat: RematMemory) -> Reading:
    return Reading(
        remat.remat_bytes / 2**30,
        f"remat off: {remat.plain_bytes / 2**30:.2f} GiB; one step {remat.remat_step_s:.1f} s",
    )


def speed_targets(m: Measurements) -> list[tuple[Target, Reading]]:
    """Every target with its reading."""
    pairs = []
    for config in ("small", "medium"):
        for group, name, anchor, goal in ANCHOR_TARGETS:
            seconds = group_seconds(m.timings, config, group)
            text = f"{config}: {name} vs {anchor}, training-step throughput"
            reading = throughput_ratio(seconds, name, anchor)
            target = Target(text, goal, why=WHY_ANCHOR)
            pairs.append((target, reading if config in m.configs else not_run(config)))
    seeds = "small: 8 seeds vmapped in one step vs 8 single-seed steps one after another"
    long = m.configs.get("long", CONFIGS["long"])
    scans = group_seconds(m.timings, "long", "min_gru")
    auto, parallel, sequential, gru = (
        MIN_GRU_SCANS[k] for k in ("auto", "parallel", "sequential", "gru")
    )
    slack = "long: min_gru's auto scan, step time over the better explicit scan's"
    ran_long = "long" in m.configs
    slack_reading = better_scan_slack(scans) if ran_long else not_run("long")
    remat = f"T = {m.remat.length:,}, B = 8, H = 128, with remat: the compiled step's memory"
    return pairs + [
        (
            Target(f"{seeds}, on a CPU", 1.2, backend="cpu", why=small_models.WHY_SEEDS),
            seed_reading(m.seed_speed_ups),
        ),
        (Target(f"{seeds}, on a GPU", 5.0, backend="gpu"), seed_reading(m.seed_speed_ups)),
        (
            Target(
                f"long (T = {long.length}): {auto} vs {gru}, training-step throughput",
                3.0,
                why=WHY_LONG,
            ),
            throughput_ratio(scans, auto, gru) if ran_long else not_run("long"),
        ),
        (
            Target("long: min_gru parallel scan vs sequential scan, on a GPU", 3.0, backend="gpu"),
            throughput_ratio(scans, parallel, sequential) if ran_long else not_run("long"),
        ),
        (
            Target(f"{slack}, on a CPU", 1.05, at_most=True, backend="cpu", why=WHY_AUTO),
            slack_reading,
        ),
        (Target(f"{slack}, on a GPU", 1.05, at_most=True, backend="gpu"), slack_reading),
        (Target(remat, 4, " GiB", at_most=True), remat_reading(m.remat)),
        (
            Target("small, 2 layers: gru-research gru's compile time", 10, " s", at_most=True),
            Reading(m.compile_2_layers_s),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# the report


DESCRIPTION = """One full training step (embedding, recurrent layer, readout, cross-entropy,
backward pass, Adam update) of gru-research's presets against Flax `nn.RNN` and PyTorch
`nn.GRU` / `nn.LSTM` on the same shapes, timed in one process and interleaved: one step of each
per round after warm-up, the median of the rounds. Compare ratios, not absolute times, across
runs: on shared machines absolute times drift up to 3×."""


def phase_rows(phases: dict[str, dict[str, dict[str, float]]]) -> list[dict]:
    """Milliseconds per phase; backward and update are differences of medians (noise can make
    a small one negative)."""
    rows = []
    for config, implementations in phases.items():
        for name, p in implementations.items():
            forward, with_backward, whole = (p[phase] * 1e3 for phase in bench.PHASES)
            rows.append(
                {
                    "config": config,
                    "implementation": name,
                    "forward": readable(forward),
                    "backward": readable(with_backward - forward),
                    "Adam update and rest": readable(whole - with_backward),
                    "whole step": readable(whole),
                }
            )
    return rows


def length_rows(curves: dict[str, dict[int, float]]) -> list[dict]:
    return [
        {"implementation": name} | {f"T = {t}": readable(s * 1e3) for t, s in curve.items()}
        for name, curve in curves.items()
    ]


def seed_rows(speed_ups: dict[int, float]) -> list[dict]:
    return [
        {"seeds S": s, "speed-up over S single-seed steps": speed_ups[s]} for s in sorted(speed_ups)
    ]


def table(rows: list[dict]) -> str:
    return markdown_table(rows).rstrip("\n") if rows else "(nothing measured)"


def render(
    m: Measurements,
    command: str,
    backend: str,
    plot_name: str | None = None,
    small: small_models.SmallModels | None = None,
) -> str:
    """The whole report as markdown; ``small``: the papers' small-model regime too."""
    pairs = speed_targets(m) + (small_models.targets(small) if small else [])
    targets = [target_row(t, r, backend) for t, r in pairs]
    lines = report_header(
        "Training-step benchmarks",
        DESCRIPTION,
        command,
        f"JAX backend: {backend}; median of {m.rounds} interleaved rounds after warm-up "
        f"({length_rounds(m.rounds)} for the step time against T)",
        "memory: the compiled step's temporaries plus arguments (JAX steps only)",
        f"wall time of the measurements: {(m.wall_s + getattr(small, 'wall_s', 0)) / 60:.1f} min",
        THREADS,
    )
    lines += ["", "## Speed targets", "", TARGETS_NOTE, "", table(targets)]
    lines += ["", "### The targets not met: by how much, and why", ""]
    lines += [table(shortfalls(pairs, backend))]
    if small:
        lines += small_sections(small)
    lines += ["", "## Every implementation", ""]
    lines += ["`vs first`: the step time over the first row's of its group (lower is faster).", ""]
    lines += [table(bench.timing_records(m.timings))]
    lines += ["", "## Where the time goes (gru; ms, medians of interleaved rounds)", ""]
    lines += [table(phase_rows(m.phases))]
    lines += ["", "## Seeds vmapped (small config, gru)", "", table(seed_rows(m.seed_speed_ups))]
    lines += ["", "## Step time against sequence length (B = 8, H = 128), ms", ""]
    lines += [table(length_rows(m.length_curves))]
    if plot_name:
        lines += ["", f"![scaling]({plot_name})"]
    return "\n".join(lines) + "\n"


THREADS = (
    "threads: every JAX step runs in this one process on XLA's default intra-op thread pool "
    "(all cores); PyTorch is timed at 1 and at 2 threads (`torch.set_num_threads`), and its "
    "targets take the better setting"
)
TARGETS_NOTE = (
    "A small-model target is also met when our step reaches the stated share of its roofline: "
    "one in-process matmul with the step's recurrent FLOPs (h U forward; the gradients with "
    "respect to h and U backward), (3 T B, H) × (H, G H), timed beside it."
)


def small_sections(small: small_models.SmallModels) -> list[str]:
    """The small-model regime's tables: every implementation, seeds, the training loop, and
    where the time went before and after."""
    lines = ["", "## The papers' small-model regime", "", SMALL_DESCRIPTION, ""]
    lines += [table(small_models.timing_rows(small))]
    lines += ["", "### Seeds vmapped: throughput over S single-seed steps", ""]
    lines += [SEEDS_NOTE, "", table(small_models.seed_rows(small))]
    lines += ["", "### The training loop's step against the bench step of the same model", ""]
    lines += [LOOP_NOTE, "", table(small_models.loop_rows(small))]
    lines += ["", "### Where the time goes (adding regime; ms, medians of interleaved rounds)", ""]
    lines += [PHASES_NOTE, "", table(small_models.phase_rows(small))]
    return lines


SEEDS_NOTE = """`cost of a further seed`: (t_S / t_1 − 1) / (S − 1) at the largest S, what
each seed beyond the first adds to the step, as a share of a one-seed step; the speed-up over
single-seed steps can only approach 1 / that share."""

SMALL_DESCRIPTION = """The experiments' own models, loss and optimiser (`gru-research train`'s
RMSProp after element-wise clipping at 1): **copy** as in Arjovsky et al. (2016), B = 20,
T + 20 = 120 steps, 10 symbols one-hot into the gates, tanh RNN 80 and LSTM 40 units and every
other design at the LSTM's parameter count, cross-entropy over every step; **adding**, B = 50,
T = 200, 2 real inputs, H = 128, the last step's MSE. Flax's and PyTorch's cells get the same
hidden size, batch, loss and optimiser. `recurrent GFLOP/s`: the step's recurrent FLOPs over its
time."""
LOOP_NOTE = """The loop's step is `gru-research train`'s own compiled chunk (10 steps: batches
sampled inside the step, one per seed, the optimiser, the freeze of diverged seeds, per-step
metrics), per step; the bench step is the same model and seeds on fixed batches."""
PHASES_NOTE = """`phases.py` in a process of its own on each commit: forward, backward and the
optimiser of gru and lstm (B = 50, T = 200, H = 128), ours and Flax's timed interleaved. Absolute
times of the two processes may differ; compare each row with the Flax rows of its own process."""


def plot(curves: dict[str, dict[int, float]], speed_ups: dict[int, float], path: Path) -> None:
    """Step time against T (left) and the seeds' speed-up (right), as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in curves.items():
        lengths = sorted(curve)
        left.plot(lengths, [curve[t] * 1e3 for t in lengths], marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="ms per step")
    left.set_title("training step vs length (B = 8, H = 128)")
    left.legend(fontsize=7)
    seeds = sorted(speed_ups)
    right.plot(seeds, [speed_ups[s] for s in seeds], marker="o", label="gru-research gru")
    right.axhline(1.0, color="grey", lw=0.8, ls="--")
    right.set(xscale="log", xlabel="seeds S", ylabel="speed-up over S single-seed steps")
    right.set_xticks(seeds, [str(s) for s in seeds])
    right.set_title("seeds vmapped in one step (small config)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the command


def parse_args(argv: list[str] | None):
    parser = OneLineParser(prog="campaign.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs",
        type=configs,
        default="small,medium,long",
        help=f"comma-separated, of: {', '.join(CONFIGS)}",
    )
    parser.add_argument("--rounds", type=positive_int, default=7)
    parser.add_argument("--seeds", type=positive_ints, default="1,2,4,8,16", help="seed counts")
    parser.add_argument(
        "--lengths", type=positive_ints, default="64,256,1024,4096", help="T of the length curve"
    )
    parser.add_argument(
        "--regimes",
        type=regimes,
        default="copy,adding",
        help="the papers' small-model regimes: comma-separated, of: copy, adding (or none)",
    )
    parser.add_argument(
        "--before", default=None, help="a commit whose profile is set beside this one's"
    )
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks.md"))
    return parser.parse_args(argv)


def regimes(text: str) -> list[str]:
    """An argparse type: comma-separated regime names, or ``none``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in bench.REGIME_NAMES]
    if unknown or not names:
        given = ", ".join(unknown) or repr(text)
        raise argparse.ArgumentTypeError(
            f"unknown regime {given}; valid: {', '.join(bench.REGIME_NAMES)} (or none)"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = (
        f"python benchmarks/campaign.py --configs {joined(args.configs)} --rounds {args.rounds} "
        f"--seeds {joined(args.seeds)} --lengths {joined(args.lengths)} "
        f"--regimes {joined(args.regimes) or 'none'}"
        + (f" --before {args.before}" if args.before else "")
        + f" --out {args.out}"
    )
    small = None
    if args.regimes:
        small = small_models.measure(args.regimes, args.rounds, args.seeds, args.before)
    measured = measure(args.configs, args.rounds, args.seeds, args.lengths)
    plot_path = args.out.with_suffix(".png")
    # rendered before the plot is written, so that the report's commit is the code's own
    text = render(measured, command, jax.default_backend(), plot_path.name, small)
    plot(measured.length_curves, measured.seed_speed_ups, plot_path)
    return publish(args.out, text)


if __name__ == "__main__":
    sys.exit(main())
