"""``gru-research``: the command line.

    gru-research designs [--input-size I] [--hidden-size H]   every preset, its paper, its size
    gru-research train --task TASK --cell DESIGN --seeds S --steps N ... --out DIR
    gru-research sweep FILE --out DIR [--jobs N] [--executor slurm --wait] | --export-wandb OUT.yaml
    gru-research table DIR [--metric loss] [--reference gru]
    gru-research bench [--configs small,medium,long] [--rounds 7] [--out FILE]
    gru-research gradflow --cell gru,lstm --task copy --seq-len 100 [--checkpoint RUN]
    gru-research claims experiments/textbook_claims.yaml [--out results/textbook_claims]

Bad input ends with one line on stderr naming the valid choices (or the domain of a number)
and a non-zero exit, before any work starts.
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

from gru_research.config import VMAPPABLE, TrainConfig, check_values, parse_vmap, value_grid
from gru_research.tracking import WANDB_MODES, check_output_folder, write_atomic

if typing.TYPE_CHECKING:
    from gru_research.executors import Execution

# Only light modules are imported here, so that `--help` and bad options answer at once; JAX,
# Flax and the models are imported by the command that runs.


def designs_table(input_size: int, hidden_size: int) -> str:
    """A markdown table of every preset: family, the scans that run it, one layer's parameters,
    paper."""
    from gru_research.gates import PRESETS
    from gru_research.model import design_param_count

    rows = [
        f"| design | family | scans | params (I={input_size}, H={hidden_size}) | paper |",
        "|---|---|---|---:|---|",
    ]
    for name, design in PRESETS.items():
        count = design_param_count(design, input_size, hidden_size)
        parallel = f", parallel ({design.parallel_scan} space)" if design.parallel_scan else ""
        scans = "sequential" + parallel
        rows.append(f"| {name} | {design.family} | {scans} | {count:,} | {design.paper} |")
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


def jobs_option(text: str) -> int | str:
    """`--jobs`: a positive integer, or auto."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"must be a positive integer or auto, got {text!r}"
        ) from None


def executor_option(text: str) -> str:
    """`--executor`: local or slurm (and submitit's local executor, for tests, unlisted)."""
    from gru_research.executors import EXECUTORS, SUBMITIT_LOCAL

    if text not in (*EXECUTORS, SUBMITIT_LOCAL):
        raise argparse.ArgumentTypeError(
            f"invalid choice {text!r} (choose from {', '.join(EXECUTORS)})"
        )
    return text


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


SWEEP_EPILOG = """How the points run (with --out): --executor local (the default) trains
--jobs points at once, each in a worker process (`gru-research train`) pinned by CPU affinity
to --threads-per-point CPUs of its own; --jobs auto (the default) runs workers of 2 CPUs each,
min(points left, CPUs // 2) at once, and trains in this process below 4 CPUs; --jobs 1 without
--threads-per-point trains in this process, one point after another. If a
point fails, no further point starts; the running ones finish, then the sweep fails in one
line naming the point (its worker's log: OUT/logs/). --executor slurm submits each point as a
SLURM job through submitit (logs in OUT/submitit/); --wait polls until every job has ended and
writes the report; without it the job ids are printed, and rerunning the same command skips
finished points, counts running or queued ones as in progress, and writes the report once all
are done. Each launch is a line of RUN/launches.jsonl. With --export-wandb nothing runs here
(wandb agents run the points), so these options are refused with it."""


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
    sweep = commands.add_parser(
        "sweep",
        help="run a W&B sweep file here, on a SLURM cluster, or export it",
        epilog=SWEEP_EPILOG,
    )
    sweep.add_argument("file")
    target = sweep.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="folder of the sweep's run folders (rerun to resume)")
    target.add_argument("--export-wandb", metavar="OUT_YAML", help="write the `wandb sweep` file")
    sweep.add_argument("--wandb", choices=WANDB_MODES, default="offline")
    sweep.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the report of the points finished so far, naming the rest",
    )
    sweep.add_argument(
        "--data-dir", default=None, help="the data root of every point (default: GRU_RESEARCH_DATA)"
    )
    sweep.add_argument(
        "--executor",
        type=executor_option,
        default=None,
        help="local (worker processes here) or slurm (a job per point); default: local",
    )
    sweep.add_argument(
        "--jobs",
        type=jobs_option,
        default=None,
        metavar="N",
        help="local: points at once, a positive integer or auto (default: auto, workers of 2 "
        "CPUs each; in this process below 4 CPUs); 1 without --threads-per-point: in this process",
    )
    sweep.add_argument(
        "--threads-per-point",
        type=positive_int,
        default=None,
        metavar="K",
        help="local: CPUs (so XLA threads) of each worker, by CPU affinity (default: CPUs // N)",
    )
    slurm = sweep.add_argument_group("SLURM (--executor slurm, through submitit)")
    slurm.add_argument("--slurm-partition", metavar="NAME", default=None)
    slurm.add_argument(
        "--slurm-time-min",
        type=positive_int,
        metavar="MIN",
        default=None,
        help="each job's time limit (default: 60)",
    )
    slurm.add_argument("--slurm-cpus-per-task", type=positive_int, metavar="N", default=None)
    slurm.add_argument(
        "--slurm-gpus-per-node", type=non_negative_int, metavar="N", default=None, help="default: 0"
    )
    slurm.add_argument("--slurm-mem-gb", type=positive_float, metavar="GB", default=None)
    slurm.add_argument(
        "--wait", action="store_true", help="poll until every job has ended, then write the report"
    )
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
    gradflow.add_argument(
        "--layer", type=int, default=0, help="with --checkpoint: which layer (0: the first)"
    )
    gradflow.add_argument("--out", default="results/gradflow", help="CSV, plot and rates here")
    bench = commands.add_parser("bench", help="training-step throughput against Flax and PyTorch")
    bench.add_argument(
        "--configs",
        default="small,medium,long",
        help="comma-separated: small, medium, long, and the papers' copy, adding",
    )
    bench.add_argument("--rounds", type=positive_int, default=7)
    bench.add_argument("--out", default=None, help="also write the table to this file")
    return parser


