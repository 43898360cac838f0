"""Feng et al. (2024)'s speed claim (docs/papers.md §5), measured: results/feng2024_speed.

    python benchmarks/feng_speed.py --lengths 64,128,256,512,1024,2048,4096 --batch 64 \\
        --rounds 3 --out results/feng2024_speed/report.md

One training step of min_gru on the parallel (log-space associative) scan against gru on the
sequential ``lax.scan``, per length, with the compiled step's memory, and the claim's verdicts.
"""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path

import jax
from common import OneLineParser, joined, positive_int, positive_ints, publish, readable

from gru_research import bench
from gru_research.bench import ScanSpeed
from gru_research.reporting import claims_table, markdown_table, report_header, verdict

DEFAULT_LENGTHS = "64,128,256,512,1024,2048,4096"
PAPER_SPEED_UPS = {512: 175.0, 4096: 1324.0}  # on a T4 GPU
MAGNITUDE_CLAIM = (
    "the magnitudes: at least half the paper's speed-ups, 175× at T = 512 and 1,324× at "
    "T = 4096 (a T4 GPU)"
)


def speed_ups(points: list[ScanSpeed]) -> list[float]:
    """How many times gru's step time the parallel min_gru's is, per length."""
    return [p.gru_s / p.parallel_s for p in points]


def memory_ratios(points: list[ScanSpeed]) -> list[float]:
    """The parallel min_gru's step memory over gru's, per length."""
    return [p.parallel_bytes / p.gru_bytes for p in points]


def times(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}×" for v in values)


def magnitude_claim(points: list[ScanSpeed], backend: str) -> tuple[str, str, str]:
    """The paper's magnitudes are GPU numbers: checked on a GPU backend only."""
    if backend != "gpu":
        return (
            MAGNITUDE_CLAIM,
            "not measured",
            f"GPU numbers; not measured on this backend ({backend})",
        )
    measured = {p.length: s for p, s in zip(points, speed_ups(points), strict=True)}
    checked = {t: measured[t] for t in PAPER_SPEED_UPS if t in measured}
    if not checked:
        return MAGNITUDE_CLAIM, verdict(None), "T = 512 and T = 4096 were not among the lengths"
    held = all(s >= PAPER_SPEED_UPS[t] / 2 for t, s in checked.items())
    figures = ", ".join(
        f"T = {t}: {s:.1f}× (paper {PAPER_SPEED_UPS[t]:,.0f}×)" for t, s in checked.items()
    )
    return MAGNITUDE_CLAIM, verdict(held), figures


def claims(points: list[ScanSpeed], backend: str) -> list[tuple[str, str, str]]:
    """(claim, verdict, figures) for each part of the speed claim."""
    ups, memory = speed_ups(points), memory_ratios(points)
    return [
        (
            "the parallel min_gru's speed-up over gru grows monotonically with T",
            verdict(all(b >= a for a, b in pairwise(ups))),
            times(ups),
        ),
        (
            "the parallel path uses more memory than gru",
            verdict(all(r > 1 for r in memory)),
            times(memory),
        ),
        magnitude_claim(points, backend),
    ]


def point_rows(points: list[ScanSpeed]) -> list[dict]:
    mib = 2**20
    return [
        {
            "T": p.length,
            "gru ms": readable(p.gru_s * 1e3),
            "min_gru parallel ms": readable(p.parallel_s * 1e3),
            "parallel speed-up": p.gru_s / p.parallel_s,
            "min_gru sequential ms": readable(p.sequential_s * 1e3),
            "sequential speed-up": p.gru_s / p.sequential_s,
            "gru MiB": readable(p.gru_bytes / mib),
            "min_gru parallel MiB": readable(p.parallel_bytes / mib),
            "parallel memory × gru": p.parallel_bytes / p.gru_bytes,
        }
        for p in points
    ]


def scale_note(backend: str, device_kind: str) -> str:
    """What the ratios can and cannot say about the paper's, on this backend."""
    paper = (
        "**Scale.** The paper's magnitudes (175× at T = 512, 1,324× at T = 4096, +88% memory) "
        "were measured on a T4 GPU."
    )
    if backend == "gpu":
        return f"{paper} These are GPU ratios, measured on {device_kind}."
    note = f"{paper} These are {backend.upper()} ratios, reported as such; the magnitudes are "
    note += "checked only on a GPU backend."
    if backend == "cpu":
        note += (
            " On a CPU the associative scan does more work than the sequential loop and has no "
            "idle parallel units to fill."
        )
    return note


def render(
    points: list[ScanSpeed], batch: int, rounds: int, command: str, backend: str, device_kind: str
) -> str:
    description = (
        "Feng et al. (2024), the speed claim (docs/papers.md §5): one training step of min_gru "
        "on the parallel (log-space associative) scan against gru on the sequential "
        f"`lax.scan`, T = {points[0].length} … {points[-1].length}, batch {batch}, hidden 128."
    )
    lines = report_header(
        "feng2024_speed",
        description,
        command,
        f"JAX backend: {backend}; median of {rounds} interleaved rounds per length",
        "memory: the compiled step's temporaries plus arguments",
    )
    lines += ["", scale_note(backend, device_kind), ""]
    lines += [markdown_table(point_rows(points)).rstrip("\n")]
    lines += claims_table(claims(points, backend))
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None):
    parser = OneLineParser(prog="feng_speed.py", description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=positive_ints, default=DEFAULT_LENGTHS)
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/feng2024_speed/report.md"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = (
        f"python benchmarks/feng_speed.py --lengths {joined(args.lengths)} --batch {args.batch} "
        f"--rounds {args.rounds} --out {args.out}"
    )
    points = bench.scan_speed(args.lengths, args.batch, args.rounds)
    device_kind = jax.devices()[0].device_kind
    text = render(points, args.batch, args.rounds, command, jax.default_backend(), device_kind)
    return publish(args.out, text)


if __name__ == "__main__":
    sys.exit(main())
