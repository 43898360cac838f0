"""How a sweep's points are run: in worker processes on this machine's cores, or as jobs
submitted through submitit (to SLURM; submitit's local executor runs the same code in tests).

Every point is the same command whichever executor runs it, ``gru-research train --out RUN
--name=value ...`` with one option per field of its config, so a point trained by a worker, a
SLURM job or the sweep's own process is the same run. How it ran is provenance only, never part
of a run's identity: each launch adds a line to ``RUN/launches.jsonl`` (how, where, which CPUs
or job, the command), and the report says how the sweep's points were run.

Local workers: ``jobs`` points at once, worker k pinned by CPU affinity (set before the worker
imports JAX, so XLA sizes its thread pools to it) to its own ``threads_per_point`` CPUs. Each
worker is its own process group, gets SIGTERM when the sweep's process dies, and is stopped
when the sweep ends in an error or is interrupted. A point that fails starts no further points;
the running ones finish, then the sweep fails in one line naming the point and its worker's
last stderr line (its whole log is in ``OUT/logs/``).

SLURM: one job per point, submitted through ``submitit.helpers.CommandFunction``; with
``wait`` the sweep polls until every job has ended. Rerun the same command later: finished
points are skipped, locked ones and ones still queued are counted in progress, and the report
is written once every point is done.

This module imports no JAX.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gru_research.config import OFF_AT_ZERO, TrainConfig, value_grid, value_name
from gru_research.sweep import describe_group
from gru_research.tracking import WANDB_MODES, read_json, write_atomic

EXECUTORS = ("local", "slurm")
SUBMITIT_LOCAL = "submitit-local"
"""submitit's own LocalExecutor behind the SLURM code path: for tests, not listed in --help."""
IN_PROCESS = "in this process, one after another"
LAUNCHES = "launches.jsonl"
JOBS_FILE = "jobs.json"
POLL_S = 0.2
STOP_GRACE_S = 10.0
PR_SET_PDEATHSIG = 1
ACTIVE_SLURM_STATES = frozenset(
    "PENDING RUNNING REQUEUED REQUEUE_HOLD REQUEUE_FED CONFIGURING COMPLETING RESIZING "
    "SUSPENDED SIGNALING STAGE_OUT".split()
)
Progress = Callable[[str], None]


class PointFailed(ValueError):
    """A point's worker or job ended without a finished run."""


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("s" if n != 1 else "")


def _cpu_list(cpus: tuple[int, ...]) -> str:
    return "CPUs " + ",".join(map(str, cpus)) if len(cpus) < 9 else f"CPUs {cpus[0]}-{cpus[-1]}"


# ---------------------------------------------------------------------------------------------
# what to run, and how


@dataclass(frozen=True)
class SlurmOptions:
    """What each point's SLURM job asks for."""

    partition: str | None = None
    time_min: int = 60
    cpus_per_task: int | None = None
    gpus_per_node: int = 0
    mem_gb: float | None = None

    def __post_init__(self) -> None:
        checks = [
            ("slurm_time_min", self.time_min, False, "a positive integer"),
            ("slurm_cpus_per_task", self.cpus_per_task, True, "a positive integer"),
        ]
        for name, value, optional, words in checks:
            if not (value is None and optional) and not _positive_int(value):
                raise ValueError(f"{name} must be {words}, got {value!r}")
        if not (_positive_int(self.gpus_per_node) or self.gpus_per_node == 0):
            raise ValueError(
                f"slurm_gpus_per_node must be an integer >= 0, got {self.gpus_per_node!r}"
            )
        mem = self.mem_gb
        if mem is not None and (
            isinstance(mem, bool) or not isinstance(mem, int | float) or mem <= 0
        ):
            raise ValueError(f"slurm_mem_gb must be a number > 0, got {mem!r}")

    def parameters(self) -> dict[str, Any]:
        """submitit's parameters (None: the cluster's default)."""
        values = {
            "timeout_min": self.time_min,  # submitit's own default (5 min) is far too short
            "slurm_partition": self.partition,
            "cpus_per_task": self.cpus_per_task,
            "gpus_per_node": self.gpus_per_node,
            "mem_gb": self.mem_gb,
        }
        return {k: v for k, v in values.items() if v is not None}

    def describe(self, partition: bool = True) -> str:
        """What each job asks for: 'partition gpu, 60 min, 4 CPUs, 1 GPU, 16 GB'."""
        words = [f"partition {self.partition or '(the default)'}"] if partition else []
        words.append(f"{self.time_min} min")
        if self.cpus_per_task:
            words.append(_count(self.cpus_per_task, "CPU"))
        if self.gpus_per_node:
            words.append(_count(self.gpus_per_node, "GPU"))
        if self.mem_gb:
            words.append(f"{self.mem_gb:g} GB")
        return ", ".join(words)