def run_gradflow(args: argparse.Namespace) -> None:
    """Curves at initialisation (``--cell``) or of trained run folders (``--checkpoint``)."""
    import jax

    from gru_research import gradflow
    from gru_research.config import load_run_config

    key = jax.random.key(1234)
    if args.checkpoint:
        runs = args.checkpoint.split(",")
        curves = {
            f"{load_run_config(run).cell} (trained, {Path(run).name})": gradflow.run_curves(
                run, args.batch_size, key, args.layer
            )
            for run in runs
        }
        config = load_run_config(runs[-1])
        label = f"{config.task}, T = {config.seq_len}, trained, layer {args.layer}"
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
    """Time the chosen configurations against the anchors; print one markdown table (and one
    for the papers' regimes, with the roofline)."""
    from gru_research import bench
    from gru_research.reporting import markdown_table

    configs, regimes = bench.split_configs(args.configs)
    tables = []
    if configs:
        timings = [t for cfg in configs for t in bench.compare(cfg, args.rounds)]
        tables.append(markdown_table(bench.timing_records(timings)))
    if regimes:
        timings = [t for r in regimes for t in bench.compare_regime(r, args.rounds)]
        tables.append(markdown_table(bench.regime_records(timings)))
    text = "\n".join(tables)
    if args.out:
        write_atomic(Path(args.out), text)
    print(text, end="")


LOCAL_OPTIONS = ("jobs", "threads_per_point")
SLURM_OPTIONS = (
    "wait",
    "slurm_partition",
    "slurm_time_min",
    "slurm_cpus_per_task",
    "slurm_gpus_per_node",
    "slurm_mem_gb",
)


