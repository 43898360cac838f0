"""Penn Treebank: the files, the tokenisation, and the classic stateful training protocol.

Counts and checksums use the full files in ``ptb/`` of the data root (``$GRU_RESEARCH_DATA``,
else ``../shared/data`` beside the checkout); the training mechanics use slices of them (checks
off). Both skip with a reason where the files are absent.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research.tasks import make_task
from gru_research.tasks.ptb import char_tokens, frequency_vocabulary, ptb_splits, word_tokens
from gru_research.train import TrainConfig, build_program, learning_rate, resolve_epochs, train

DATA_ROOT = Path(
    os.environ.get("GRU_RESEARCH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
PTB_DIR = DATA_ROOT / "ptb"
needs_ptb = pytest.mark.skipif(
    not (PTB_DIR / "ptb.train.txt").is_file(), reason=f"no Penn Treebank files at {PTB_DIR}"
)


@pytest.fixture(scope="module")
def ptb_slice(tmp_path_factory) -> Path:
    """The first 2,000 / 200 / 200 lines of each file (checks off for these)."""
    if not (PTB_DIR / "ptb.train.txt").is_file():
        pytest.skip(f"no Penn Treebank files at {PTB_DIR}")
    folder = tmp_path_factory.mktemp("ptb_slice")
    for name, lines in [("ptb.train.txt", 2000), ("ptb.valid.txt", 200), ("ptb.test.txt", 200)]:
        text = (PTB_DIR / name).read_text().splitlines(keepends=True)[:lines]
        (folder / name).write_text("".join(text))
    return folder


@pytest.mark.slow
@needs_ptb
def test_word_level_counts_and_vocabulary(capsys):
    vocabulary, splits = ptb_splits("ptb", PTB_DIR)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [929_589, 73_760, 82_430]
    assert len(vocabulary) == 10_000 and {"<eos>", "<unk>"} <= set(vocabulary)
    assert "929,589 / 73,760 / 82,430" in capsys.readouterr().out
    task = make_task(_task_config(PTB_DIR, checks=True))
    assert task.vocab_size == 10_000  # PTB's own <unk>: no extra unknown id


def test_tokenisation_rules():
    text = " a b  c \n\n d e \n"
    assert word_tokens(text) == ["a", "b", "c", "<eos>", "<eos>", "d", "e", "<eos>"]
    # the standard character rule: '_' between words, '\n' between lines
    assert char_tokens(" ab c \n de\n") == ["a", "b", "_", "c", "\n", "d", "e"]
    assert frequency_vocabulary(["b", "a", "b", "c", "a", "b"]) == ("b", "a", "c")


def _task_config(folder, checks=False, corpus="ptb"):
    return dataclasses.replace(
        TrainConfig(task="lm", corpus=corpus, seq_len=20), data_dir=str(folder), data_checks=checks
    ).task_config()


@needs_ptb
@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_a_missing_or_changed_file_is_one_clear_error_and_no_run_folder(tmp_path, damage):
    folder = tmp_path / "ptb"
    folder.mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (folder / name).write_bytes((PTB_DIR / name).read_bytes())
    valid = folder / "ptb.valid.txt"
    if damage == "missing":
        valid.unlink()
    else:  # one byte changed: same size, another checksum
        data = bytearray(valid.read_bytes())
        data[100] = ord("x") if data[100] != ord("x") else ord("y")
        valid.write_bytes(bytes(data))
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "gru_research.cli", "train", "--task", "lm", "--corpus", "ptb"]
        + ["--data-dir", str(folder), "--out", str(out), "--wandb", "disabled"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ptb.valid.txt" in lines[0]
    assert ("missing" if damage == "missing" else "differs from the standard one") in lines[0]


def test_the_data_root_finds_ptb_by_name(ptb_slice, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(ptb_slice, root / "ptb")
    monkeypatch.delenv("GRU_RESEARCH_DATA", raising=False)
    by_root = make_task(_task_config(root))
    by_folder = make_task(_task_config(root / "ptb"))  # the dataset's own folder works too
    assert by_root.data_source == by_folder.data_source == str((root / "ptb").resolve())
    np.testing.assert_array_equal(by_root.data["train"], by_folder.data["train"])
    monkeypatch.setenv("GRU_RESEARCH_DATA", str(root))
    by_variable = make_task(dataclasses.replace(_task_config(root), data_dir=None))
    assert by_variable.data_source == by_root.data_source
    monkeypatch.delenv("GRU_RESEARCH_DATA")
    with pytest.raises(ValueError, match="--data-dir ROOT .* GRU_RESEARCH_DATA") as err:
        make_task(dataclasses.replace(_task_config(root), data_dir=None))
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.slow
def test_moving_the_data_never_blocks_a_resume(ptb_slice, tmp_path):
    """The data's path is provenance (config.json records it), not part of a run's identity."""
    first, moved = tmp_path / "first", tmp_path / "moved"
    shutil.copytree(ptb_slice, first / "ptb")
    config = TrainConfig(
        task="lm", corpus="ptb", data_dir=str(first), data_checks=False, hidden=8, seq_len=10,
        batch_size=4, steps=20, log_every=10, eval_every=10, checkpoint_every=10,
    )  # fmt: skip
    run = tmp_path / "run"
    assert train(config, run, wandb_mode="disabled", stop_after=10) == {"stopped_at": 10}
    saved = json.loads((run / "config.json").read_text())
    assert saved["task"]["data_source"] == str((first / "ptb").resolve())
    first.rename(moved)
    summary = train(dataclasses.replace(config, data_dir=str(moved)), run, wandb_mode="disabled")
    assert summary["steps"] == 20 and summary["diverged"] == []
    assert {"loss", "bits_per_token", "perplexity"} <= summary["final"].keys()
    assert "bpc" not in summary["final"]  # words, not characters


def _stateful_config(**changes) -> TrainConfig:
    base = TrainConfig(
        task="lm",
        corpus="ptb",
        data_checks=False,
        cell="lstm",
        layers=2,
        hidden=16,
        seq_len=10,
        batch_size=4,
        stateful=True,
        epochs=13,
        optimizer="sgd",
        lr=1.0,
        schedule="epoch_decay",
        lr_decay=0.5,
        lr_decay_after=4,
        init_scale=0.1,
        clip_norm=5.0,
        log_every=1,
    )
    return dataclasses.replace(base, **changes)


def test_epoch_decay_schedule_and_epoch_resolution(ptb_slice):
    config = _stateful_config(data_dir=str(ptb_slice))
    task = make_task(config.task_config())
    per_epoch = task.windows_per_epoch(config.batch_size)
    resolved = resolve_epochs(config, task)
    assert resolved.steps == 13 * per_epoch and resolved.eval_every == per_epoch
    schedule = learning_rate(resolved)
    rates = [float(schedule(epoch * per_epoch + 1)) for epoch in range(8)]
    assert rates == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125, 0.0625]  # Zaremba et al. (2014)


def test_a_warm_up_as_long_as_the_epochs_is_one_clear_error(ptb_slice):
    config = _stateful_config(data_dir=str(ptb_slice), epochs=1, warmup_steps=10**6)
    with pytest.raises(ValueError, match="warmup_steps must be below the .* steps of 1 epoch, got"):
        resolve_epochs(config, make_task(config.task_config()))


def _one_step(config, task, state=None):
    program = build_program(config, task, config.model_config(task))
    state = state if state is not None else program.init(jnp.stack([jax.random.key(0)]))
    return program, state, program.train_chunk(state, task.data, 0)


@pytest.mark.slow
def test_uniform_init_and_the_summed_loss_convention(ptb_slice):
    config = resolve_epochs(
        _stateful_config(data_dir=str(ptb_slice), clip_norm=None, lr=0.01, schedule="constant"),
        make_task(_task_config(ptb_slice)),
    )
    task = make_task(config.task_config())
    _, state, (mean_state, _) = _one_step(config, task)
    for leaf in jax.tree.leaves(state["params"]):
        assert float(jnp.max(jnp.abs(leaf))) <= 0.1  # forget bias included: no bias of 1
    summed = dataclasses.replace(config, loss_sum_over_time=True)
    _, _, (sum_state, _) = _one_step(summed, task, state)
    for before, mean_new, sum_new in zip(
        *(jax.tree.leaves(s["params"]) for s in (state, mean_state, sum_state)), strict=True
    ):
        np.testing.assert_allclose(sum_new - before, 10 * (mean_new - before), atol=1e-6)


@pytest.mark.slow
def test_the_carry_crosses_windows(ptb_slice):
    """Breaking the carry between windows changes the second window's loss."""
    config = resolve_epochs(
        _stateful_config(data_dir=str(ptb_slice)), make_task(_task_config(ptb_slice))
    )
    task = make_task(config.task_config())
    program, state, (after_one, _) = _one_step(config, task)
    assert any(float(jnp.max(jnp.abs(c))) > 0 for c in jax.tree.leaves(after_one["carries"]))
    _, carried = program.train_chunk(after_one, task.data, 0)
    broken = {**after_one, "carries": jax.tree.map(jnp.zeros_like, after_one["carries"])}
    _, fresh = program.train_chunk(broken, task.data, 0)
    assert abs(float(carried["loss"][0, 0]) - float(fresh["loss"][0, 0])) > 1e-4


@pytest.mark.slow
def test_stateful_evaluation_carries_the_state_across_the_split(ptb_slice):
    from gru_research.train import evaluate

    config = resolve_epochs(
        _stateful_config(data_dir=str(ptb_slice)), make_task(_task_config(ptb_slice))
    )
    task = make_task(config.task_config())
    program, state, _ = _one_step(config, task)
    streamed = evaluate(program, task, state, "validation", config.batch_size, stream=True)
    windowed = evaluate(program, task, state, "validation", config.batch_size)
    assert streamed["loss"][0] != pytest.approx(windowed["loss"][0], abs=1e-5)
    assert streamed["perplexity"][0] == pytest.approx(np.exp(streamed["loss"][0]))