@dataclass(frozen=True)
class Execution:
    """How a sweep's points are run; provenance only, never part of a run's identity.

    ``local``: ``jobs`` points at once (None: auto, min(points left, CPUs)), each in a worker
    process pinned to ``threads_per_point`` CPUs (None: the CPUs // jobs); ``jobs=1`` with no
    ``threads_per_point`` trains in the sweep's own process, one point after another.
    ``slurm`` (and ``submitit-local``): one job per point; ``wait``: until every job ends.
    """

    executor: str = "local"
    jobs: int | None = 1
    threads_per_point: int | None = None
    slurm: SlurmOptions = SlurmOptions()
    wait: bool = False

    def __post_init__(self) -> None:
        if self.executor not in (*EXECUTORS, SUBMITIT_LOCAL):
            raise ValueError(
                f"unknown executor {self.executor!r}; valid executors: {', '.join(EXECUTORS)}"
            )
        if self.jobs is not None and not _positive_int(self.jobs):
            raise ValueError(f"jobs must be a positive integer or auto, got {self.jobs!r}")
        if self.threads_per_point is not None and not _positive_int(self.threads_per_point):
            raise ValueError(
                f"threads_per_point must be a positive integer, got {self.threads_per_point!r}"
            )

    @property
    def in_process(self) -> bool:
        """Whether the points train in the sweep's own process (the library's default)."""
        return self.executor == "local" and self.jobs == 1 and self.threads_per_point is None


@dataclass(frozen=True)
class WorkerPlan:
    """Local workers: how many at a time, and the CPUs each is pinned to."""

    jobs: int
    threads_per_point: int
    cpus: tuple[int, ...]  # every CPU this process may use

    def groups(self) -> list[tuple[int, ...]]:
        """Worker k's CPUs: the k-th ``threads_per_point`` of them, disjoint from the others'."""
        t = self.threads_per_point
        return [self.cpus[k * t : (k + 1) * t] for k in range(self.jobs)]

    def describe(self) -> str:
        """'2 worker processes at a time, 1 CPU each (CPU affinity)'."""
        workers = "1 worker process" if self.jobs == 1 else f"{self.jobs} worker processes"
        return f"{workers} at a time, {_count(self.threads_per_point, 'CPU')} each (CPU affinity)"


def available_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity), in order."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


AUTO_THREADS_PER_POINT = 2


def auto_jobs(cpus: int, threads_per_point: int | None) -> tuple[int | None, int | None]:
    """``--jobs auto`` as (jobs, threads per point) for ``Execution``: workers of
    ``AUTO_THREADS_PER_POINT`` CPUs each, as many as the points left and the CPUs allow
    (``None``: resolved by :func:`plan_workers`), or the sweep's own process below twice that
    many CPUs. A point on one CPU takes about twice its time on two (XLA compiles and runs it
    on every core it has), and a worker starts Python, JAX and W&B afresh for every point: on
    2 cores the main job took 193 s in the sweep's process, 222 s as two 1-CPU workers and
    393 s as one (results/jobs_speed.md)."""
    if threads_per_point is not None:
        return None, threads_per_point
    if cpus < 2 * AUTO_THREADS_PER_POINT:
        return 1, None
    return None, AUTO_THREADS_PER_POINT


