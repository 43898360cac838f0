"""Sweep points in worker processes (--jobs) and through submitit (SLURM, its local executor):
the numbers of one point after another, a kill that leaves no worker and resumes to the same
tables, a failed point named in one line, the SLURM options reaching sbatch, and bad options
refused before anything is written."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import yaml
from small_runs import small_run, sweep_parameters

from gru_research import cli
from gru_research.config import TrainConfig
from gru_research.executors import (
    Execution,
    SlurmOptions,
    available_cpus,
    job_error_line,
    plan_workers,
    train_arguments,
)

TINY = sweep_parameters(small_run(task="copy", seq_len=5, steps=20, log_every=10, eval_batches=1))
CELLS = ["gru", "min_gru"]
TIMEOUT_S = 600
two_cpus = pytest.mark.skipif(len(available_cpus()) < 2, reason="two workers need two CPUs")


def write_sweep(path: Path, cells: list[str] = CELLS) -> Path:
    sweep = {"method": "grid", "seeds": 2, "parameters": {**TINY, "cell": {"values": cells}}}
    path.write_text(yaml.safe_dump(sweep))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """This environment for a CLI process, less this process's wandb service."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "WANDB_MODE")}
    return {**env, **extra}


def sweep_command(sweep: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "gru_research.cli", "sweep", str(sweep), "--out", str(out)] + [
        "--wandb",
        "disabled",
        *options,
    ]


def run_sweep_cli(sweep: Path, out: Path, *options: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", cli_env())
    return subprocess.run(
        sweep_command(sweep, out, *options),
        cwd=sweep.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        **kwargs,
    )


def numbers(out: Path) -> dict[str, tuple[list[dict], dict]]:
    """Each point's metrics.jsonl records and final test metrics."""
    runs = {}
    for run in sorted((out / "runs").iterdir()):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        runs[run.name] = (records, json.loads((run / "summary.json").read_text())["final"])
    return runs


def table_section(out: Path) -> str:
    """The report from its first table on (the provenance above it says when and how)."""
    text = (out / "report.md").read_text()
    assert "## Final test loss" in text, text
    return text[text.index("## Final test loss") :]


def launches(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "launches.jsonl").read_text().splitlines()]


def pinned_to_first_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def processes_mentioning(text: str) -> list[int]:
    """The live processes whose command line holds ``text`` (a zombie's is empty)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory) -> Path:
    """The sweep trained by one worker at a time on one CPU: the numbers to match."""
    folder = tmp_path_factory.mktemp("one")
    result = run_sweep_cli(
        write_sweep(folder / "s.yaml"), folder / "out", "--jobs", "1", "--threads-per-point", "1"
    )
    assert result.returncode == 0, result.stderr
    return folder / "out"


# ---------------------------------------------------------------------------------------------
# the pieces


def test_a_points_train_options_read_back_to_the_same_config():
    config = TrainConfig(
        task="lm",
        cell="lstm",
        seeds=3,
        steps=40,
        seq_len=12,
        stateful=True,
        remat=True,
        lr=3e-4,
        clip_norm=0,  # off: None, written as 0
        clip_value=0.5,
        gate_bias=-1.0,
        recurrent_init="identity",
        data_dir="some/root",
        data_checks=False,
    )
    args = cli.build_parser().parse_args(["train", *train_arguments(config)])
    read = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    assert read == config  # as `gru-research train` builds it
    assert "--clip_norm=0" in train_arguments(config) and "--stateful=true" in train_arguments(
        config
    )


def test_workers_get_cpus_of_their_own_and_auto_fits_the_points_left():
    cpus = (0, 1, 2, 3, 4, 5, 6, 7)
    plan = plan_workers(Execution(jobs=None), points_left=3, cpus=cpus)
    assert (plan.jobs, plan.threads_per_point) == (3, 2)
    groups = plan.groups()
    assert groups == [(0, 1), (2, 3), (4, 5)]
    assert plan.describe() == "3 worker processes at a time, 2 CPUs each (CPU affinity)"
    plan = plan_workers(Execution(jobs=None), points_left=20, cpus=cpus)
    assert (plan.jobs, plan.threads_per_point) == (8, 1)
    plan = plan_workers(Execution(jobs=None, threads_per_point=3), points_left=20, cpus=cpus)
    assert (plan.jobs, plan.threads_per_point) == (2, 3)
    assert plan_workers(Execution(jobs=None), points_left=0, cpus=cpus).jobs == 1
    with pytest.raises(ValueError, match="--jobs 3 x --threads-per-point 3 needs 9 CPUs"):
        plan_workers(Execution(jobs=3, threads_per_point=3), points_left=5, cpus=cpus)


def test_execution_options_out_of_their_domain_are_one_line():
    for kwargs, words in [
        ({"jobs": 0}, "jobs must be a positive integer or auto, got 0"),
        ({"threads_per_point": 0}, "threads_per_point must be a positive integer"),
        ({"executor": "pbs"}, "unknown executor 'pbs'; valid executors: local, slurm"),
    ]:
        with pytest.raises(ValueError, match=words):
            Execution(**kwargs)
    with pytest.raises(ValueError, match="slurm_time_min must be a positive integer"):
        SlurmOptions(time_min=0)
    options = SlurmOptions(partition="gpu", time_min=90, cpus_per_task=4, gpus_per_node=1)
    assert options.describe() == "partition gpu, 90 min, 4 CPUs, 1 GPU"
    assert options.parameters() == {
        "timeout_min": 90,
        "slurm_partition": "gpu",
        "cpus_per_task": 4,
        "gpus_per_node": 1,
    }


SUBMITIT_FAILURE = """Job (task=0) failed during processing with trace:
----------------------
Traceback (most recent call last):
  File "submitit/core/utils.py", line 359, in __call__
    raise FailedJobError(stderr) from subprocess_error
