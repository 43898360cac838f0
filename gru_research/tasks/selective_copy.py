"""Selective copying of Gu & Dao (2023), "Mamba", with the generator of Feng et al. (2024),
"Were RNNs All We Needed?" (BorealisAI/minRNNs, `data/selective_copy.py`).

Vocabulary of 16: 15 = empty (noise), 0 = query marker, data tokens 1-14. K data tokens sit at
sorted, distinct random positions of a length-L sequence of empty tokens; K query markers
follow (input length L + K). The target is the K tokens in positional order, scored on the
last K outputs only. Guessing uniformly over the data tokens scores ln 14 nats and 1/14.
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

VOCAB_SIZE = 16
EMPTY = 15
QUERY_MARKER = 0
NUM_DATA_TOKENS = 14  # data tokens are 1..14
SOLVED_ACCURACY = 0.95


def selective_copy_batch(
    key: jax.Array, batch_size: int, seq_len: int, num_tokens: int
) -> tuple[jax.Array, jax.Array]:
    """One selective-copy batch (Gu & Dao, 2023; Feng et al., 2024).

    Returns int32 inputs (B, L + K) and targets (B, K), with L = `seq_len`, K = `num_tokens`.
    """
    token_key, position_key = jax.random.split(key)
    tokens = jax.random.randint(
        token_key, (batch_size, num_tokens), 1, NUM_DATA_TOKENS + 1, dtype=jnp.int32
    )
    # The K largest of L i.i.d. uniforms sit at a uniformly random K-subset of positions.
    scores = jax.random.uniform(position_key, (batch_size, seq_len))
    _, positions = jax.lax.top_k(scores, num_tokens)
    positions = jnp.sort(positions, axis=1)
    rows = jnp.arange(batch_size)[:, None]
    sequence = jnp.full((batch_size, seq_len), EMPTY, jnp.int32).at[rows, positions].set(tokens)
    queries = jnp.full((batch_size, num_tokens), QUERY_MARKER, jnp.int32)
    return jnp.concatenate([sequence, queries], axis=1), tokens


def make_selective_copy_metrics(num_tokens: int):
    """Metrics on the last K outputs: "loss" (cross-entropy, nats) and "accuracy"."""

    def selective_copy_metrics(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        recall_logits = logits[:, -num_tokens:]
        return {
            "loss": token_cross_entropy(recall_logits, targets),
            "accuracy": token_accuracy(recall_logits, targets),
        }

    return selective_copy_metrics


def selective_copy_is_solved(metrics: dict[str, float]) -> bool:
    """Solved when at least 95% of the recalled tokens are right."""
    return float(metrics["accuracy"]) >= SOLVED_ACCURACY


def make_selective_copy_task(config: TaskConfig) -> Task:
    """Selective copying with L = `config.seq_len` and K = `config.num_tokens` (L >= K)."""
    seq_len, num_tokens = config.seq_len, config.num_tokens
    if seq_len < num_tokens:
        raise ValueError(
            f"selective_copy needs seq_len (L) >= num_tokens (K) to place K tokens at distinct"
            f" positions, got L={seq_len}, K={num_tokens}"
        )

    def sample(data: dict, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        del data
        return selective_copy_batch(key, batch_size, seq_len, num_tokens)

    return Task(
        name="selective_copy",
        vocab_size=VOCAB_SIZE,
        input_size=VOCAB_SIZE,
        output_size=VOCAB_SIZE,
        baseline={"loss": math.log(NUM_DATA_TOKENS), "accuracy": 1.0 / NUM_DATA_TOKENS},
        solved_rule=f"accuracy >= {SOLVED_ACCURACY} on the last K (recalled) tokens",
        data={},
        sample=sample,
        metrics=make_selective_copy_metrics(num_tokens),
        is_solved=selective_copy_is_solved,
        eval_data=no_eval_data,
    )
