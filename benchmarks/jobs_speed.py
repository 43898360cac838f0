"""The main job on every core: `gru-research sweep experiments/quick.yaml` with --jobs 1 and
--jobs 2, timed, into fresh folders; the report also checks that equal threads per point give
the same tables.

    python benchmarks/jobs_speed.py --out results/jobs_speed.md

``--jobs 1`` trains the points one after another in the sweep's own process (XLA's threads over
every core); ``--jobs 2`` trains two at once, each worker pinned to half the cores; ``--jobs 1
--threads-per-point 1`` trains one at a time in a worker pinned like those of ``--jobs 2``, so
that its tables (as the report prints them) must equal theirs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import OneLineParser

from gru_research.reporting import markdown_table, report_header, verdict
from gru_research.tracking import write_atomic

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.6


RUNS = {
    "--jobs 1 (in the sweep's process)": ["--jobs", "1"],
    "--jobs 2 (two workers, half the cores each)": ["--jobs", "2"],
    "--jobs 1 --threads-per-point 1 (one worker, as pinned as those of --jobs 2)": [
        "--jobs",
        "1",
        "--threads-per-point",
        "1",
    ],
}


def run_main_job(sweep: Path, out: Path, options: list[str]) -> float:
    """Wall seconds of one sweep invocation (W&B off: the job's own speed, not the tracker's)."""
    command = [sys.executable, "-m", "gru_research.cli", "sweep", str(sweep), "--out", str(out)]
    command += [*options, "--wandb", "disabled"]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def tables(report: Path) -> str:
    """The report's table sections: what must not depend on how the points ran."""
    text = report.read_text()
    return text[text.index("## Final test") :]


def ceiling_note(in_process_s: float, pinned_s: float, cpus: int) -> str:
    """What the pinned run says --jobs can reach: points on 1 CPU each, ``cpus`` at a time, at
    best ``cpus`` × (in-process time / one-CPU time) the speed of the in-process sweep."""
    slowdown = pinned_s / in_process_s
    return (
        f"Why: one worker on 1 CPU took {slowdown:.2f}× the in-process time for the same points "
        f"(XLA compiles and runs each point on every core it is given), so {cpus} such workers "
        f"at once can reach at most {cpus / slowdown:.2f}× the in-process sweep here."
    )


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="jobs_speed.py", description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", type=Path, default=ROOT / "experiments" / "quick.yaml")
    parser.add_argument("--out", type=Path, default=Path("results/jobs_speed.md"))
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    seconds, reports = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for i, (run, options) in enumerate(RUNS.items()):
            out = Path(folder) / f"run{i}"
            seconds[run] = run_main_job(args.sweep, out, options)
            reports[run] = tables(out / "report.md")
    in_process, two, pinned = RUNS
    speed_up = seconds[in_process] / seconds[two]
    same = reports[two] == reports[pinned]
    rows = [{"run": run, "wall s": s} for run, s in seconds.items()]
    target = {
        "target": "the main job with --jobs 2 over --jobs 1",
        "goal": f"≥ {GOAL:g}×",
        "measured": f"{speed_up:.2f}×",
        "verdict": f"**{verdict(speed_up >= GOAL)}**",
    }
    lines = report_header(
        "The main job on every core",
        __doc__.split("\n\n")[1].replace("\n", " "),
        f"python benchmarks/jobs_speed.py --sweep {args.sweep.relative_to(ROOT)} --out {args.out}",
        f"CPUs: {os.cpu_count()}; load average when it started: {load:.2f}",
    )
    lines += ["", markdown_table([target]).rstrip("\n"), "", markdown_table(rows).rstrip("\n")]
    equal = "identical" if same else "DIFFERENT"
    lines += ["", f"The tables of `--jobs 2` and of the pinned `--jobs 1` are {equal}."]
    lines += ["", ceiling_note(seconds[in_process], seconds[pinned], os.cpu_count() or 1)]
    text = "\n".join(lines) + "\n"
    write_atomic(args.out, text)
    print(text, end="")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
