"""``gru-research``: the command line.

    gru-research designs [--input-size I] [--hidden-size H]   every preset, its paper, its size
    gru-research train --task TASK --cell DESIGN --seeds S --steps N ... --out DIR
    gru-research sweep FILE --out DIR | --export-wandb OUT.yaml
    gru-research table DIR [--metric loss] [--reference gru]
    gru-research bench [--configs small,medium,long] [--out results/benchmarks.md]
    gru-research gradflow --cell gru,lstm --task copy --seq-len 100 [--checkpoint RUN]
    gru-research claims experiments/textbook_claims.yaml [--out results/textbook_claims]

Bad input ends with one line on stderr naming the valid choices and a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import typing
from pathlib import Path

from gru_research.gates import PRESETS
from gru_research.model import PRECISIONS, design_param_count
from gru_research.report import write_report
from gru_research.scan import SCAN_KINDS
from gru_research.sweep import export_wandb, load_sweep, run_sweep
from gru_research.tables import to_markdown, write_table
from gru_research.tasks import TASKS
from gru_research.tracking import WANDB_MODES, write_atomic
from gru_research.train import (
    OPTIMIZERS,
    RECURRENT_INITS,
    SCHEDULES,
    TrainConfig,
    load_run_config,
    train,
)

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
    "data_dir": "lm with corpus ptb or ptb_char: the folder of Mikolov's ptb.*.txt files",
    "data_checks": "ptb: check the files' sizes and sha256 sums (--data-checks=false: off)",
    "param_budget": "size every design to the largest hidden size within this many parameters",
    "bidirectional": "a forward and a reversed layer, concatenated or summed",
    "dropout": "dropout on every layer's input and the output (Zaremba et al., 2014)",
    "recurrent_dropout": "variational dropout on h, one mask per sequence (Gal & Ghahramani, 2016)",
    "gate_bias": "constant bias of the gate that keeps the old state (LSTM f, GRU z)",
    "chrono_t_max": "chrono initialisation with this T_max (Tallec & Ollivier, 2018)",
    "recurrent_init": "recurrent kernels: orthogonal (the default), identity, lecun_normal",
    "learn_initial_state": "learn h_0 (and c_0)",
    "stateful": "lm: B contiguous streams, windows in order, the carry crossing windows (TBPTT)",
    "epochs": "stateful lm: train this many epochs (sets steps; evaluates every epoch)",
    "lr_decay": "epoch_decay schedule: the factor applied each epoch after lr_decay_after",
    "lr_decay_after": "epoch_decay schedule: epochs at the full learning rate",
    "init_scale": "every parameter from U[-a, a] (the PTB protocol of Zaremba et al., 2014)",
    "loss_sum_over_time": "train on the loss summed over the T steps (the PTB lr-1 convention)",
    "precision": "bfloat16: matmuls in bfloat16, accumulated in float32",
    "remat": "recompute each step's activations in the backward pass (long sequences)",
}
CHOICES = {
    "task": TASKS,
    "cell": tuple(PRESETS),
    "block": ("plain", "residual"),
    "scan": SCAN_KINDS,
    "optimizer": OPTIMIZERS,
    "schedule": SCHEDULES,
    "bidirectional": ("concat", "sum"),
    "recurrent_init": RECURRENT_INITS,
    "precision": PRECISIONS,
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
    return "\n".join(rows) + "\n\n" + DESIGN_OPTIONS


DESIGN_OPTIONS = """Design options (train/sweep options; gru_research.gates.GateDesign fields):
- --gate-bias B: constant bias of the gate that keeps the old state (LSTM f; GRU z), e.g. 0 or 1
- --chrono-t-max T: chrono initialisation (Tallec & Ollivier, 2018): that bias ~ log U[1, T-1],
  the LSTM input gate's its negative; where z writes the candidate (mgu, min_gru) z gets -log U
