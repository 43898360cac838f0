"""Recurrent connectivity: a diagonal recurrence (indrnn) and a block-diagonal one (slstm, 4
heads) against the full H × H recurrences of the same family (rnn_tanh, lstm), trained at the
same hidden size.

    python benchmarks/connectivity.py --hidden 128,512 --out results/connectivity.md

Each design's whole training step (forward, backward, optimiser) in the adding regime of
Arjovsky et al. (2016): T = 200, batch 50, RMSProp, every design at the hidden size of the row,
timed interleaved in one process, beside the same design with every read of h a full H × H
kernel (its "full twin"), which isolates the connectivity. A diagonal recurrence reads h with H
multiplies per step and k heads with H²/k, against H² for a full kernel, per gate: the point of
those designs, which is lost if they are computed as a full H × H matmul.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from common import OneLineParser, positive_int, positive_ints, publish

from gru_research import bench
from gru_research.gates import PRESETS, Gate, GateDesign
from gru_research.model import design_param_count
from gru_research.reporting import markdown_table, report_header, verdict

PAIRS = (("indrnn", "rnn_tanh"), ("slstm", "lstm"))  # (design, the classic design beside it)
GOAL_HIDDEN = 512  # where the recurrent matmul is the largest part of a step


def with_full_recurrence(cell: str) -> GateDesign:
    """The preset with every read of h a full H × H kernel: the same design otherwise."""
    design = PRESETS[cell]
    gates = tuple(
        (n, replace(g, h=True) if isinstance(g, Gate) and g.h else g) for n, g in design.gates
    )
    return replace(
        design, name=f"{cell}_full", gates=gates, candidate=replace(design.candidate, h=True)
    )


def recurrent_multiplies(design: GateDesign, hidden: int) -> int:
    """Multiplies per step and sequence of the recurrence's reads of h (all gates)."""
    names = [n for n, _ in design.learned_gates] + [design.candidate_name]
    total = 0
    for name in names:
        kind, heads = design.recurrence(name)
        total += {"full": hidden**2, "block": hidden**2 // max(heads, 1), "diagonal": hidden}.get(
            kind, 0
        )
    return total


def measure(hidden: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each design, its full-recurrence twin and its classic
    neighbour, interleaved."""
    base = bench._regimes()["adding"]
    cells = [cell for pair in PAIRS for cell in pair]
    regime = bench.Regime("adding", base.base, {cell: hidden for cell in cells})
    steps = {cell: bench.regime_ours(regime, cell) for cell in cells}
    steps |= {
        f"{c}_full": bench.regime_ours(regime, c, variant=with_full_recurrence(c)) for c, _ in PAIRS
    }
    timed = bench.time_interleaved(list(steps.values()), rounds)
    return {name: timed[step.name] for name, step in steps.items()}


def rows(hidden: int, seconds: dict[str, float]) -> list[dict]:
    return [
        {
            "H": hidden,
            "design": cell,
            "ms/step": seconds[cell] * 1e3,
            "over the same design with a full recurrence": seconds[cell] / seconds[f"{cell}_full"],
            "over its classic neighbour": f"{seconds[cell] / seconds[anchor]:.2f}× ({anchor})",
            "recurrent multiplies over full": recurrent_multiplies(PRESETS[cell], hidden)
            / recurrent_multiplies(with_full_recurrence(cell), hidden),
            "layer parameters (full twin)": f"{design_param_count(cell, 2, hidden):,} "
            f"({design_param_count(with_full_recurrence(cell), 2, hidden):,})",
        }
        for cell, anchor in PAIRS
    ]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="connectivity.py", description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=positive_ints, default=[128, GOAL_HIDDEN])
    parser.add_argument("--rounds", type=positive_int, default=7)
    parser.add_argument("--out", type=Path, default=Path("results/connectivity.md"))
    args = parser.parse_args(argv)
    if any(h % 4 for h in args.hidden):
        parser.error(f"--hidden: sizes divisible by slstm's 4 heads, got {args.hidden}")
    import jax

    start = time.perf_counter()
    measured = {hidden: measure(hidden, args.rounds) for hidden in args.hidden}
    wall = time.perf_counter() - start
    lines = report_header(
        "Recurrent connectivity: diagonal and block-diagonal against full",
        __doc__.split("\n\n")[2].replace("\n", " "),
        f"python benchmarks/connectivity.py --hidden {','.join(map(str, args.hidden))} "
        f"--rounds {args.rounds} --out {args.out}",
        f"JAX backend: {jax.default_backend()}; median of {args.rounds} interleaved rounds",
        f"wall time: {wall:.0f} s (compilations included)",
    )
    table = [row for hidden, seconds in measured.items() for row in rows(hidden, seconds)]
    if GOAL_HIDDEN in measured:
        targets = [
            {
                "target": f"{cell} step at most its full twin's at H = {GOAL_HIDDEN}",
                "measured": f"{ratio:.2f}×",
                "verdict": f"**{verdict(ratio <= 1.0)}**",
            }
            for cell, _ in PAIRS
            for ratio in [measured[GOAL_HIDDEN][cell] / measured[GOAL_HIDDEN][f"{cell}_full"]]
        ]
        lines += ["", markdown_table(targets).rstrip("\n")]
    lines += ["", markdown_table(table).rstrip("\n")]
    text = "\n".join(lines) + "\n"
    return publish(args.out, text)


if __name__ == "__main__":
    sys.exit(main())
