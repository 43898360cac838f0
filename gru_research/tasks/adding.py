"""The adding problem of Hochreiter & Schmidhuber (1997), in the form of
Arjovsky, Shah & Bengio (2016), "Unitary Evolution Recurrent Neural Networks".

Inputs of length T with two feature channels: values drawn from U[0, 1], and a marker channel
with exactly two ones, the first at a uniform position in [0, T/2) and the second in [T/2, T)
(T/2 rounded down, as the uRNN code's `randint(T/2)`). The target is the sum of the two
marked values, read from the model's output at the last step. The loss is the mean squared
error; always predicting 1 scores Var(U1 + U2) = 1/6 ~= 0.167.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gru_research.tasks.base import Task, TaskConfig, no_eval_data

NUM_INPUT_CHANNELS = 2  # channel 0: values, channel 1: markers
VALUE_CHANNEL = 0
MARKER_CHANNEL = 1
BASELINE_MSE = 1.0 / 6.0
SOLVED_MSE = 0.01


def adding_task_batch(key: jax.Array, batch_size: int, seq_len: int) -> tuple[jax.Array, jax.Array]:
    """One adding batch (Arjovsky et al., 2016): float32 inputs (B, T, 2), targets (B,)."""
    values_key, first_key, second_key = jax.random.split(key, 3)
    half = seq_len // 2
    values = jax.random.uniform(values_key, (batch_size, seq_len), jnp.float32)
    first = jax.random.randint(first_key, (batch_size,), 0, half)
    second = jax.random.randint(second_key, (batch_size,), half, seq_len)
    positions = jnp.arange(seq_len)
    markers = (positions == first[:, None]) | (positions == second[:, None])
    markers = markers.astype(jnp.float32)
    inputs = jnp.stack([values, markers], axis=-1)
    targets = jnp.sum(values * markers, axis=1)
    return inputs, targets


def adding_metrics(outputs: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """Metric "loss": the mean squared error of the last step's output `outputs[:, -1, 0]`."""
    prediction = outputs[:, -1, 0].astype(jnp.float32)
    return {"loss": jnp.mean(jnp.square(prediction - targets))}


def adding_is_solved(metrics: dict[str, float]) -> bool:
    """Solved when the mean squared error is below 0.01."""
    return float(metrics["loss"]) < SOLVED_MSE


def make_adding_task(config: TaskConfig) -> Task:
    """The adding problem with length `config.seq_len` (at least 2)."""
    seq_len = config.seq_len
    if seq_len < 2:
        raise ValueError(f"adding needs seq_len >= 2 (one marker in each half), got {seq_len}")

    def sample(data: dict, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        del data
        return adding_task_batch(key, batch_size, seq_len)

    return Task(
        name="adding",
        vocab_size=None,
        input_size=NUM_INPUT_CHANNELS,
        output_size=1,
        baseline={"loss": BASELINE_MSE},
        solved_rule=f"mean squared error < {SOLVED_MSE}",
        data={},
        sample=sample,
        metrics=adding_metrics,
        is_solved=adding_is_solved,
        eval_data=no_eval_data,
    )
