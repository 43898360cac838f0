"""``gru-research``: the command line.

    gru-research designs [--input-size I] [--hidden-size H]   every preset, its paper, its size
    gru-research quick                                        the main job on its embedded default

Bad input ends with one line on stderr naming the valid choices and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

from gru_research.gates import PRESETS
from gru_research.model import ModelConfig, apply_model, design_param_count, init_model


def designs_table(input_size: int, hidden_size: int) -> str:
    """A markdown table of every preset: family, scan, parameters of one layer, paper."""
    rows = [
        f"| design | family | parallel scan | params (I={input_size}, H={hidden_size}) | paper |",
        "|---|---|---|---:|---|",
    ]
    for name, design in PRESETS.items():
        count = design_param_count(design, input_size, hidden_size)
        parallel = design.parallel_scan or "no"
        rows.append(f"| {name} | {design.family} | {parallel} | {count:,} | {design.paper} |")
    return "\n".join(rows)


def forward_and_gradient_check(seq_len: int = 64, batch: int = 8, hidden: int = 32) -> str:
    """One forward and gradient pass of every preset on a small token batch (2 layers)."""
    tokens = jax.random.randint(jax.random.key(0), (batch, seq_len + 1), 0, 16)
    rows = ["| design | loss | grad norm | seconds (incl. compile) |", "|---|---:|---:|---:|"]
    for name in PRESETS:
        config = ModelConfig(
            cell=name, vocab_size=16, hidden_size=hidden, output_size=16, num_layers=2
        )

        def loss(params, config=config):
            logits = apply_model(params, config, tokens[:, :-1])[0]
            log_probs = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1))

        start = time.perf_counter()
        value, grads = jax.jit(jax.value_and_grad(loss))(init_model(jax.random.key(1), config))
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
        seconds = time.perf_counter() - start
        rows.append(f"| {name} | {float(value):.4f} | {float(norm):.4f} | {seconds:.2f} |")
    return "\n".join(rows)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (and the valid choices)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="gru-research", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    designs = commands.add_parser("designs", help="list every gate-design preset")
    designs.add_argument("--input-size", type=positive_int, default=64)
    designs.add_argument("--hidden-size", type=positive_int, default=128)
    commands.add_parser("quick", help="the main job on its embedded default")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "designs":
            print(designs_table(args.input_size, args.hidden_size))
        elif args.command == "quick":
            print(designs_table(64, 128))
            print()
            print(forward_and_gradient_check())
    except (ValueError, FileNotFoundError) as err:
        print(f"gru-research: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