def plan_workers(execution: Execution, points_left: int, cpus: tuple[int, ...]) -> WorkerPlan:
    """Resolve auto: ``jobs`` min(points left, CPUs // threads per point), ``threads_per_point``
    the CPUs // jobs, at least 1 each; one line if the workers would need more CPUs than
    there are (each gets its own)."""
    threads, jobs = execution.threads_per_point, execution.jobs
    if jobs is None:
        jobs = max(1, min(points_left, len(cpus) // (threads or 1)))
    if threads is None:
        threads = max(1, len(cpus) // jobs)
    if jobs * threads > len(cpus):
        raise ValueError(
            f"--jobs {jobs} x --threads-per-point {threads} needs {jobs * threads} CPUs, but this "
            f"process may use {len(cpus)} ({_cpu_list(cpus)}); each worker gets CPUs of its own"
        )
    return WorkerPlan(jobs, threads, cpus)


@dataclass(frozen=True)
class Point:
    """One point of a sweep: its place, folder name, config, run folder, and the values it
    vmaps ({field: values}; a group of runs, each in ``run_dir/values/``)."""

    index: int
    total: int
    name: str
    config: TrainConfig
    run_dir: Path
    vmap: dict[str, list] = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"[{self.index}/{self.total}] {self.name}"

    @property
    def values(self) -> list[dict]:
        return value_grid(self.vmap)

    def summary_files(self) -> list[Path]:
        """Where its run (or each value of its group) writes ``summary.json``."""
        if not self.vmap:
            return [self.run_dir / "summary.json"]
        return [self.run_dir / "values" / value_name(v) / "summary.json" for v in self.values]

    def summaries(self) -> list[dict] | None:
        """The summaries it wrote, once every one is there."""
        files = self.summary_files()
        return [read_json(f) for f in files] if all(f.exists() for f in files) else None


def train_arguments(config: TrainConfig) -> list[str]:
    """``--name=value`` for every field of ``config`` (a None that is the field's default is
    left out; a None of an off-at-zero option is 0), which ``gru-research train`` reads back to
    the same config."""
    arguments = []
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        if value is None and f.default is None:
            continue
        if value is None and f.name in OFF_AT_ZERO:
            value = 0
        elif value is None:
            raise ValueError(f"{f.name}=None cannot be written as a train option")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        arguments.append(f"--{f.name}={text}")
    return arguments


def train_command(point: Point, wandb_mode: str, wandb_group: str) -> list[str]:
    """The command that trains one point, run by a worker process or a cluster job."""
    vmap = [f"--vmap={n}={','.join(map(str, vs))}" for n, vs in point.vmap.items()]
    return [
        sys.executable,
        "-m",
        "gru_research.cli",
        "train",
        "--out",
        str(point.run_dir),
        *train_arguments(point.config),
        *vmap,
        "--wandb",
        wandb_mode,
        "--wandb-group",
        wandb_group,
    ]


# ---------------------------------------------------------------------------------------------
# the plan: every check and the data, before anything is written


@dataclass(frozen=True)
class Plan:
    """A sweep's points, checked and their data prepared, to run outside this process."""

    execution: Execution
    done: tuple[tuple[Point, dict], ...]  # finished before: their summaries
    todo: tuple[Point, ...]
    workers: WorkerPlan | None  # local executor
    out: Path
    wandb_mode: str
    wandb_group: str

    @property
    def how(self) -> str:
        """How the points are run, for the report's provenance."""
        if self.workers is not None:
            return self.workers.describe()
        slurm = self.execution.slurm
        if self.execution.executor == SUBMITIT_LOCAL:
            return f"submitted through submitit's local executor ({slurm.describe(False)})"
        return f"submitted to SLURM through submitit ({slurm.describe()})"

    def command(self, point: Point) -> list[str]:
        return train_command(point, self.wandb_mode, self.wandb_group)

    def run(self, progress: Progress) -> tuple[list[dict], int]:
        """Train (or submit) the points left; the finished points' summaries in sweep order
        (a group's, value by value), and how many are not finished (in progress elsewhere,
        queued or running)."""
        for point, summaries in self.done:
            progress(f"{point.label}: already done; {describe_group(point.values, summaries)}")
        if self.workers is not None:
            new, pending = run_workers(self, progress)
        else:
            new, pending = submit_points(self, progress)
        by_point = {p.index: s for p, s in self.done} | new
        return [s for i in sorted(by_point) for s in by_point[i]], pending


def plan_points(
    points: list[tuple[str, TrainConfig, dict[str, list]]],
    out: Path,
    execution: Execution,
    *,
    wandb_mode: str,
    wandb_group: str,
) -> Plan:
    """Split the points into finished and left, check that the executor can run here, and
    prepare the data of the points left; nothing is written under ``out``."""
    if wandb_mode not in WANDB_MODES:
        raise ValueError(f"unknown W&B mode {wandb_mode!r}; valid modes: {', '.join(WANDB_MODES)}")
    check_executor(execution)
    from gru_research.train import finished_summaries  # JAX imported; no backend started

    done, todo = [], []
    for index, (name, config, vmap) in enumerate(points, 1):
        point = Point(index, len(points), name, config, out / "runs" / name, vmap)
        summaries = finished_summaries(config, point.run_dir, point.values)
        if summaries is None:
            todo.append(point)
        else:
            done.append((point, summaries))
    workers = None
    if execution.executor == "local":
        workers = plan_workers(execution, len(todo), available_cpus())
    prepare_data([p.config for p in todo])
    return Plan(execution, tuple(done), tuple(todo), workers, out, wandb_mode, wandb_group)


def check_executor(execution: Execution) -> None:
    """One line if this machine cannot run the executor: workers need Linux (CPU affinity and
    the parent-death signal); SLURM needs submitit, sbatch and srun."""
    if execution.executor == "local" and not sys.platform.startswith("linux"):
        raise ValueError(
            "worker processes (--jobs, --threads-per-point) need Linux for their CPU affinity;"
            " use --jobs 1 here"
        )
    if execution.executor == "local":
        return
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ValueError(
            f"--executor {execution.executor} needs submitit: pip install 'gru-research[cluster]'"
        ) from None
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if execution.executor == "slurm" and missing:
        raise ValueError(
            f"{' and '.join(missing)} not found on PATH: --executor slurm submits from a machine"
            " of the SLURM cluster"
        )


def prepare_data(configs: list[TrainConfig]) -> None:
    """Read, or download and build, each dataset the points use, once, before any point starts,
    so that two workers never build the same dataset at once (TFDS prepares a corpus on first
    use). Synthetic tasks need nothing. In a spawned process: the sweep's own process stays
    free of TensorFlow and its threads while it starts workers."""
    corpora: dict[tuple, Any] = {}
    for config in configs:
        if config.task == "lm":
            task = config.task_config()
            key = (task.corpus, task.text_file, task.tfds_data_dir, task.tfds_manual_dir)
            corpora.setdefault((*key, task.data_dir, task.data_checks), task)
    if not corpora:
        return
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for task in corpora.values():
            pool.submit(_load_corpus, task).result()  # its error re-raised here, one line


def _load_corpus(task: Any) -> None:
    from gru_research.tasks.lm import load_corpus

    load_corpus(task)


# ---------------------------------------------------------------------------------------------
# local workers


@dataclass(frozen=True)
class Worker:
    """A running worker process: its point, CPU slot and log."""

    point: Point
    process: subprocess.Popen
    slot: int
    started: float
    stderr: Path


def run_workers(plan: Plan, progress: Progress) -> tuple[dict[int, dict], int]:
    """Train the points left in worker processes, ``jobs`` at a time; their summaries by
    point index and how many are in progress elsewhere. A failed point starts no further ones;
    once the running ones end, :class:`PointFailed` names it."""
    assert plan.workers is not None
    groups, logs = plan.workers.groups(), plan.out / "logs"
    queue, free, running = deque(plan.todo), list(range(plan.workers.jobs)), []
    summaries, failures, pending = {}, [], 0
    with _sigterm_raises(), _stopped_on_error(running):
        while running or (queue and not failures):
            while queue and free and not failures:
                point = queue.popleft()
                if (holder := lock_holder(point.run_dir)) is not None:
                    progress(f"{point.label}: in progress elsewhere ({holder})")
                    pending += 1
                    continue
                slot = free.pop(0)
                running.append(launch(point, groups[slot], slot, plan, logs))
            for worker in [w for w in running if w.process.poll() is not None]:
                running.remove(worker)
                free = sorted([*free, worker.slot])
                outcome = worker_outcome(worker)
                if isinstance(outcome, list):
                    summaries[worker.point.index] = outcome
                    seconds = time.perf_counter() - worker.started
                    described = describe_group(worker.point.values, outcome)
                    progress(f"{worker.point.label}: {seconds:.0f}s; {described}")
                elif (holder := lock_holder(worker.point.run_dir)) is not None:
                    progress(f"{worker.point.label}: in progress elsewhere ({holder})")
                    pending += 1
                else:
                    failures.append(f"{worker.point.label} {outcome} (log: {worker.stderr})")
                    progress(f"{worker.point.label}: {outcome}")
            time.sleep(POLL_S if running else 0)
    if failures:
        raise PointFailed(failure_line(failures, len(queue)))
    return summaries, pending


def launch(point: Point, cpus: tuple[int, ...], slot: int, plan: Plan, logs: Path) -> Worker:
    """Start the worker of one point: its own process group, pinned to ``cpus``, SIGTERM when
    this process dies; stdout and stderr to ``logs/<point>.out`` and ``.err``."""
    command = plan.command(point)
    record_launch(
        point.run_dir,
        {"executor": "local", "how": plan.workers.describe(), "cpus": list(cpus)},
        command,
    )
    logs.mkdir(parents=True, exist_ok=True)
    stderr = logs / f"{point.name}.err"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # its own, as `train`
    with open(logs / f"{point.name}.out", "w") as out, open(stderr, "w") as err:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            process_group=0,
            preexec_fn=_pinned_child(cpus, os.getpid()),
        )
    return Worker(point, process, slot, time.perf_counter(), stderr)


def _pinned_child(cpus: tuple[int, ...], parent: int) -> Callable[[], None]:
    """What the worker does between fork and exec: ask for SIGTERM when the sweep's process
    dies (and end at once if it already has), then pin itself to ``cpus``."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:
            os._exit(1)
        os.sched_setaffinity(0, cpus)

    return setup


def worker_outcome(worker: Worker) -> list[dict] | str:
    """The summaries of a worker that finished its point, or what went wrong, in words."""
    code = worker.process.returncode
    if code == 0 and (summaries := worker.point.summaries()) is not None:
        return summaries
    line = last_line(worker.stderr) or "no output on stderr"
    return f"failed ({exit_words(code)}): {line}"


def stop(workers: list[Worker]) -> None:
    """SIGTERM every worker's process group, then SIGKILL those still there after a grace."""
    for worker in workers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(max(deadline - time.monotonic(), 0.01))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()


@contextlib.contextmanager
def _stopped_on_error(running: list[Worker]) -> Iterator[None]:
    """Stop the running workers when the sweep ends in an exception or an interrupt."""
    try:
        yield
    except BaseException:
        stop(list(running))
        raise


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM to the sweep raises SystemExit(143), so its workers are stopped before it ends
    (a SIGKILL leaves that to their parent-death signal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# submitit: SLURM, or submitit's local executor


def submit_points(plan: Plan, progress: Progress) -> tuple[dict[int, dict], int]:
    """Submit each point left as a job (one already queued or running is not submitted
    again); with ``wait``, poll until every job ends. The summaries by point index, and how
    many points are not finished."""
    import submitit

    folder = plan.out / "submitit"
    slurm = plan.execution.executor == "slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm" if slurm else "local")
    executor.update_parameters(**plan.execution.slurm.parameters())
    recorded = read_json(folder / JOBS_FILE) if (folder / JOBS_FILE).exists() else {}
    jobs, pending = [], 0
    for point in plan.todo:
        if (holder := lock_holder(point.run_dir)) is not None:
            progress(f"{point.label}: in progress elsewhere ({holder})")
            pending += 1
            continue
        job_id = recorded.get(point.name)
        if slurm and job_id and (state := slurm_state(folder, job_id)) in ACTIVE_SLURM_STATES:
            progress(f"{point.label}: job {job_id} is {state.lower()}")
            jobs.append((point, submitit.SlurmJob(folder=folder, job_id=job_id)))
            continue
        command = plan.command(point)
        executor.update_parameters(name=point.name)
        job = executor.submit(submitit.helpers.CommandFunction(command, cwd=os.getcwd()))
        recorded[point.name] = job.job_id
        write_atomic(folder / JOBS_FILE, json.dumps(recorded, indent=1) + "\n")
        how = {"executor": plan.execution.executor, "how": plan.how, "job_id": job.job_id}
        record_launch(point.run_dir, how, command)
        progress(f"{point.label}: submitted as job {job.job_id}")
        jobs.append((point, job))
    if not plan.execution.wait:
        return {}, pending + len(jobs)
    summaries, failures = {}, []
    while jobs:
        for point, job in [(p, j) for p, j in jobs if j.done()]:
            jobs.remove((point, job))
            outcome = job_outcome(point, job)
            if isinstance(outcome, list):
                summaries[point.index] = outcome
                seconds = outcome[0].get("wall_time_s", 0.0)
                described = describe_group(point.values, outcome)
                progress(f"{point.label}: {seconds:.0f}s (job {job.job_id}); {described}")
            else:
                failures.append(f"{point.label} {outcome} (job {job.job_id}: {job.paths.stderr})")
                progress(f"{point.label}: {outcome}")
        time.sleep(1 if jobs else 0)
    if failures:
        raise PointFailed(failure_line(failures, 0))
    return summaries, pending


def slurm_state(folder: Path, job_id: str) -> str:
    """A job's SLURM state as sacct gives it ('PENDING', 'RUNNING', ...; 'UNKNOWN' if it
    cannot tell)."""
    import submitit

    return submitit.SlurmJob(folder=folder, job_id=job_id).state.split()[0].upper()


def job_outcome(point: Point, job: Any) -> list[dict] | str:
    """The summaries of a job that finished its point, or what went wrong, in words."""
    error = job.exception()
    if error is None and (summaries := point.summaries()) is not None:
        return summaries
    return f"failed: {job_error_line(str(error)) if error else 'no summary.json written'}"


def job_error_line(text: str) -> str:
    """The last line the command wrote to stderr, from submitit's error of a failed
    CommandFunction (its trace stands between two lines of dashes); else the error's last."""
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip() and set(line.strip()) == {"-"}]
    if len(rules) >= 2:
        lines = lines[rules[-2] + 1 : rules[-1]]
    return next((line.strip() for line in reversed(lines) if line.strip()), text.strip())


# ---------------------------------------------------------------------------------------------
# shared


def lock_holder(run_dir: Path) -> str | None:
    """Who holds the run folder's lock (another process training it), or None."""
    from gru_research.train import RunLocked, check_unlocked

    try:
        check_unlocked(run_dir)
    except RunLocked as err:
        return str(err)
    return None


def record_launch(run_dir: Path, how: dict, command: list[str]) -> None:
    """Add a line to ``RUN/launches.jsonl``: when, on which host, how and with which command
    the point was started (provenance; not read back)."""
    path = run_dir / LAUNCHES
    line = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host": socket.gethostname(),
        **how,
        "command": command,
    }
    before = path.read_text() if path.exists() else ""
    write_atomic(path, before + json.dumps(line) + "\n")


def last_line(path: Path, tail_bytes: int = 65536) -> str | None:
    """The last non-empty line of a log file (read from its end), or None."""
    if not path.exists():
        return None
    with open(path, "rb") as handle:
        handle.seek(max(path.stat().st_size - tail_bytes, 0))
        text = handle.read().decode("utf-8", errors="replace")
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), None)


def exit_words(code: int | None) -> str:
    """'exit 2', or 'killed by SIGKILL' for a process a signal ended."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


def failure_line(failures: list[str], not_started: int) -> str:
    """One line for a sweep whose points failed: the first failure, then how many more."""
    line = f"sweep point {failures[0]}"
    if len(failures) > 1:
        line += f"; {len(failures) - 1} more failed"
    if not_started:
        line += f"; {not_started} not started (rerun to go on)"
    return line
