"""Tasks: batch structure, memoryless baselines, the offline TFDS corpus, one-line errors."""

import math
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research.tasks import (
    IGNORED_TARGET,
    TASKS,
    TaskConfig,
    adding_task_batch,
    copy_task_batch,
    make_task,
    selective_copy_batch,
)
from gru_research.tasks import lm as lm_module

NEG_INF = -jnp.inf


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------------------- copy


def test_copy_batch_structure():
    seq_len, batch_size = 30, 256
    inputs, targets = map(np.asarray, copy_task_batch(jax.random.key(0), batch_size, seq_len))
    assert inputs.shape == targets.shape == (batch_size, seq_len + 20)
    assert inputs.dtype == targets.dtype == np.int32
    data = inputs[:, :10]
    assert data.min() == 1 and data.max() == 8 and len(np.unique(data)) == 8
    assert np.all(inputs[:, 10 : 10 + seq_len - 1] == 0)  # T - 1 blanks
    assert np.all(inputs[:, seq_len + 9] == 9)  # the delimiter
    assert np.all(inputs[:, seq_len + 10 :] == 0)  # 10 blanks
    assert np.all(targets[:, : seq_len + 10] == 0)  # T + 10 blanks
    np.testing.assert_array_equal(targets[:, -10:], inputs[:, :10])  # recall in order
    assert not np.any(targets == 9)  # the delimiter is never a target


def test_copy_task_fields():
    task = make_task(TaskConfig(name="copy", seq_len=100))
    assert (task.vocab_size, task.output_size, task.data) == (10, 9, {})
    assert task.baseline["loss"] == pytest.approx(0.1733, abs=1e-4)  # PAPERS.md §1a table
    assert task.baseline["accuracy"] == 1 / 8
    assert "0.99" in task.solved_rule
    assert task.is_solved({"accuracy": 0.99}) and not task.is_solved({"accuracy": 0.98})
    assert task.eval_data("validation", 32) == []


def test_copy_memoryless_loss_matches_baseline():
    """Blank with probability 1, then uniform over 1..8: 10 ln 8 / (T + 20)."""
    seq_len, num_samples = 100, 10_000
    task = make_task(TaskConfig(name="copy", seq_len=seq_len))
    _, targets = task.sample(task.data, jax.random.key(1), num_samples)
    blank_logits = jnp.full((9,), NEG_INF).at[0].set(0.0)
    recall_logits = jnp.full((9,), NEG_INF).at[1:].set(0.0)
    per_step = jnp.concatenate(
        [jnp.tile(blank_logits, (seq_len + 10, 1)), jnp.tile(recall_logits, (10, 1))]
    )
    logits = jnp.broadcast_to(per_step, (num_samples, seq_len + 20, 9))
    metrics = task.metrics(logits, targets)
    assert float(metrics["loss"]) == pytest.approx(task.baseline["loss"], rel=0.02)
    assert float(metrics["accuracy"]) == pytest.approx(1 / 8, abs=0.01)


# ---------------------------------------------------------------------------- adding


@pytest.mark.parametrize("seq_len", [2, 51, 100])
def test_adding_batch_structure(seq_len):
    batch_size = 512
    inputs, targets = map(np.asarray, adding_task_batch(jax.random.key(2), batch_size, seq_len))
    assert inputs.shape == (batch_size, seq_len, 2) and targets.shape == (batch_size,)
    values, markers = inputs[..., 0], inputs[..., 1]
    assert values.min() >= 0.0 and values.max() < 1.0
    assert set(np.unique(markers)) <= {0.0, 1.0}
    assert np.all(markers.sum(axis=1) == 2)
    marked = np.argwhere(markers == 1.0)[:, 1].reshape(batch_size, 2)
    half = seq_len // 2
    assert np.all(marked[:, 0] < half) and np.all(marked[:, 1] >= half)
    if seq_len > 2:
        assert marked[:, 0].min() == 0 and marked[:, 1].max() == seq_len - 1
    rows = np.arange(batch_size)[:, None]
    np.testing.assert_allclose(targets, values[rows, marked].sum(axis=1), rtol=1e-6)


