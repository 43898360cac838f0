"""Where runs are written: the local run folder and Weights & Biases.

A run folder (docs/design.md §5.3) holds ``config.json`` (the resolved config, package version, git
commit), ``metrics.jsonl`` (one JSON object per logged step, seed and split),
``summary.json`` (final metrics per seed, diverged seeds), ``checkpoints/`` and ``wandb/``.
Every file is replaced atomically (written beside, then renamed), so a crash never leaves a
half-written file.

W&B runs offline by default; the mode is set here, never read from ``WANDB_MODE``. Each seed is
its own W&B run, grouped by experiment and named by cell and seed, so the W&B UI can group and
average seeds. :func:`read_offline_history` reads what an offline run logged, with no server.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

WANDB_MODES = ("offline", "online", "disabled")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half.

    The file gets the permissions a plain write would give it: a new one 0o666 less the umask
    (the temporary file is opened as a plain write opens a file, not with mkstemp's 0o600), an
    existing one keeps its own.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    try:
        with os.fdopen(fd, "w") as f:
            if path.exists():
                os.fchmod(f.fileno(), path.stat().st_mode & 0o777)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a file that is not JSON (truncated, binary) is one line naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def check_output_folder(path: str | Path) -> None:
    """One clear line unless ``path`` is a folder, or can be made one, that this user can write
    in: tried by making (and removing) an empty folder in it, or in its nearest existing
    ancestor, so that nothing is left behind."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), Path("."))
    if not existing.is_dir():
        what = "a file" if existing.is_file() else "not a folder"
        raise ValueError(f"cannot write the output folder {path}: {existing} is {what}")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-check-"))
    except OSError as err:
        raise ValueError(
            f"cannot write the output folder {path}: {existing}: {err.strerror}"
        ) from None


def _git(*args: str) -> str | None:
    """The output of ``git ARGS`` in the package's checkout; None where git cannot answer."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_commit() -> str | None:
    """The commit of the package's checkout, if any, with ``+dirty`` for local changes to
    anything but ``results/`` (where a sweep writes its own folders as it runs)."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git(
        "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)results"
    )
    if commit is None or dirty is None:
        return None
    return commit + ("+dirty" if dirty else "")


def file_at_commit(path: str, commit: str) -> str | None:
    """The git object id of ``path`` (from the repository root) at ``commit``; None where the
    checkout cannot tell (no git, an unknown commit, no such file)."""
    return _git("rev-parse", "--verify", "--quiet", f"{commit}:{path}")


def package_version() -> str:
    return version("gru-research")