def given_options(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The options among ``names`` given on the command line, spelt as flags."""
    return ["--" + n.replace("_", "-") for n in names if _given(getattr(args, n))]


def _given(value) -> bool:
    return value is not None and value is not False  # 0 is a value given


def sweep_execution(args: argparse.Namespace) -> Execution:
    """How `sweep` runs its points; one line for options that do not go together."""
    from gru_research.executors import Execution, SlurmOptions, auto_jobs, available_cpus

    if args.export_wandb and (
        given := given_options(args, ("executor", *LOCAL_OPTIONS, *SLURM_OPTIONS))
    ):
        raise ValueError(
            f"{', '.join(given)}: with --export-wandb nothing runs here (wandb agents run the "
            "points); give --out to run them"
        )
    if args.report_only and (
        given := given_options(args, ("export_wandb", "executor", *LOCAL_OPTIONS, *SLURM_OPTIONS))
    ):
        raise ValueError(f"{', '.join(given)}: with --report-only nothing is trained or exported")
    executor = args.executor or "local"
    if executor == "local" and (given := given_options(args, SLURM_OPTIONS)):
        raise ValueError(f"{', '.join(given)}: only with --executor slurm")
    if executor != "local" and (given := given_options(args, LOCAL_OPTIONS)):
        raise ValueError(
            f"{', '.join(given)}: only with --executor local (each SLURM job trains one point;"
            " size it with --slurm-cpus-per-task)"
        )
    slurm = SlurmOptions(
        partition=args.slurm_partition,
        time_min=args.slurm_time_min or 60,
        cpus_per_task=args.slurm_cpus_per_task,
        gpus_per_node=args.slurm_gpus_per_node or 0,
        mem_gb=args.slurm_mem_gb,
    )
    jobs, threads = args.jobs, args.threads_per_point
    if jobs in (None, "auto"):
        jobs, threads = auto_jobs(len(available_cpus()), threads)
    return Execution(executor, jobs, threads, slurm, args.wait)


def sweep_command(args: argparse.Namespace) -> str:
    """The sweep's command line, for the report: the file, --out and the options given."""
    words = ["gru-research", "sweep", args.file, "--out", args.out]
    words += ["--report-only"] if args.report_only else []
    for name in ("executor", *LOCAL_OPTIONS, *SLURM_OPTIONS, "data_dir"):
        value = getattr(args, name)
        if _given(value):
            words += ["--" + name.replace("_", "-")] + ([] if value is True else [str(value)])
    return " ".join(words)


def run_sweep_command(args: argparse.Namespace) -> None:
    from gru_research.report import write_report
    from gru_research.sweep import export_wandb, load_sweep, train_sweep, unfinished_points

    execution = sweep_execution(args)
    if args.export_wandb:
        check_output_folder(Path(args.export_wandb).parent)
        export_wandb(args.file, args.export_wandb)
        print(f"wrote {args.export_wandb}: `wandb sweep {args.export_wandb}`, then `wandb agent`")
        return
    check_output_folder(args.out)
    start = time.perf_counter()
    if args.report_only:
        report = write_report(
            args.out,
            load_sweep(args.file),
            command=sweep_command(args),
            wall_time_s=None,
            points_run="none in this invocation (--report-only)",
            unfinished=unfinished_points(args.file, args.out, args.data_dir),
        )
        print(f"report, tables and plots: {report.parent}/")
        return
    outcome = train_sweep(
        args.file,
        args.out,
        wandb_mode=args.wandb,
        progress=lambda line: print(line, flush=True),
        data_dir=args.data_dir,
        execution=execution,
    )
    if outcome.pending and execution.executor != "local":
        print(
            f"{outcome.pending} point(s) queued or running; rerun this command to collect them"
            " (the report is written once every point is done)"
        )
        return
    report = write_report(
        args.out,
        load_sweep(args.file),
        command=sweep_command(args),
        wall_time_s=time.perf_counter() - start,
        points_run=outcome.how,
    )
    print(report.read_text().split("## Final test", 1)[1].split("\n## ", 1)[0].strip())
    print(f"\nreport, tables and plots: {report.parent}/")


def make_tables(
    root: str, metric: str | None = None, reference: str | None = None, rows: str | None = None
) -> str:
    """Write the tables and plots of a folder of runs (a sweep's, if it holds sweep.yaml)."""
    from gru_research.sweep import load_sweep, per_cell_keys
    from gru_research.tables import Tuning, to_markdown, write_table

    sweep_file = Path(root) / "sweep.yaml"
    sweep = load_sweep(sweep_file) if sweep_file.exists() else {}
    report = sweep.get("report", {})
    paper = report.get("paper", [])
    row_keys = tuple((rows or report.get("rows", "cell")).split(","))
    metrics = [metric] if metric else report.get("metrics", ["loss"])
    tuning = Tuning(**report["tune"]) if report.get("tune") else None
    texts = []
    for name in metrics:
        table = write_table(
            root,
            name,
            reference=reference or report.get("reference"),
            row_keys=row_keys,
            paper=paper,
            tuning=tuning,
            row_settings=per_cell_keys(sweep),
        )
        texts.append(to_markdown(table))
    return "\n".join(texts)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, its help and choices read from the field:
    `--batch-size 8`, `--batch-size=8`, `--batch_size=8`."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kind = hints[field.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        flag = {"nargs": "?", "const": True} if base is bool else {}
        base = parse_bool if base is bool else base
        spellings = dict.fromkeys(["--" + field.name.replace("_", "-"), "--" + field.name])
        parser.add_argument(
            *spellings,  # --batch-size and --batch_size (what a W&B sweep agent passes)
            dest=field.name,
            type=base,
            default=field.default,
            choices=field.metadata.get("choices"),
            help=f"{field.metadata['help']} (default: {field.default})",
            **flag,
        )
    parser.add_argument(
        "--out", help="the run folder (rerun to resume); under `wandb agent`: runs/<run id>"
    )
    parser.add_argument(
        "--vmap",
        action="append",
        default=[],
        metavar="FIELD=V1,V2,...",
        help=f"train these values of a field in the same program as the seeds, each into "
        f"OUT/values/FIELD=V (repeat for a grid over several fields; vmappable: "
        f"{', '.join(VMAPPABLE)})",
    )
    parser.add_argument("--wandb", choices=WANDB_MODES, default="offline")
    parser.add_argument("--wandb-project", default="gru-research")
    parser.add_argument("--wandb-group", default=None, help="default: TASK-T<seq_len>")


def run_train(args: argparse.Namespace) -> None:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**values)  # every option against its domain (clipping at 0: off)
    out = args.out
    if out is None and os.environ.get("WANDB_RUN_ID"):
        out = f"runs/{os.environ.get('WANDB_SWEEP_ID', 'sweep')}/{os.environ['WANDB_RUN_ID']}"
    if out is None:
        raise ValueError("--out is required: the run folder to write (or resume)")
    grid = check_values(config, value_grid(parse_vmap(args.vmap)))
    check_output_folder(out)
    from gru_research.train import train_group

    summaries = train_group(
        config,
        grid,
        out,
        wandb_mode=args.wandb,
        wandb_project=args.wandb_project,
        wandb_group=args.wandb_group,
    )
    for value, summary in zip(grid or [{}], summaries, strict=True):
        shown = {k: summary[k] for k in ("task", "cell", "seeds", "final", "diverged")}
        print(json.dumps(value | shown))


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
