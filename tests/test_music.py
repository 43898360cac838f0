"""Polyphonic music: the loader against the known counts and checksums, the NLL by hand,
padding that changes no loss, and one clear line for a missing or damaged file."""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research.config import TrainConfig
from gru_research.model import seed_keys
from gru_research.tasks import TaskConfig, make_task
from gru_research.tasks.music import (
    MUSIC_FILES,
    PACKAGED,
    frame_nll,
    length_ordered_batches,
    next_frame_batch,
    read_music,
)
from gru_research.train import build_program

SHARED = Path(os.environ.get("GRU_RESEARCH_DATA", "/nonexistent")) / "polyphonic"
needs_shared = pytest.mark.skipif(
    not (SHARED / "Nottingham.mat").is_file(),
    reason="no polyphonic/ under GRU_RESEARCH_DATA (the data root)",
)
FRAMES = {  # train / validation / test frames, from the datasets' README
    "jsb": (13_807, 4_602, 4_725),
    "nottingham": (176_561, 45_513, 44_463),
    "musedata": (245_202, 82_755, 64_339),
    "piano_midi": (75_911, 8_540, 19_036),
}


def check_counts(dataset: str, splits: dict) -> None:
    sequences = tuple(len(splits[s]) for s in ("train", "validation", "test"))
    frames = tuple(sum(len(a) for a in splits[s]) for s in ("train", "validation", "test"))
    assert sequences == MUSIC_FILES[dataset].sequences
    assert frames == FRAMES[dataset]
    for sequence in splits["train"][:20]:
        assert sequence.shape[1] == 88 and set(np.unique(sequence)) <= {0, 1}


def test_the_shipped_jsb_has_its_known_counts():
    check_counts("jsb", read_music("jsb"))


@needs_shared
@pytest.mark.parametrize("dataset", ["nottingham", "musedata", "piano_midi", "jsb"])
def test_the_data_root_files_have_their_known_counts(dataset):
    check_counts(dataset, read_music(dataset, SHARED.parent))


def test_the_nll_of_a_two_frame_example_by_hand():
    """Two sequences, one of two frames (one predicted frame) and one padded: p = σ(logit)."""
    rolls = np.zeros((2, 3, 88), np.uint8)
    rolls[0, 1, [0, 5]] = 1  # sequence 0: frame 2 has keys 0 and 5 on
    rolls[1, 1, 3] = rolls[1, 2, 3] = 1  # sequence 1: three frames
    inputs, targets = next_frame_batch(rolls[:1, :2], np.asarray([2]))
    logits = jnp.zeros((1, 1, 88)).at[0, 0, 0].set(2.0).at[0, 0, 1].set(-1.0)
    p0, p1 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    # key 0 on with p0, key 1 off with p1, key 5 on at ½, 85 other keys off at ½
    expected = -math.log(p0) - math.log(1 - p1) - math.log(0.5) - 85 * math.log(0.5)
    assert inputs.shape == (1, 1, 88)
    assert float(frame_nll(logits, targets)["loss"]) == pytest.approx(expected, rel=1e-6)
    # padded to three frames: the second sequence's two predicted frames join the mean
    inputs, targets = next_frame_batch(rolls, np.asarray([2, 3]))
    logits = jnp.zeros((2, 2, 88)).at[0, 0, 0].set(2.0).at[0, 0, 1].set(-1.0)
    per_frame_at_half = 88 * math.log(2)
    total = expected + 2 * per_frame_at_half  # the padded frame of sequence 0 is not counted
    assert float(frame_nll(logits, targets)["loss"]) == pytest.approx(total / 3, rel=1e-6)


@pytest.mark.parametrize("bidirectional", [None, "sum"])
def test_a_padded_batch_equals_its_sequences_one_by_one(bidirectional):
    config = TrainConfig(task="music", hidden=8, bidirectional=bidirectional)
    task = make_task(config.task_config())
    program = build_program(config, task, config.model_config(task))
    params = program.init(seed_keys([0]))["params"]
    sequences = read_music("jsb")["validation"][:5]
    inputs, targets, weight = length_ordered_batches(sequences, 5)[0]
    assert weight == sum(len(s) - 1 for s in sequences)
    assert inputs.shape[1] + 1 > max(len(s) for s in sequences)
    together = float(program.evaluate(params, inputs, targets)["loss"][0])
    total = 0.0
    for sequence in sequences:
        alone, alone_targets = next_frame_batch(sequence[None], np.asarray([len(sequence)]))
        loss = program.evaluate(params, alone, alone_targets)["loss"][0]
        total += float(loss) * (len(sequence) - 1)
    assert together == pytest.approx(total / weight, rel=1e-5)


