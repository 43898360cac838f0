"""The copy (copying memory) task of Hochreiter & Schmidhuber (1997), in the form of
Arjovsky, Shah & Bengio (2016), "Unitary Evolution Recurrent Neural Networks".

Alphabet of 10 symbols, encoded as in the uRNN code (`memory_problem.py`): 0 = blank,
1-8 = data, 9 = delimiter. With delay T:

    input:  10 data symbols (uniform, with replacement), T - 1 blanks, delimiter, 10 blanks
    target: T + 10 blanks, then the 10 data symbols in order

Both have length T + 20. The loss is the cross-entropy averaged over all T + 20 steps; the
memoryless strategy (blank, then uniform guesses over the 8 data symbols) scores
10 ln 8 / (T + 20) nats and recalls 1/8 of the symbols.

The readout has 9 classes (0-8): the delimiter is never a target, as in the uRNN code
(`n_output=9`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gru_research.tasks.base import (
    Task,
    TaskConfig,
    no_eval_data,
    token_accuracy,
    token_cross_entropy,
)

BLANK = 0
DELIMITER = 9
NUM_DATA_SYMBOLS = 8  # data symbols are 1..8
NUM_RECALLED = 10
INPUT_VOCAB_SIZE = 10
NUM_OUTPUT_CLASSES = 9  # blank and the 8 data symbols; the delimiter is never a target
SOLVED_RECALL_ACCURACY = 0.99


def copy_sequence_length(seq_len: int) -> int:
    """Length of the inputs and targets for delay T: T + 20."""
    return seq_len + 2 * NUM_RECALLED


def copy_task_batch(key: jax.Array, batch_size: int, seq_len: int) -> tuple[jax.Array, jax.Array]:
    """One copy batch (Arjovsky et al., 2016): int32 `(inputs, targets)`, each (B, T + 20)."""
    data = jax.random.randint(
        key, (batch_size, NUM_RECALLED), 1, NUM_DATA_SYMBOLS + 1, dtype=jnp.int32
    )
    blanks_before_delimiter = jnp.full((batch_size, seq_len - 1), BLANK, jnp.int32)
    delimiter = jnp.full((batch_size, 1), DELIMITER, jnp.int32)
    trailing_blanks = jnp.full((batch_size, NUM_RECALLED), BLANK, jnp.int32)
    inputs = jnp.concatenate([data, blanks_before_delimiter, delimiter, trailing_blanks], axis=1)
    leading_blanks = jnp.full((batch_size, seq_len + NUM_RECALLED), BLANK, jnp.int32)
    targets = jnp.concatenate([leading_blanks, data], axis=1)
    return inputs, targets


def copy_metrics(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """Metrics "loss" (cross-entropy in nats over all T + 20 steps) and recall "accuracy"."""
    return {
        "loss": token_cross_entropy(logits, targets),
        "accuracy": token_accuracy(logits[:, -NUM_RECALLED:], targets[:, -NUM_RECALLED:]),
    }


def copy_baseline_loss(seq_len: int) -> float:
    """The memoryless cross-entropy 10 ln 8 / (T + 20) (Arjovsky et al., 2016)."""
    return NUM_RECALLED * math.log(NUM_DATA_SYMBOLS) / copy_sequence_length(seq_len)


def copy_is_solved(metrics: dict[str, float]) -> bool:
    """Solved when at least 99% of the recalled symbols are right."""
    return float(metrics["accuracy"]) >= SOLVED_RECALL_ACCURACY


def make_copy_task(config: TaskConfig) -> Task:
    """The copy task with delay `config.seq_len`."""
    seq_len = config.seq_len

    def sample(data: dict, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        del data
        return copy_task_batch(key, batch_size, seq_len)

    return Task(
        name="copy",
        vocab_size=INPUT_VOCAB_SIZE,
        input_size=INPUT_VOCAB_SIZE,
        output_size=NUM_OUTPUT_CLASSES,
        baseline={"loss": copy_baseline_loss(seq_len), "accuracy": 1.0 / NUM_DATA_SYMBOLS},
        solved_rule=f"recall accuracy >= {SOLVED_RECALL_ACCURACY} on the 10 recalled symbols",
        data={},
        sample=sample,
        metrics=copy_metrics,
        is_solved=copy_is_solved,
        eval_data=no_eval_data,
    )
