"""State tracking with length generalisation: parity, a running sum modulo m, and a position on
a cycle (docs/design.md §6.5).

Each sequence is a string of tokens whose answer is a state updated token by token: the
parity of the 1s (tokens 0 and 1), the digit sum modulo m (tokens 0 .. m − 1), or the position
on a cycle of m places that starts at 0 and moves by token 0: +1, token 1: −1, token 2: stay.
Evaluation asks for the state at each sequence's last real step; training does too, or, with
``answer="every"``, after every step (denser supervision of the same state).

Training lengths are drawn per sequence from 3 to ``seq_len`` (40 by default) and the batch
is right-padded to ``seq_len``; evaluation draws longer sequences, an equal share in each of
the buckets [40, 64), [64, 128) and [128, 256], padded to 256, as in the formal-language
experiments of Beck et al. (2024), "xLSTM", and Grazzi et al. (2024), "Unlocking State-Tracking
in Linear RNNs Through Negative Eigenvalues". Grazzi et al. prove that a diagonal linear RNN
whose transitions have only positive eigenvalues cannot solve parity; negative eigenvalues can,
and counting modulo m ≥ 3 needs complex ones; an LSTM or GRU can do both.

Metrics: "loss" and "accuracy" over the answered steps; on evaluation the same per length
bucket ("accuracy_40_64", ...) and "worst_accuracy", the lowest bucket's, the headline:
solved when it is at least 0.95. Guessing scores ln m nats and 1/m.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gru_research.config import ANSWERS
from gru_research.tasks.base import (
    IGNORED_TARGET,
    Task,
    TaskConfig,
    no_eval_data,
    token_accuracy,
    token_cross_entropy,
)

MIN_TRAIN_LENGTH = 3
EVAL_BUCKETS = ((40, 64), (64, 128), (128, 257))
"""Evaluation lengths [low, high), the last one [128, 256]."""
EVAL_LENGTH = EVAL_BUCKETS[-1][1] - 1
SOLVED_ACCURACY = 0.95
CYCLE_MOVES = (1, -1, 0)
"""cycle_nav: the move of tokens 0, 1 and 2."""


def bucket_name(bucket: tuple[int, int]) -> str:
    """ "40_64" for [40, 64); the last bucket is named by its inclusive end, "128_256"."""
    low, high = bucket
    return f"{low}_{min(high, EVAL_LENGTH)}"


BUCKET_NAMES = tuple(bucket_name(b) for b in EVAL_BUCKETS)


def classes_of(name: str, modulus: int) -> int:
    """The number of answers: 2 for parity, m for the others."""
    return 2 if name == "parity" else modulus


def vocabulary_size(name: str, modulus: int) -> int:
    """Input tokens: bits, the digits 0 .. m − 1, or the three moves."""
    return {"parity": 2, "mod_sum": modulus, "cycle_nav": len(CYCLE_MOVES)}[name]


def token_steps(name: str, tokens: jax.Array) -> jax.Array:
    """What each token adds to the state before the modulus (a bit, a digit, a move)."""
    if name == "cycle_nav":
        return jnp.asarray(CYCLE_MOVES, jnp.int32)[tokens]
    return tokens


def running_states(name: str, tokens: jax.Array, modulus: int) -> jax.Array:
    """The state after each token, (B, T): the running sum of the steps modulo the classes."""
    return jnp.cumsum(token_steps(name, tokens), axis=1) % classes_of(name, modulus)


def state_tracking_batch(
    name: str,
    key: jax.Array,
    lengths: jax.Array,
    padded_length: int,
    modulus: int = 5,
    answer: str = "last",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One batch of sequences of the given ``lengths`` (B,), right-padded to ``padded_length``.

    Returns int32 tokens (B, T) (0 at padding) and targets {"labels": (B, T), "lengths": (B,)}:
    the state after each answered step, ``IGNORED_TARGET`` elsewhere.
    """
    batch = lengths.shape[0]
    tokens = jax.random.randint(
        key, (batch, padded_length), 0, vocabulary_size(name, modulus), dtype=jnp.int32
    )
    steps = jnp.arange(padded_length)[None, :]
    real = steps < lengths[:, None]
    tokens = jnp.where(real, tokens, 0)
    answered = real if answer == "every" else steps == lengths[:, None] - 1
    labels = jnp.where(answered, running_states(name, tokens, modulus), IGNORED_TARGET)
    return tokens, {"labels": labels, "lengths": lengths}