def test_evaluation_covers_every_sequence_of_the_split_once():
    task = make_task(TaskConfig(name="music"))
    batches = task.eval_data("test", 16)
    assert sum(len(b[0]) for b in batches) == 77
    assert sum(b[2] for b in batches) == 4_725 - 77  # predicted frames: n - 1 per sequence
    assert all(b[0].shape[1] % 16 == 0 for b in batches)
    assert task.baseline["loss"] > 8.45  # above the papers' models on JSB


def damaged_root(tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / "root" / "polyphonic"
    folder.mkdir(parents=True)
    if damage != "missing":
        data = (PACKAGED / "JSB_Chorales.mat").read_bytes()
        if damage == "truncated":
            data = data[: len(data) // 2]
        else:
            data = data[:-1] + bytes([data[-1] ^ 1])
        (folder / "JSB_Chorales.mat").write_bytes(data)
    return folder.parent


@pytest.mark.parametrize("damage", ["missing", "truncated", "different"])
def test_a_missing_or_damaged_file_is_one_clear_line_and_no_run_folder(tmp_path, damage):
    root, out = damaged_root(tmp_path, damage), tmp_path / "run"
    command = [sys.executable, "-m", "gru_research.cli", "train", "--task", "music", "--steps",
               "2", "--data-dir", str(root), "--out", str(out), "--wandb", "disabled"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "JSB_Chorales.mat" in lines[0]
    assert ("missing" if damage == "missing" else "differs from the standard one") in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_a_short_music_run_trains_below_its_start(tmp_path):
    from gru_research.train import train

    summary = train(
        TrainConfig(task="music", hidden=16, batch_size=8, steps=40, lr=1e-2, log_every=20,
                    eval_every=40, checkpoint_every=40),
        tmp_path / "run", progress=False,
    )  # fmt: skip
    assert summary["final"]["loss"][0] < 88 * math.log(2) / 2  # far below σ(0) on every key
    shutil.rmtree(tmp_path / "run")


def test_training_draws_each_step_from_one_length_bucket():
    task = make_task(TaskConfig(name="music"))
    buckets = task.data["buckets"]
    lengths = np.concatenate([np.asarray(b["lengths"]) for b in buckets])
    assert sorted(lengths.tolist()) == sorted(len(s) for s in read_music("jsb")["train"])
    for shorter, longer in zip(buckets, buckets[1:], strict=False):  # in length order
        assert int(shorter["lengths"].max()) <= int(longer["lengths"].min())
    assert [b["rolls"].shape[1] for b in buckets] == [int(b["lengths"].max()) for b in buckets]
    schedule = [int(task.length_buckets.bucket_of(jnp.int32(t))) for t in range(400)]
    assert np.bincount(schedule).min() > 70  # uniform over the four buckets
    for index, bucket in enumerate(buckets):
        inputs, targets = task.length_buckets.samplers[index](task.data, jax.random.key(0), 8)
        assert inputs.shape == (8, bucket["rolls"].shape[1] - 1, 88)
        assert np.all(np.isin(np.asarray(targets["lengths"]) + 1, np.asarray(bucket["lengths"])))


def test_the_compiled_step_runs_one_bucket_for_every_seed():
    """The bucket is not vmapped over the seeds, so the step keeps a conditional (a bucket per
    seed would turn it into a select that runs every bucket)."""
    config = TrainConfig(task="music", hidden=8, seeds=2, log_every=1, eval_every=1,
                         checkpoint_every=1)  # fmt: skip
    task = make_task(config.task_config())
    program = build_program(config, task, config.model_config(task))
    state = program.init(seed_keys(config.seed_list))
    jaxpr = str(jax.make_jaxpr(program.train_steps(1))(state, task.data, jnp.int32(0)))
    assert " cond[" in jaxpr