- --recurrent-init orthogonal | identity | lecun_normal: the recurrent kernels
- --learn-initial-state: a learned h_0 (and c_0) starts every sequence and every reset
- --bidirectional concat | sum, --dropout P, --recurrent-dropout P (variational)"""


def parse_bool(text: str) -> bool:
    """`--stateful`, `--stateful=true`, `--stateful=False` (as a W&B agent passes it)."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


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
    add_train_arguments(commands.add_parser("train", help="train S seeds of one design at once"))
    sweep = commands.add_parser("sweep", help="run a W&B sweep file locally, or export it")
    sweep.add_argument("file")
    target = sweep.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="folder of the sweep's run folders (rerun to resume)")
    target.add_argument("--export-wandb", metavar="OUT_YAML", help="write the `wandb sweep` file")
    sweep.add_argument("--wandb", choices=WANDB_MODES, default="offline")
    table = commands.add_parser("table", help="tables and plots from run folders")
    table.add_argument("dir")
    table.add_argument("--metric", default=None, help="a final test metric (default: the sweep's)")
    table.add_argument("--reference", default=None, help="design for the Welch t-test")
    table.add_argument("--rows", default="cell", help="comma-separated row parameters")
    claims = commands.add_parser(
        "claims", help="the five textbook claims about the GRU, tested (one report)"
    )
    claims.add_argument("file", help="experiments/textbook_claims.yaml")
    claims.add_argument("--out", default="results/textbook_claims")
    gradflow = commands.add_parser("gradflow", help="||dL_T / dh_t|| over t, per design")
    gradflow.add_argument("--cell", default="rnn_tanh,gru,gru_no_reset,lstm,min_gru")
    gradflow.add_argument("--task", choices=("copy", "adding", "lm"), default="copy")
    gradflow.add_argument("--seq-len", type=positive_int, default=100)
    gradflow.add_argument("--hidden", type=positive_int, default=64)
    gradflow.add_argument("--seeds", type=positive_int, default=4)
    gradflow.add_argument("--batch-size", type=positive_int, default=32)
    gradflow.add_argument(
        "--checkpoint", default=None, help="comma-separated run folders: their trained seeds"
    )
    gradflow.add_argument("--out", default="results/gradflow", help="CSV, plot and rates here")
    bench = commands.add_parser("bench", help="training-step throughput against Flax and PyTorch")
    bench.add_argument(
        "--configs", default="small,medium,long", help="comma-separated: small, medium, long"
    )
    bench.add_argument("--rounds", type=positive_int, default=7)
    bench.add_argument("--seeds", default="1,2,4,8,16", help="seed counts to vmap")
    bench.add_argument("--lengths", default=None, help="lengths of the T curve (64,256,1024,4096)")
    bench.add_argument("--out", default=None, help="markdown (default results/benchmarks.md)")
    bench.add_argument(
        "--feng-speed",
        action="store_true",
        help="only Feng et al.'s speed claim (default out: results/feng2024_speed/report.md)",
    )
    bench.add_argument("--batch", type=positive_int, default=64, help="--feng-speed: batch")
    return parser


def run_gradflow(args: argparse.Namespace) -> None:
    """Curves at initialisation (``--cell``) or of trained run folders (``--checkpoint``)."""
    import jax

    from gru_research import gradflow

    key = jax.random.key(1234)
    if args.checkpoint:
        runs = args.checkpoint.split(",")
        curves = gradflow.trained_curves(runs, args.batch_size, key)
        config = load_run_config(runs[-1])
        label = f"{config.task}, T = {config.seq_len}, trained"
    else:
        curves = gradflow.initial_curves(
            args.cell.split(","),
            args.task,
            args.seq_len,
            args.hidden,
            args.seeds,
            args.batch_size,
            key,
        )
        label = f"{args.task}, T = {args.seq_len}, at initialisation"
    rates = gradflow.write_curves(curves, args.out, label)
    lines = [f"gradient flow ({label}): decay rate of log ||dL_T/dh_t|| per step of distance"]
    lines += [f"  {design}: {rate:+.4f}" for design, rate in rates.items()]
    write_atomic(Path(args.out) / "rates.txt", "\n".join(lines) + "\n")
    print("\n".join(lines))


def run_bench(args: argparse.Namespace) -> None:
    from gru_research.bench import CONFIGS, FENG_LENGTHS, report, speed_claim, speed_claim_report

    if args.feng_speed:
        out = Path(args.out or "results/feng2024_speed/report.md")
        lengths = FENG_LENGTHS if args.lengths is None else _int_list("--lengths", args.lengths)
        command = (
            f"gru-research bench --feng-speed --lengths {','.join(map(str, lengths))} "
            f"--batch {args.batch} --rounds {args.rounds} --out {out}"
        )
        rows = speed_claim(lengths, args.batch, args.rounds)
        text = speed_claim_report(rows, args.batch, args.rounds, command)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text)
        print(text)
        return
    args.out = args.out or "results/benchmarks.md"
    args.lengths = args.lengths or "64,256,1024,4096"
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown bench configs {unknown}; valid: {', '.join(CONFIGS)}")
    command = (
        f"gru-research bench --configs {args.configs} --rounds {args.rounds} "
        f"--seeds {args.seeds} --lengths {args.lengths} --out {args.out}"
    )
    seeds, lengths = _int_list("--seeds", args.seeds), _int_list("--lengths", args.lengths)
    out = Path(args.out)
    text = report(names, args.rounds, seeds, lengths, command, out.with_suffix(".png"))
    write_atomic(out, text + f"\n![scaling]({out.with_suffix('.png').name})\n")
    print(text)


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{flag} takes comma-separated positive integers, got {text!r}")
    return values


