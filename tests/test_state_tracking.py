"""State tracking: each generator against labels computed in plain Python, the length ranges,
the per-bucket metrics, padding that changes nothing, and one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research.config import TrainConfig
from gru_research.model import seed_keys
from gru_research.tasks import IGNORED_TARGET, TaskConfig, make_task
from gru_research.tasks.state_tracking import EVAL_BUCKETS, with_worst_bucket
from gru_research.train import build_program, train


def brute_force_state(name: str, tokens: list[int], modulus: int) -> int:
    """The answer after ``tokens``, by the task's definition, one token at a time."""
    if name == "parity":
        return sum(1 for t in tokens if t == 1) % 2
    if name == "mod_sum":
        total = 0
        for digit in tokens:
            total = (total + digit) % modulus
        return total
    position = 0  # cycle_nav: 0 moves +1, 1 moves −1, 2 stays
    for move in tokens:
        position = (position + {0: 1, 1: -1, 2: 0}[move]) % modulus
    return position


@pytest.mark.parametrize(
    "name,modulus", [("parity", 5), ("mod_sum", 5), ("mod_sum", 3), ("cycle_nav", 5)]
)
@pytest.mark.parametrize("answer", ["last", "every"])
@pytest.mark.parametrize("split", ["train", "eval"])
def test_labels_equal_the_brute_force_state(name, modulus, answer, split):
    task = make_task(TaskConfig(name=name, seq_len=40, modulus=modulus, answer=answer))
    sample = task.sample if split == "train" else task.eval_sample
    tokens, targets = jax.tree.map(np.asarray, sample({}, jax.random.key(7), 48))
    labels, lengths = targets["labels"], targets["lengths"]
    assert tokens.max() < task.vocab_size and len(np.unique(tokens)) == task.vocab_size
    for row in range(len(tokens)):
        n = int(lengths[row])
        every = answer == "every" and split == "train"  # evaluation asks at the end
        answered = range(n) if every else [n - 1]
        for t in range(tokens.shape[1]):
            expected = (
                brute_force_state(name, tokens[row, : t + 1].tolist(), modulus)
                if t in answered
                else IGNORED_TARGET
            )
            assert labels[row, t] == expected, (row, t)
        assert np.all(tokens[row, n:] == 0)


def test_train_and_test_lengths_respect_their_ranges():
    task = make_task(TaskConfig(name="parity", seq_len=40))
    tokens, targets = task.sample({}, jax.random.key(0), 4096)
    lengths = np.asarray(targets["lengths"])
    assert tokens.shape == (4096, 40)
    assert lengths.min() == 3 and lengths.max() == 40  # both ends drawn
    tokens, targets = task.eval_sample({}, jax.random.key(1), 3000)
    lengths = np.asarray(targets["lengths"])
    assert tokens.shape == (3000, 256)
    assert lengths.min() == 40 and lengths.max() == 256
    for b, (low, high) in enumerate(EVAL_BUCKETS):
        rows = lengths[b :: len(EVAL_BUCKETS)]
        assert len(rows) == 1000 and rows.min() >= low and rows.max() < high
    shorter = make_task(TaskConfig(name="parity", seq_len=10)).sample({}, jax.random.key(0), 512)
    assert np.asarray(shorter[1]["lengths"]).max() == 10


def test_bucket_metrics_and_the_worst_bucket():
    task = make_task(TaskConfig(name="mod_sum", modulus=5))
    lengths = jnp.asarray([50, 70, 200, 60])
    labels = jnp.full((4, 256), IGNORED_TARGET).at[jnp.arange(4), lengths - 1].set(3)
    right, wrong = jax.nn.one_hot(3, 5) * 10, jax.nn.one_hot(1, 5) * 10
    logits = jnp.zeros((4, 256, 5)).at[:, :].set(right).at[2].set(wrong).at[3].set(wrong)
    metrics = task.eval_metrics(logits, {"labels": labels, "lengths": lengths})
    assert metrics["accuracy_40_64"] == 0.5  # rows 0 and 3
    assert metrics["accuracy_64_128"] == 1.0
    assert metrics["accuracy_128_256"] == 0.0
    assert metrics["accuracy"] == 0.5
    means = with_worst_bucket({k: np.asarray([v, 1.0]) for k, v in metrics.items()})
    np.testing.assert_array_equal(means["worst_accuracy"], [0.0, 1.0])
    assert not task.is_solved({"worst_accuracy": 0.949}) and task.is_solved(
        {"worst_accuracy": 0.95}
    )
    assert task.baseline["accuracy"] == task.baseline["worst_accuracy"] == 0.2
    assert task.baseline["loss_64_128"] == pytest.approx(np.log(5))


@pytest.mark.parametrize("answer", ["last", "every"])
@pytest.mark.parametrize("bidirectional", [None, "concat"])
def test_padding_changes_no_loss(bidirectional, answer):
    """The tokens past each length do not move the evaluated metrics: the training program
    passes the lengths to the model (a backward layer would read the padding otherwise)."""
    config = TrainConfig(task="parity", seq_len=30, answer=answer, hidden=8,
                         bidirectional=bidirectional)  # fmt: skip
    task = make_task(config.task_config())
    program = build_program(config, task, config.model_config(task))
    params = program.init(seed_keys([0]))["params"]
    tokens, targets = task.eval_sample({}, jax.random.key(1), 16)
    padding = np.arange(tokens.shape[1])[None, :] >= np.asarray(targets["lengths"])[:, None]
    scrambled = jnp.where(padding, 1 - tokens, tokens)
    assert np.any(scrambled != tokens)
    for name, value in program.evaluate(params, tokens, targets).items():
        np.testing.assert_allclose(value, program.evaluate(params, scrambled, targets)[name],
                                   rtol=1e-6, err_msg=name)  # fmt: skip


@pytest.mark.slow
def test_a_short_run_logs_every_bucket(tmp_path):
    summary = train(
        TrainConfig(
            task="cycle_nav", seq_len=12, hidden=8, batch_size=12, steps=20, log_every=10,
            eval_every=20, checkpoint_every=20, eval_batches=1,
        ),
        tmp_path / "run",
        progress=False,
    )  # fmt: skip
    names = {"loss", "accuracy", "worst_accuracy"} | {
        f"{m}_{b}" for m in ("loss", "accuracy") for b in ("40_64", "64_128", "128_256")
    }
    assert set(summary["final"]) == names
    worst = min(summary["final"][f"accuracy_{b}"][0] for b in ("40_64", "64_128", "128_256"))
    assert summary["final"]["worst_accuracy"][0] == worst
    assert summary["baseline"]["worst_accuracy"] == 0.2


@pytest.mark.parametrize(
    "change,fragment",
    [
        (dict(modulus=1), "modulus must be an integer >= 2"),
        (dict(answer="first"), "answer"),
        (dict(seq_len=2), "seq_len must be >= 3"),
    ],
)
def test_bad_options_are_one_line(change, fragment):
    with pytest.raises(ValueError) as error:
        make_task(TrainConfig(task="parity", **change).task_config())
    assert "\n" not in str(error.value) and fragment in str(error.value), str(error.value)