def test_adding_memoryless_loss_matches_baseline():
    """Always 1: MSE = Var(U1 + U2) = 1/6. Per-sample squared errors have sd ~0.2, so 2% needs
    well over 10,000 samples (DESIGN.md §3)."""
    seq_len, num_samples = 20, 200_000
    task = make_task(TaskConfig(name="adding", seq_len=seq_len))
    assert (task.vocab_size, task.input_size, task.output_size) == (None, 2, 1)
    _, targets = task.sample(task.data, jax.random.key(3), num_samples)
    metrics = task.metrics(jnp.ones((num_samples, seq_len, 1)), targets)
    assert task.baseline["loss"] == pytest.approx(1 / 6)
    assert float(metrics["loss"]) == pytest.approx(task.baseline["loss"], rel=0.02)
    assert not task.is_solved({k: float(v) for k, v in metrics.items()})
    perfect = jnp.zeros((num_samples, seq_len, 1)).at[:, -1, 0].set(targets)
    assert task.is_solved({"loss": float(task.metrics(perfect, targets)["loss"])})


# ---------------------------------------------------------------------------- selective copy


@pytest.mark.parametrize(("seq_len", "num_tokens"), [(40, 16), (16, 16), (100, 1)])
def test_selective_copy_batch_structure(seq_len, num_tokens):
    batch_size = 256
    key = jax.random.key(4)
    inputs, targets = map(np.asarray, selective_copy_batch(key, batch_size, seq_len, num_tokens))
    assert inputs.shape == (batch_size, seq_len + num_tokens)
    assert targets.shape == (batch_size, num_tokens)
    assert np.all(inputs[:, seq_len:] == 0)  # K query markers
    sequence = inputs[:, :seq_len]
    is_data = sequence != 15
    assert np.all(is_data.sum(axis=1) == num_tokens)  # K distinct positions
    assert sequence[is_data].min() >= 1 and sequence[is_data].max() <= 14
    assert targets.min() >= 1 and targets.max() <= 14
    # Targets are the data tokens in positional (sorted) order.
    np.testing.assert_array_equal(sequence[is_data].reshape(batch_size, num_tokens), targets)
    if batch_size * num_tokens > 50 * seq_len:  # each position is missed with odds < 1e-20
        assert np.all(is_data.any(axis=0))


def test_selective_copy_memoryless_loss_matches_baseline():
    seq_len, num_tokens, num_samples = 64, 16, 10_000
    task = make_task(TaskConfig(name="selective_copy", seq_len=seq_len, num_tokens=num_tokens))
    assert (task.vocab_size, task.output_size) == (16, 16)
    _, targets = task.sample(task.data, jax.random.key(5), num_samples)
    uniform_over_data = jnp.full((16,), NEG_INF).at[1:15].set(0.0)
    # Garbage at the first L outputs: the metrics must not look there.
    logits = jnp.broadcast_to(uniform_over_data, (num_samples, seq_len + num_tokens, 16))
    logits = logits.at[:, :seq_len].set(jnp.nan)
    metrics = task.metrics(logits, targets)
    assert task.baseline["loss"] == pytest.approx(math.log(14))
    assert float(metrics["loss"]) == pytest.approx(task.baseline["loss"], rel=0.02)
    assert float(metrics["accuracy"]) == pytest.approx(1 / 14, abs=0.005)
    assert task.is_solved({"accuracy": 0.95}) and not task.is_solved({"accuracy": 0.9})


# ---------------------------------------------------------------------------- all synthetic


@pytest.mark.parametrize("name", ["copy", "adding", "selective_copy"])
def test_synthetic_sample_jits_and_vmaps_over_seeds(name):
    task = make_task(TaskConfig(name=name, seq_len=24, num_tokens=8))
    sample = jax.jit(task.sample, static_argnums=2)
    first = sample(task.data, jax.random.key(0), 8)
    again = sample(task.data, jax.random.key(0), 8)
    other = sample(task.data, jax.random.key(1), 8)
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])
    keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
    seeded = jax.jit(jax.vmap(lambda key: task.sample(task.data, key, 8)))(keys)
    np.testing.assert_array_equal(seeded[0][0], first[0])
    np.testing.assert_array_equal(seeded[0][1], other[0])
    assert task.eval_data("validation", 8) == []