def train_lengths(key: jax.Array, batch_size: int, longest: int) -> jax.Array:
    """Training lengths, uniform on [3, longest]."""
    return jax.random.randint(key, (batch_size,), MIN_TRAIN_LENGTH, longest + 1)


def eval_lengths(key: jax.Array, batch_size: int) -> jax.Array:
    """Evaluation lengths: row i in bucket i mod 3, uniform within it, so every batch holds
    the same number of sequences of each bucket."""
    buckets = np.arange(batch_size) % len(EVAL_BUCKETS)
    low = jnp.asarray([EVAL_BUCKETS[b][0] for b in buckets])
    high = jnp.asarray([EVAL_BUCKETS[b][1] for b in buckets])
    return jax.random.randint(key, (batch_size,), low, high)


def tracking_metrics(logits: jax.Array, targets: dict) -> dict[str, jax.Array]:
    """ "loss" (cross-entropy, nats) and "accuracy" over the answered steps."""
    labels = targets["labels"]
    return {"loss": token_cross_entropy(logits, labels), "accuracy": token_accuracy(logits, labels)}


def bucketed_metrics(logits: jax.Array, targets: dict) -> dict[str, jax.Array]:
    """:func:`tracking_metrics` overall and within each length bucket."""
    metrics = tracking_metrics(logits, targets)
    lengths = targets["lengths"]
    for (low, high), name in zip(EVAL_BUCKETS, BUCKET_NAMES, strict=True):
        inside = ((lengths >= low) & (lengths < high))[:, None]
        labels = jnp.where(inside, targets["labels"], IGNORED_TARGET)
        for metric, value in tracking_metrics(logits, {"labels": labels}).items():
            metrics[f"{metric}_{name}"] = value
    return metrics


def with_worst_bucket(means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ "worst_accuracy": the lowest bucket accuracy, per seed, of the split's mean metrics."""
    buckets = np.stack([np.asarray(means[f"accuracy_{n}"]) for n in BUCKET_NAMES])
    return means | {"worst_accuracy": buckets.min(axis=0)}


def state_tracking_is_solved(metrics: dict[str, float]) -> bool:
    """Solved when every length bucket is answered with at least 95% accuracy."""
    return float(metrics["worst_accuracy"]) >= SOLVED_ACCURACY


def make_state_tracking_task(config: TaskConfig) -> Task:
    """``config.name`` (parity, mod_sum or cycle_nav), trained on lengths 3 .. ``seq_len``."""
    name, longest, modulus, answer = config.name, config.seq_len, config.modulus, config.answer
    if longest < MIN_TRAIN_LENGTH:
        raise ValueError(f"{name} trains on lengths {MIN_TRAIN_LENGTH}..seq_len: seq_len must be"
                         f" >= {MIN_TRAIN_LENGTH}, got {longest}")  # fmt: skip
    if modulus < 2:
        raise ValueError(f"modulus must be at least 2, got {modulus}")
    if answer not in ANSWERS:
        raise ValueError(f"unknown answer {answer!r}; valid: {', '.join(ANSWERS)}")
    classes = classes_of(name, modulus)

    def sampler(lengths_of: Callable, padded_length: int, answer: str):
        def sample(data: dict, key: jax.Array, batch_size: int):
            del data
            length_key, token_key = jax.random.split(key)
            lengths = lengths_of(length_key, batch_size)
            return state_tracking_batch(name, token_key, lengths, padded_length, modulus, answer)

        return sample

    chance = {"loss": math.log(classes), "accuracy": 1.0 / classes}
    buckets = {f"{m}_{b}": v for m, v in chance.items() for b in BUCKET_NAMES}
    return Task(
        name=name,
        vocab_size=vocabulary_size(name, modulus),
        input_size=vocabulary_size(name, modulus),
        output_size=classes,
        baseline=chance | buckets | {"worst_accuracy": chance["accuracy"]},
        solved_rule=f"accuracy >= {SOLVED_ACCURACY} in every test length bucket "
        f"({', '.join(BUCKET_NAMES)})",
        data={},
        sample=sampler(lambda k, b: train_lengths(k, b, longest), longest, answer),
        metrics=tracking_metrics,
        is_solved=state_tracking_is_solved,
        eval_data=no_eval_data,
        seq_lengths=lambda targets: targets["lengths"],
        eval_sample=sampler(eval_lengths, EVAL_LENGTH, "last"),
        eval_metrics=bucketed_metrics,
        derived_metrics=with_worst_bucket,
    )
