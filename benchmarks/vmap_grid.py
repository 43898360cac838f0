"""A grid of learning rates in one program: 4 rates × 4 seeds vmapped together in the training
loop's program, against the 16 runs trained one after another, in the papers' copy regime.

    python benchmarks/vmap_grid.py --out results/vmap_grid.md

Both are ``gru-research train``'s own compiled chunk (batches sampled inside the step, the
optimiser, the freeze of diverged seeds, the metrics), timed per step in the steady state and
interleaved in one process; their compile times are reported apart. A run of one seed at one
rate stands for each of the 16.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import OneLineParser, positive_int, publish

from gru_research import bench
from gru_research.reporting import markdown_table, report_header, verdict

GOAL = 4.0
CELLS = ("gru", "lstm")


def rows(timings: dict[str, bench.GridTiming]) -> list[dict]:
    return [
        {
            "design": cell,
            "grid": f"{t.values} rates × {t.seeds} seeds",
            "one program, ms/step": t.group_s * 1e3,
            "one run, ms/step": t.single_s * 1e3,
            "throughput over the runs one after another": t.speed_up,
            "compile s (program, one run)": f"{t.group_compile_s:.2f}, {t.single_compile_s:.2f}",
        }
        for cell, t in timings.items()
    ]


def target_rows(timings: dict[str, bench.GridTiming], backend: str) -> list[dict]:
    return [
        {
            "target": f"copy: 4 × 4 grid ({cell}) vs the 16 runs one after another, on a {backend}",
            "goal": f"≥ {GOAL:g}×",
            "measured": f"{t.speed_up:.2f}×",
            "verdict": f"**{verdict(t.speed_up >= GOAL)}**",
        }
        for cell, t in timings.items()
    ]


WHY = (
    "Why, where it is not held: the members of a group share a step's fixed per-op costs only; "
    "their matmuls and gate arithmetic grow with the members, as for seeds "
    "(results/benchmarks.md, the seeds table's cost of a further seed)."
)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="vmap_grid.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=positive_int, default=7)
    parser.add_argument("--out", type=Path, default=Path("results/vmap_grid.md"))
    args = parser.parse_args(argv)
    import jax

    regime = bench._regimes()["copy"]
    timings = {cell: bench.grid_speed(regime, cell, 4, args.rounds) for cell in CELLS}
    backend = jax.default_backend()
    lines = report_header(
        "A grid of learning rates in one program",
        __doc__.split("\n\n")[2].replace("\n", " "),
        f"python benchmarks/vmap_grid.py --rounds {args.rounds} --out {args.out}",
        f"JAX backend: {backend}; median of {args.rounds} interleaved rounds after warm-up",
        f"learning rates: {', '.join(f'{lr:g}' for lr in bench.GRID_LRS)}",
    )
    lines += ["", markdown_table(target_rows(timings, backend)).rstrip("\n")]
    lines += ["", markdown_table(rows(timings)).rstrip("\n")]
    if any(t.speed_up < GOAL for t in timings.values()):
        lines += ["", WHY]
    text = "\n".join(lines) + "\n"
    return publish(args.out, text)


if __name__ == "__main__":
    sys.exit(main())