class MetricsFile:
    """``metrics.jsonl``, rewritten atomically on every flush (small files: O(steps × seeds))."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict] = []
        if path.exists():
            self.records = [self._record(n, line) for n, line in enumerate(self._lines(), 1)]

    def _lines(self) -> list[str]:
        return [line for line in self.path.read_text().splitlines() if line]

    def _record(self, number: int, line: str) -> dict:
        try:
            return json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"corrupt metrics file {self.path}: line {number} is not JSON ({err.msg})"
            ) from None

    def truncate_after(self, step: int) -> None:
        """Forget records past ``step`` and every test record: a resumed run logs those again
        (a run killed after its test records but before its summary evaluates the test split
        once more)."""
        self.records = [r for r in self.records if r["step"] <= step and r["split"] != "test"]
        self.flush()

    def extend(self, records: Iterable[dict]) -> None:
        self.records.extend(records)
        self.flush()

    def flush(self) -> None:
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


def under_sweep_agent() -> bool:
    """Whether ``wandb agent`` started this process (it sets WANDB_SWEEP_ID and WANDB_RUN_ID)."""
    return bool(os.environ.get("WANDB_SWEEP_ID"))


def _wandb_metrics(record: dict, prefix: str = "") -> dict:
    return {
        f"{prefix}{record['split']}/{k}": v
        for k, v in record.items()
        if k not in ("step", "seed", "split") and isinstance(v, int | float)
    }


class WandbRuns:
    """W&B for one run folder; a no-op when the mode is ``disabled``.

    Outside a sweep agent: one W&B run per seed, grouped by experiment, named by cell and seed.
    Under ``wandb agent`` (docs/design.md §5.4): the agent's one run, logging each metric as the
    mean over the seeds that are finite, and per-seed values under ``seed_<s>/...``.
    """

    def __init__(
        self,
        mode: str,
        run_dir: Path,
        config: dict,
        seeds: list[int],
        *,
        project: str,
        group: str,
        run_id: str,
        name: str,
    ) -> None:
        if mode not in WANDB_MODES:
            raise ValueError(f"unknown W&B mode {mode!r}; valid modes: {', '.join(WANDB_MODES)}")
        self.runs: dict[int | None, Any] = {}
        self.agent = under_sweep_agent()
        if mode == "disabled":
            return
        import wandb

        from gru_research.offline import keep_wandb_local, wandb_settings

        keep_wandb_local(mode)
        settings = wandb.Settings(silent=True, console="off", **wandb_settings(mode))
        if self.agent:
            self.runs[None] = wandb.init(
                dir=str(run_dir), mode=mode, config=config, settings=settings
            )
            return
        for seed in seeds:
            self.runs[seed] = wandb.init(
                project=project,
                group=group,
                name=f"{name}-seed{seed}",
                id=f"{run_id}-s{seed}",
                dir=str(run_dir),
                mode=mode,
                config={**config, "seed": seed},
                resume="allow",
                reinit="create_new",
                settings=settings,
            )

    def log(self, records: list[dict]) -> None:
        if self.agent and self.runs:
            self._log_agent(records)
            return
        for record in records:
            run = self.runs.get(record["seed"])
            if run is not None:
                run.log(_wandb_metrics(record), step=record["step"])

    def _log_agent(self, records: list[dict]) -> None:
        by_step: dict[tuple[int, str], list[dict]] = {}
        for record in records:
            by_step.setdefault((record["step"], record["split"]), []).append(record)
        for (step, _), group in sorted(by_step.items()):
            values: dict[str, float] = {}
            per_seed = [_wandb_metrics(r) for r in group]
            for key in per_seed[0]:
                finite = [m[key] for m in per_seed if key in m]
                values[key] = sum(finite) / len(finite)
            for record in group:
                values.update(_wandb_metrics(record, prefix=f"seed_{record['seed']}/"))
            self.runs[None].log(values, step=step)

    def finish(self, summary: dict[int, dict]) -> None:
        for seed, run in self.runs.items():
            if seed is None:
                for s, values in summary.items():
                    run.summary.update({f"seed_{s}/{k}": v for k, v in values.items()})
            else:
                run.summary.update(summary.get(seed, {}))
            run.finish()
        self.runs = {}


# ---------------------------------------------------------------------------------------------
# reading an offline run back (no server): the .wandb file is a LevelDB-style log of protobuf
# records (32 KiB blocks; each chunk: crc32 u32, length u16, type u8; full/first/middle/last)

_BLOCK, _HEADER, _FILE_HEADER = 32768, 7, 7


def _log_records(data: bytes) -> Iterator[bytes]:
    pos, pending = _FILE_HEADER, b""
    while pos + _HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def read_offline_history(wandb_file: Path) -> list[dict]:
    """The history rows (``_step`` plus the logged values) of an offline ``run-<id>.wandb``."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for raw in _log_records(Path(wandb_file).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def offline_run_files(run_dir: Path) -> dict[str, Path]:
    """W&B run id → its offline ``.wandb`` file, for the runs under ``run_dir/wandb``."""
    return {p.stem.removeprefix("run-"): p for p in Path(run_dir).glob("wandb/*/run-*.wandb")}


def remove_offline_runs(run_dir: Path, run_id: str) -> None:
    """Delete the offline W&B runs of a run folder's id, so that a resume rebuilds each seed's
    history from ``metrics.jsonl`` (the source of truth) into one folder per W&B run."""
    import shutil

    for folder in Path(run_dir).glob(f"wandb/offline-run-*-{run_id}*"):
        shutil.rmtree(folder, ignore_errors=True)