def run_sweep_command(args: argparse.Namespace) -> None:
    if args.export_wandb:
        export_wandb(args.file, args.export_wandb)
        print(f"wrote {args.export_wandb}: `wandb sweep {args.export_wandb}`, then `wandb agent`")
        return
    start = time.perf_counter()
    run_sweep(
        args.file, args.out, wandb_mode=args.wandb, progress=lambda line: print(line, flush=True)
    )
    report = write_report(
        args.out,
        load_sweep(args.file),
        command=f"gru-research sweep {args.file} --out {args.out}",
        wall_time_s=time.perf_counter() - start,
    )
    print(report.read_text().split("## Final test", 1)[1].split("\n## ", 1)[0].strip())
    print(f"\nreport, tables and plots: {report.parent}/")


def make_tables(
    root: str, metric: str | None = None, reference: str | None = None, rows: str | None = None
) -> str:
    """Write the tables and plots of a folder of runs (a sweep's, if it holds sweep.yaml)."""
    sweep_file = Path(root) / "sweep.yaml"
    report = load_sweep(sweep_file).get("report", {}) if sweep_file.exists() else {}
    paper = report.get("paper", [])
    row_keys = tuple((rows or report.get("rows", "cell")).split(","))
    metrics = [metric] if metric else report.get("metrics", ["loss"])
    texts = []
    for name in metrics:
        table = write_table(
            root,
            name,
            reference=reference or report.get("reference"),
            row_keys=row_keys,
            paper=paper,
        )
        texts.append(to_markdown(table))
    return "\n".join(texts)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field: `--batch-size 8`, `--batch-size=8`, `--batch_size=8`."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kind = hints[field.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        if typing.get_origin(base) is typing.Literal or field.name in CHOICES:
            base = str
        flag = {"nargs": "?", "const": True} if base is bool else {}
        base = parse_bool if base is bool else base
        spellings = dict.fromkeys(["--" + field.name.replace("_", "-"), "--" + field.name])
        parser.add_argument(
            *spellings,  # --batch-size and --batch_size (what a W&B sweep agent passes)
            dest=field.name,
            type=base,
            default=field.default,
            choices=CHOICES.get(field.name),
            help=f"{TRAIN_HELP.get(field.name, '')} (default: {field.default})".strip(),
            **flag,
        )
    parser.add_argument(
        "--out", help="the run folder (rerun to resume); under `wandb agent`: runs/<run id>"
    )
    parser.add_argument("--wandb", choices=WANDB_MODES, default="offline")
    parser.add_argument("--wandb-project", default="gru-research")
    parser.add_argument("--wandb-group", default=None, help="default: TASK-T<seq_len>")


def run_train(args: argparse.Namespace) -> None:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    for name in ("clip_norm", "clip_value"):
        values[name] = values[name] or None
    config = TrainConfig(**values)
    out = args.out
    if out is None and os.environ.get("WANDB_RUN_ID"):
        out = f"runs/{os.environ.get('WANDB_SWEEP_ID', 'sweep')}/{os.environ['WANDB_RUN_ID']}"
    if out is None:
        raise ValueError("--out is required: the run folder to write (or resume)")
    summary = train(
        config,
        out,
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
        elif args.command == "train":
            run_train(args)
        elif args.command == "sweep":
            run_sweep_command(args)
        elif args.command == "bench":
            run_bench(args)
        elif args.command == "gradflow":
            run_gradflow(args)
        elif args.command == "claims":
            from gru_research.claims import run_claims

            command = f"gru-research claims {args.file} --out {args.out}"
            print(f"report: {run_claims(args.file, args.out, command=command)}")
        elif args.command == "table":
            print(make_tables(args.dir, args.metric, args.reference, args.rows))
    except (ValueError, FileNotFoundError) as err:
        print(f"gru-research: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
