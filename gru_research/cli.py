"""``gru-research``: the command line.

    gru-research designs [--input-size I] [--hidden-size H]   every preset, its paper, its size
    gru-research quick                                        the main job on its embedded default
    gru-research train --task TASK --cell DESIGN --seeds S --steps N ... --out DIR

Bad input ends with one line on stderr naming the valid choices and a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import typing

import jax
import jax.numpy as jnp

from gru_research.gates import PRESETS
from gru_research.model import ModelConfig, apply_model, design_param_count, init_model
from gru_research.scan import SCAN_KINDS
from gru_research.tasks import TASKS
from gru_research.tracking import WANDB_MODES
from gru_research.train import OPTIMIZERS, SCHEDULES, TrainConfig, train

TRAIN_HELP = {
    "task": "the task",
    "cell": "the gate design (see `gru-research designs`)",
    "seed": "first seed; seeds SEED .. SEED+SEEDS-1 train at once, vmapped",
    "seeds": "how many seeds",
    "seq_len": "copy/adding: T; selective_copy: L; lm: window length",
    "num_tokens": "selective_copy: tokens to recall (K)",
    "hidden": "hidden size",
    "layers": "recurrent layers",
    "block": "plain stack or the residual block of Feng et al. (2024)",
    "scan": "auto picks the parallel scan only off the CPU",
    "optimizer": "rmsprop is the Arjovsky et al. (2016) protocol (pair with --clip-value 1)",
    "clip_norm": "global-norm clipping (0: off)",
    "clip_value": "element-wise clipping (0: off)",
    "corpus": "lm: a TFDS text dataset (default: the shipped tiny_shakespeare, offline)",
    "text_file": "lm: a plain text file instead of TFDS",
    "tfds_data_dir": "lm: where TFDS prepares data",
    "tfds_manual_dir": "lm: the TFDS manual directory",
}
CHOICES = {
    "task": TASKS,
    "cell": tuple(PRESETS),
    "block": ("plain", "residual"),
    "scan": SCAN_KINDS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
}


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
    add_train_arguments(commands.add_parser("train", help="train S seeds of one design at once"))
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; ``--name value`` and ``--name=value`` both work."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kind = hints[field.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        if typing.get_origin(base) is typing.Literal or field.name in CHOICES:
            base = str
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            type=base,
            default=field.default,
            choices=CHOICES.get(field.name),
            help=f"{TRAIN_HELP.get(field.name, '')} (default: {field.default})".strip(),
        )
    parser.add_argument("--out", required=True, help="the run folder (rerun to resume)")
    parser.add_argument("--wandb", choices=WANDB_MODES, default="offline")
    parser.add_argument("--wandb-project", default="gru-research")
    parser.add_argument("--wandb-group", default=None, help="default: TASK-T<seq_len>")


def run_train(args: argparse.Namespace) -> None:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    for name in ("clip_norm", "clip_value"):
        values[name] = values[name] or None
    config = TrainConfig(**values)
    summary = train(
        config,
        args.out,
        wandb_mode=args.wandb,
        wandb_project=args.wandb_project,
        wandb_group=args.wandb_group,
    )
    print(json.dumps({k: summary[k] for k in ("task", "cell", "seeds", "final", "diverged")}))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("absl").setLevel(logging.CRITICAL)  # orbax's own error lines
    try:
        if args.command == "designs":
            print(designs_table(args.input_size, args.hidden_size))
        elif args.command == "quick":
            print(designs_table(64, 128))
            print()
            print(forward_and_gradient_check())
        elif args.command == "train":
            run_train(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"gru-research: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