submitit.core.utils.FailedJobError: a warning first
gru-research: error: runs/x/config.json is not valid JSON

----------------------
You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:
  - f/24620_0_log.err"""


def test_a_failed_jobs_error_is_its_commands_last_stderr_line():
    assert job_error_line(SUBMITIT_FAILURE) == (
        "gru-research: error: runs/x/config.json is not valid JSON"
    )
    assert job_error_line("Job 12 has not produced any output (state: TIMEOUT)") == (
        "Job 12 has not produced any output (state: TIMEOUT)"
    )


@pytest.mark.parametrize(
    "options, words",
    [
        (["--jobs", "0"], "argument --jobs: must be a positive integer or auto, got '0'"),
        (["--jobs", "-1"], "argument --jobs: must be a positive integer or auto, got '-1'"),
        (["--jobs", "two"], "argument --jobs: must be a positive integer or auto"),
        (["--threads-per-point", "0"], "argument --threads-per-point: must be a positive integer"),
        (["--executor", "bogus"], "invalid choice 'bogus' (choose from local, slurm)"),
        (["--wait"], "--wait: only with --executor slurm"),
        (["--slurm-partition", "p"], "--slurm-partition: only with --executor slurm"),
        (["--executor", "slurm", "--jobs", "2"], "--jobs: only with --executor local"),
        (["--jobs", "1", "--threads-per-point", "999"], "needs 999 CPUs, but this process may"),
    ],
)
def test_bad_execution_options_are_one_line_and_leave_no_folder(tmp_path, capsys, options, words):
    sweep = write_sweep(tmp_path / "s.yaml")
    out = tmp_path / "new" / "out"
    try:
        code = cli.main(["sweep", str(sweep), "--out", str(out), "--wandb", "disabled", *options])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_the_data_is_read_before_any_worker_starts(tmp_path, capsys):
    sweep = tmp_path / "lm.yaml"
    parameters = {**TINY, "task": {"value": "lm"}, "cell": {"values": CELLS}}
    parameters["text_file"] = {"value": str(tmp_path / "missing.txt")}
    sweep.write_text(yaml.safe_dump({"method": "grid", "parameters": parameters}))
    out = tmp_path / "out"
    workers = ["--jobs", "1", "--threads-per-point", "1"]  # a worker process, on any machine
    code = cli.main(["sweep", str(sweep), "--out", str(out), "--wandb", "disabled", *workers])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [
        f"gru-research: error: lm text file not found: {tmp_path}/missing.txt"
    ]
    assert not out.exists()  # no worker started, no folder made


def test_execution_options_with_export_wandb_are_refused(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml")
    target = tmp_path / "wandb_sweep.yaml"
    code = cli.main(["sweep", str(sweep), "--export-wandb", str(target), "--jobs", "2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--jobs: with --export-wandb" in lines[0], lines
    assert not target.exists()
    assert cli.main(["sweep", str(sweep), "--export-wandb", str(target)]) == 0
    assert target.exists()


# ---------------------------------------------------------------------------------------------
# local workers


@pytest.mark.slow
@two_cpus
def test_two_workers_give_the_numbers_of_one_point_after_another(tmp_path, one_at_a_time):
    result = run_sweep_cli(
        write_sweep(tmp_path / "s.yaml"),
        tmp_path / "out",
        "--jobs",
        "2",
        "--threads-per-point",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert numbers(tmp_path / "out") == numbers(one_at_a_time)
    assert table_section(tmp_path / "out") == table_section(one_at_a_time)
    cpus = [launches(tmp_path / "out" / "runs" / f"cell={c}")[0]["cpus"] for c in CELLS]
    assert len(cpus[0]) == len(cpus[1]) == 1 and cpus[0] != cpus[1], cpus  # one each, disjoint
    report = (tmp_path / "out" / "report.md").read_text()
    assert "points run: 2 worker processes at a time, 1 CPU each (CPU affinity)" in report
    assert (
        "points run: 1 worker process at a time, 1 CPU each"
        in (one_at_a_time / "report.md").read_text()
    )
    for config in (tmp_path / "out" / "runs").glob("*/config.json"):  # provenance only
        assert "cpus" not in json.loads(config.read_text())["run"]


@pytest.mark.slow
@two_cpus
def test_a_killed_sweep_leaves_no_worker_and_resumes_to_the_same_tables(tmp_path, one_at_a_time):
    sweep, out = write_sweep(tmp_path / "s.yaml"), tmp_path / "out"
    options = ("--jobs", "2", "--threads-per-point", "1")
    with open(tmp_path / "first.log", "w") as log:
        parent = subprocess.Popen(
            sweep_command(sweep, out, *options),
            cwd=tmp_path,
            env=cli_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell gives a job
        )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not list(out.glob("runs/*/checksums.json")):  # a first checkpoint, verified
            assert parent.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.1)
        workers = [pid for pid in processes_mentioning(str(out / "runs")) if pid != parent.pid]
        assert workers, "no worker process seen"
        os.killpg(parent.pid, signal.SIGKILL)  # the sweep's whole group; the workers have their own
        parent.wait()
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    deadline = time.monotonic() + 30
    while (left := processes_mentioning(str(out / "runs"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"workers outlived the sweep: {left}"
    assert not all((out / "runs" / f"cell={c}" / "summary.json").exists() for c in CELLS)

    result = run_sweep_cli(sweep, out, *options)
    assert result.returncode == 0, result.stderr
    assert table_section(out) == table_section(one_at_a_time)
    assert numbers(out) == numbers(one_at_a_time)


@pytest.mark.slow
@two_cpus
def test_a_failed_point_is_one_line_once_the_running_ones_finish(tmp_path):
    sweep, out = write_sweep(tmp_path / "s.yaml", ["gru", "min_gru", "mgu"]), tmp_path / "out"
    broken = out / "runs" / "cell=gru"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")  # the worker refuses it, in one line
    result = run_sweep_cli(sweep, out, "--jobs", "2")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("gru-research: error: sweep point [1/3] cell=gru failed (exit 2): ")
    assert "config.json is not valid JSON" in lines[0] and "1 not started" in lines[0]
    assert (out / "runs" / "cell=min_gru" / "summary.json").exists()  # the running one finished
    assert not (out / "runs" / "cell=mgu").exists()  # and no further point started
    assert "[1/3] cell=gru: failed (exit 2)" in result.stdout
    assert not (out / "report.md").exists()


# ---------------------------------------------------------------------------------------------
# submitit


@pytest.mark.slow
def test_submitits_local_executor_runs_the_sweep_to_the_numbers_of_one_worker(
    tmp_path, one_at_a_time
):
    sweep, out = write_sweep(tmp_path / "s.yaml"), tmp_path / "out"
    result = run_sweep_cli(
        sweep, out, "--executor", "submitit-local", "--wait", preexec_fn=pinned_to_first_cpu
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("submitted as job") == 2, result.stdout
    assert numbers(out) == numbers(one_at_a_time)
    assert table_section(out) == table_section(one_at_a_time)
    report = (out / "report.md").read_text()
    assert "points run: submitted through submitit's local executor (60 min)" in report
    jobs = json.loads((out / "submitit" / "jobs.json").read_text())
    assert sorted(jobs) == [f"cell={c}" for c in CELLS]
    assert launches(out / "runs" / "cell=gru")[0]["job_id"] == jobs["cell=gru"]


def fake_slurm(bin_dir: Path, record: Path, sacct_state: str) -> None:
    """sbatch that records its arguments and batch file and answers a job id; srun that is
    there; sacct that says every job is in ``sacct_state``."""
    bin_dir.mkdir(exist_ok=True)
    record.mkdir(exist_ok=True)
    scripts = {
        "sbatch": f"""#!/bin/sh
