"""Faults lose nothing that was saved: verified checkpoints with a fallback, one record per step
across a resume (metrics.jsonl and the offline W&B history), one process per run folder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from small_runs import small_run

import gru_research.train as train_module
from gru_research.tracking import MetricsFile, offline_run_files, read_offline_history
from gru_research.train import RunError, TrainConfig, train

SMALL = small_run(seeds=2, steps=30)
pytestmark = pytest.mark.slow  # each test trains


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def keys(run: Path) -> list[tuple]:
    return [(r["step"], r["seed"], r["split"]) for r in read_metrics(run)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, Path]:
    run = tmp_path_factory.mktemp("whole") / "run"
    return train(TrainConfig(**SMALL), run, wandb_mode="disabled"), run


def _largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)


def damage(step_dir: Path, how: str) -> None:
    if how == "flipped byte":
        data = _largest_file(step_dir)
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif how == "truncated file":
        data = _largest_file(step_dir)
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        for manifest in step_dir.rglob("manifest.ocdbt"):
            manifest.write_bytes(b"")


@pytest.mark.parametrize("how", ["flipped byte", "truncated file", "emptied manifest"])
def test_a_damaged_checkpoint_is_rejected_and_the_previous_one_resumes(
    tmp_path, capfd, uninterrupted, how
):
    config, run = TrainConfig(**SMALL), tmp_path / "run"
    assert train(config, run, wandb_mode="disabled", stop_after=20) == {"stopped_at": 20}
    damage(run / "checkpoints" / "20", how)
    resumed = train(config, run, wandb_mode="disabled")
    lines = [line for line in capfd.readouterr().err.splitlines() if "verification" in line]
    assert len(lines) == 1 and "step 20" in lines[0] and "rejected-20" in lines[0], lines
    assert lines[0].endswith("resumed from step 10")
    assert (run / "checkpoints" / "rejected-20").is_dir()
    whole, whole_run = uninterrupted
    assert resumed["diverged"] == [] and resumed["final"] == whole["final"]  # bit-identical
    assert keys(run) == keys(whole_run)


def test_no_verified_checkpoint_is_one_clear_error(tmp_path):
    config, run = TrainConfig(**SMALL), tmp_path / "run"
    train(config, run, wandb_mode="disabled", stop_after=20)
    for step in (10, 20):
        damage(run / "checkpoints" / str(step), "flipped byte")
    with pytest.raises(RunError, match="none of .* verifies") as err:
        train(config, run, wandb_mode="disabled")
    assert len(str(err.value).splitlines()) == 1


def test_a_kill_between_the_test_records_and_the_summary_logs_each_record_once(
    tmp_path, monkeypatch, uninterrupted
):
    write_json = train_module.write_json

    def killed_at_the_summary(path, obj):
        if Path(path).name == "summary.json":
            raise KeyboardInterrupt  # as a kill would, after the test records were written
        write_json(path, obj)

    config, run = TrainConfig(**SMALL), tmp_path / "run"
    monkeypatch.setattr(train_module, "write_json", killed_at_the_summary)
    with pytest.raises(KeyboardInterrupt):
        train(config, run, wandb_mode="disabled")
    assert [r["split"] for r in read_metrics(run)].count("test") == 2
    monkeypatch.setattr(train_module, "write_json", write_json)
    resumed = train(config, run, wandb_mode="disabled")
    whole, whole_run = uninterrupted
    assert keys(run) == keys(whole_run) and len(keys(run)) == len(set(keys(run)))
    assert resumed["final"] == whole["final"]


def test_the_offline_history_holds_every_step_once_after_a_resume(tmp_path):
    config, run = TrainConfig(**SMALL), tmp_path / "run"
    train(config, run, wandb_mode="offline", stop_after=15)
    train(config, run, wandb_mode="offline")
    wandb_id = json.loads((run / "config.json").read_text())["wandb_id"]
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2  # one folder per seed
    files = offline_run_files(run)
    for seed in (0, 1):
        history = read_offline_history(files[f"{wandb_id}-s{seed}"])
        for split in ("train", "validation", "test"):
            logged = [row["_step"] for row in history if f"{split}/loss" in row]
            expected = [
                r["step"] for r in read_metrics(run) if r["seed"] == seed and r["split"] == split
            ]
            assert logged == expected, (seed, split)
            values = {
                row["_step"]: row[f"{split}/loss"] for row in history if f"{split}/loss" in row
            }
            assert values == pytest.approx(
                {
                    r["step"]: r["loss"]
                    for r in read_metrics(run)
                    if r["seed"] == seed and r["split"] == split
                }
            )


HOLD_LOCK = """
import sys, time
from pathlib import Path
from gru_research.train import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_process_in_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
        second = subprocess.run(
            [sys.executable, "-m", "gru_research.cli", "train", *args, "--out", str(run)]
            + ["--wandb", "disabled"],
            capture_output=True,
            text=True,
        )
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by pid {holder.pid}" in lines[0], lines
        assert not (run / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    summary = train(TrainConfig(**SMALL), run, wandb_mode="disabled")  # the kernel let it go
    assert summary["steps"] == 30 and np.isfinite(summary["final"]["loss"]).all()


def test_a_corrupt_metrics_file_is_named_in_one_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "split": "train"}) + "\n{not json\n")
    with pytest.raises(ValueError) as err:
        MetricsFile(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "line 2" in message