def test_importing_tasks_does_not_import_tensorflow():
    code = (
        "import sys, gru_research.tasks; "
        "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- lm helpers


@pytest.mark.parametrize("length", [2, 17, 33, 64, 65])
def test_contiguous_windows_cover_every_target_once(length):
    tokens = np.arange(100, 100 + length, dtype=np.int32)
    inputs, targets = lm_module.contiguous_windows(tokens, 16)
    valid = targets != IGNORED_TARGET
    np.testing.assert_array_equal(targets[valid], tokens[1:])
    np.testing.assert_array_equal(inputs[valid], tokens[:-1])
    assert inputs.shape[0] == math.ceil((length - 1) / 16)
    batches = lm_module.batch_windows(inputs, targets, 3)
    assert all(b[0].shape == b[1].shape == (3, 16) for b in batches)
    assert sum(weight for *_, weight in batches) == length - 1


def test_lm_metrics_skip_padding():
    logits = jnp.zeros((2, 4, 5))
    targets = jnp.array([[0, 1, 2, 3], [4, IGNORED_TARGET, IGNORED_TARGET, IGNORED_TARGET]])
    metrics = lm_module.lm_metrics(logits.at[1, 1:].set(jnp.nan), targets, characters=True)
    assert float(metrics["loss"]) == pytest.approx(math.log(5))
    assert float(metrics["bpc"]) == pytest.approx(math.log2(5))
    assert float(metrics["bits_per_token"]) == pytest.approx(math.log2(5))
    assert float(metrics["perplexity"]) == pytest.approx(5.0)
    words = lm_module.lm_metrics(logits, targets, characters=False)  # bits per word, no "bpc"
    assert set(words) == {"loss", "bits_per_token", "perplexity"}


def test_encode_maps_unseen_characters_to_the_unknown_id():
    vocabulary = lm_module.build_vocabulary("hello world")
    assert vocabulary == (" ", "d", "e", "h", "l", "o", "r", "w")
    ids = lm_module.encode("held? é", vocabulary)
    unknown = len(vocabulary)
    np.testing.assert_array_equal(ids, [3, 2, 4, 1, unknown, 0, unknown])


# ---------------------------------------------------------------------------- lm: text file


@pytest.fixture(scope="module")
def small_text_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    body = "".join(rng.choice(list("abcde \n"), size=2_991))
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(body + "XYZ é!Q.\n", encoding="utf-8")  # unseen in training
    return path


def test_lm_text_file(small_text_file):
    seq_len = 16
    texts = lm_module.read_text_file_splits(small_text_file)
    assert [len(texts[s]) for s in ("train", "validation", "test")] == [2_700, 150, 150]
    task = make_task(TaskConfig(name="lm", seq_len=seq_len, text_file=str(small_text_file)))
    assert task.vocabulary == tuple(sorted("abcde \n"))
    assert task.vocab_size == task.output_size == 8  # 7 characters + unknown
    assert task.data["train"].shape == (2_700,)
    assert set(task.baseline) == {"loss", "bits_per_token", "bpc", "perplexity", "bigram_loss"}
    assert task.baseline["loss"] == pytest.approx(math.log(7), abs=0.05)
    assert task.baseline["bpc"] == pytest.approx(task.baseline["loss"] / math.log(2))
    test_ids = lm_module.encode(texts["test"], task.vocabulary)
    assert np.sum(test_ids == 7) == 7  # "XYZ é!Q." has 7 unseen characters

    inputs, targets = jax.jit(task.sample, static_argnums=2)(task.data, jax.random.key(0), 64)
    assert inputs.shape == targets.shape == (64, seq_len)
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
    seeded_inputs, _ = jax.vmap(lambda key: task.sample(task.data, key, 64))(keys)
    np.testing.assert_array_equal(seeded_inputs[0], inputs)
    train_text = texts["train"]
    for row_inputs, row_targets in zip(np.asarray(inputs), np.asarray(targets), strict=True):
        window = "".join(task.vocabulary[i] for i in row_inputs) + task.vocabulary[row_targets[-1]]
        assert window in train_text

    for split in ("validation", "test"):
        batches = task.eval_data(split, 4)
        split_ids = lm_module.encode(texts[split], task.vocabulary)
        covered = np.concatenate([t[t != IGNORED_TARGET] for _, t, _ in batches])
        np.testing.assert_array_equal(covered, split_ids[1:])
        assert sum(w for *_, w in batches) == len(split_ids) - 1
        assert all(x.shape == (4, seq_len) for x, _, _ in batches)
    assert task.is_solved({"loss": task.baseline["bigram_loss"] - 0.01})
    assert not task.is_solved({"loss": task.baseline["bigram_loss"]})


# ---------------------------------------------------------------------------- lm: TFDS


@pytest.fixture(scope="module")
def offline_tfds_dir(tmp_path_factory) -> Path:
    """Prepare TFDS tiny_shakespeare from the shipped file with every socket connect refused."""

    def no_network(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    data_dir = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket.socket, "connect_ex", no_network)
        patch.setattr(socket, "create_connection", no_network)
        lm_module.read_tfds_splits("tiny_shakespeare", data_dir=str(data_dir))
    return data_dir


@pytest.mark.slow
def test_lm_tiny_shakespeare_through_tfds_offline(offline_tfds_dir):
    """PAPERS.md §3.1 and appendix: split sizes, 65 characters, unigram and bigram baselines."""
    assert (offline_tfds_dir / "tiny_shakespeare" / "1.0.0").is_dir()
    texts = lm_module.read_tfds_splits("tiny_shakespeare", data_dir=str(offline_tfds_dir))
    assert [len(texts[s]) for s in ("train", "validation", "test")] == [1_003_854, 55_770, 55_770]
    shipped = (lm_module.PACKAGED_TINY_SHAKESPEARE_DIR / "input.txt").read_text(encoding="utf-8")
    assert texts["train"] + texts["validation"] + texts["test"] == shipped

    seq_len = 128
    config = TaskConfig(name="lm", seq_len=seq_len, tfds_data_dir=str(offline_tfds_dir))
    task = make_task(config)
    assert len(task.vocabulary) == 65 and task.vocab_size == 66  # + the unknown id
    assert task.data["train"].shape == (1_003_854,)
    assert task.baseline["loss"] == pytest.approx(3.333, abs=5e-4)
    assert task.baseline["bigram_loss"] == pytest.approx(2.473, abs=5e-4)
    assert task.baseline["perplexity"] == pytest.approx(math.exp(task.baseline["loss"]))
    assert "2.473" in task.solved_rule

    for split in ("validation", "test"):
        batches = task.eval_data(split, 32)
        split_ids = lm_module.encode(texts[split], task.vocabulary)
        assert not np.any(split_ids == 65)  # every character occurs in training
        covered = np.concatenate([t[t != IGNORED_TARGET] for _, t, _ in batches])
        np.testing.assert_array_equal(covered, split_ids[1:])
        assert sum(w for *_, w in batches) == 55_769
    inputs, targets = jax.jit(task.sample, static_argnums=2)(task.data, jax.random.key(0), 8)
    assert inputs.shape == (8, seq_len) and int(jnp.max(targets)) < 65


def test_lm_explicit_manual_dir_without_input_txt_is_one_line_error(tmp_path):
    config = TaskConfig(name="lm", tfds_manual_dir=str(tmp_path), tfds_data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        make_task(config)
    assert_one_line(error, str(tmp_path))


# ---------------------------------------------------------------------------- bad inputs


def test_unknown_task_is_one_line_error():
    with pytest.raises(ValueError) as error:
        make_task(TaskConfig(name="copying"))
    assert_one_line(error, "copying", *TASKS)


@pytest.mark.parametrize("field", ["seq_len", "num_tokens", "eval_batches"])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_sizes_are_one_line_errors(field, value):
    with pytest.raises(ValueError) as error:
        make_task(TaskConfig(name="copy", **{field: value}))
    assert_one_line(error, field, str(value))


def test_task_specific_size_errors():
    with pytest.raises(ValueError) as error:
        make_task(TaskConfig(name="selective_copy", seq_len=8, num_tokens=16))
    assert_one_line(error, "L=8", "K=16")
    with pytest.raises(ValueError) as error:
        make_task(TaskConfig(name="adding", seq_len=1))
    assert_one_line(error, "seq_len >= 2")


def test_missing_text_file_is_one_line_error(tmp_path):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(FileNotFoundError) as error:
        make_task(TaskConfig(name="lm", text_file=str(missing)))
    assert_one_line(error, str(missing))


def test_text_file_shorter_than_a_window_is_one_line_error(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abcdefghij" * 10, encoding="utf-8")
    with pytest.raises(ValueError) as error:
        make_task(TaskConfig(name="lm", seq_len=100, text_file=str(path)))
    assert_one_line(error, "seq_len + 1")


def test_unknown_or_textless_tfds_dataset_is_one_line_error(tmp_path):
    with pytest.raises(ValueError) as error:
        make_task(TaskConfig(name="lm", corpus="no_such_corpus", tfds_data_dir=str(tmp_path)))
    assert_one_line(error, "no_such_corpus")
    with pytest.raises(ValueError) as error:  # mnist has no "text" feature; nothing downloads
        make_task(TaskConfig(name="lm", corpus="mnist", tfds_data_dir=str(tmp_path)))
    assert_one_line(error, "mnist", "text")