n=$(( $(cat {record}/count 2>/dev/null || echo 1000) + 1 ))
echo $n > {record}/count
echo "$@" >> {record}/args
cp "$1" {record}/batch-$n.sh
echo "Submitted batch job $n"
""",
        "srun": "#!/bin/sh\nexit 1\n",
        "sacct": f"""#!/bin/sh
echo "JobID|State|NodeList"
for id in $(seq 1001 $(cat {record}/count)); do echo "$id|{sacct_state}|"; done
""",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)


def test_slurm_options_reach_sbatch_and_a_rerun_leaves_queued_jobs_alone(tmp_path):
    sweep, out, record = write_sweep(tmp_path / "s.yaml"), tmp_path / "out", tmp_path / "record"
    fake_slurm(tmp_path / "bin", record, "PENDING")
    env = cli_env(PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    options = ["--executor", "slurm", "--slurm-partition", "debugq", "--slurm-time-min", "17"]
    options += ["--slurm-cpus-per-task", "3", "--slurm-gpus-per-node", "1", "--slurm-mem-gb", "2"]
    result = run_sweep_cli(sweep, out, *options, env=env)
    assert result.returncode == 0, result.stderr
    assert "[1/2] cell=gru: submitted as job 1001" in result.stdout
    assert "[2/2] cell=min_gru: submitted as job 1002" in result.stdout
    assert "2 point(s) queued or running" in result.stdout and not (out / "report.md").exists()
    batch = (record / "batch-1001.sh").read_text()
    for line in ("--partition=debugq", "--time=17", "--cpus-per-task=3", "--gpus-per-node=1"):
        assert f"#SBATCH {line}\n" in batch, batch
    assert "#SBATCH --mem=2GB" in batch and "#SBATCH --job-name=cell=gru" in batch, batch
    submitted = cloudpickle.loads((out / "submitit" / "1001_submitted.pkl").read_bytes())
    command = submitted.function.command
    assert command[1:6] == ["-m", "gru_research.cli", "train", "--out", str(out / "runs/cell=gru")]
    assert "--cell=gru" in command and "--steps=20" in command and "--seeds=2" in command
    assert command[-4:] == ["--wandb", "disabled", "--wandb-group", "s"]
    assert launches(out / "runs" / "cell=gru")[0]["job_id"] == "1001"

    again = run_sweep_cli(sweep, out, *options, env=env)  # sacct: both still pending
    assert again.returncode == 0, again.stderr
    assert "[1/2] cell=gru: job 1001 is pending" in again.stdout, again.stdout
    assert (record / "count").read_text().strip() == "1002"  # nothing submitted twice


def test_jobs_auto_runs_two_cpu_workers_or_in_process_below_four_cpus():
    from gru_research.executors import Execution, auto_jobs

    assert auto_jobs(2, None) == (1, None) and Execution("local", *auto_jobs(2, None)).in_process
    assert auto_jobs(3, None) == (1, None)
    assert auto_jobs(8, None) == (None, 2)  # plan_workers: min(points left, 8 // 2) workers
    assert auto_jobs(8, 1) == (None, 1)
