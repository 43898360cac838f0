"""Gradient flow through time: ||dL_T / dh_t|| for t = 1..T, in one backward pass.

The loss L_T is the loss at the last step only. A zero offset ε_t is added to the carry after
every step of a layer, carry_t ← step(carry_{t−1}, x_t) + ε_t (``run_layer``'s
``carry_offsets``), so that dL_T / dε_t = dL_T / dcarry_t. One ``jax.grad`` with respect to all
the ε then gives the whole curve, where a naive approach would need T backward passes. It works
for any model of forward layers, plain or residual, one layer at a time; seeds are vmapped. For
the LSTM family the norm is taken over the whole carry (c and h concatenated), and separately
over h (docs/design.md §8).

The decay rate of a curve is the least-squares slope of log ||dL_T / dh_t|| against the
distance T − t. A plain tanh RNN's gradient vanishes at a rate that gates are meant to slow
(Hochreiter, 1991; Bengio et al., 1994).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gru_research.cells import split_carry
from gru_research.model import ModelConfig, apply_model, init_population, initial_carries, seed_keys
from gru_research.tasks import Task
from gru_research.tasks.base import token_cross_entropy

GRADFLOW_TASKS = ("copy", "adding", "lm")


def last_step_loss(task: Task, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """The loss at the last step: the adding MSE (it is already), or the last token's
    cross-entropy."""
    if task.name == "adding":
        return task.metrics(outputs[:, -1:], targets)["loss"]
    return token_cross_entropy(outputs[:, -1:], targets[:, -1:])


def carry_gradients(params, config: ModelConfig, task: Task, inputs, targets, layer: int = 0):
    """dL_T / dcarry_t for every t of one layer: a carry-shaped tree of (B, T, H), one seed."""
    if config.bidirectional:
        raise ValueError("gradflow measures forward layers (a bidirectional model has no L_T)")
    if not 0 <= layer < config.num_layers:
        raise ValueError(f"layer {layer} out of range: the model has {config.num_layers}")
    length = inputs.shape[1]
    carry, _ = split_carry(config.design, initial_carries(params, config, inputs.shape[0])[layer])
    zeros = jax.tree.map(lambda c: jnp.zeros((c.shape[0], length, c.shape[-1])), carry)

    def loss(offsets):
        per_layer = [offsets if i == layer else None for i in range(config.num_layers)]
        outputs, _ = apply_model(params, config, inputs, carry_offsets=per_layer)
        return last_step_loss(task, outputs, targets)

    return jax.grad(loss)(zeros)


def gradient_norms(params, config: ModelConfig, task: Task, inputs, targets, layer: int = 0):
    """{"carry": (T,), "h": (T,)}: the batch-mean norm of dL_T / dcarry_t and dL_T / dh_t."""
    grads = carry_gradients(params, config, task, inputs, targets, layer)
    parts = (grads[0], grads[-1]) if config.design.family == "lstm" else (grads,)  # c and h
    carry = jnp.sqrt(sum(jnp.sum(g**2, axis=-1) for g in parts)).mean(axis=0)
    h = jnp.linalg.norm(parts[-1], axis=-1).mean(axis=0)
    return {"carry": carry, "h": h}


def decay_rate(norms: np.ndarray) -> float:
    """Least-squares slope of log-norm against the distance T − t (per step; negative:
    vanishing). Zero norms (no path at all) are left out."""
    norms = np.asarray(norms, np.float64)
    distance = np.arange(len(norms))[::-1]
    keep = norms > 0
    if keep.sum() < 2:
        return float("nan")
    slope, _ = np.polyfit(distance[keep], np.log(norms[keep]), 1)
    return float(slope)


def population_norms(
    population, config: ModelConfig, task: Task, key: jax.Array, batch: int, layer: int = 0
):
    """Gradient norms of every seed (vmapped) on one shared batch: {"carry", "h"}: (S, T)."""
    inputs, targets = task.sample(task.data, key, batch)
    fn = jax.jit(jax.vmap(lambda p: gradient_norms(p, config, task, inputs, targets, layer)))
    return jax.tree.map(np.asarray, fn(population))


def initial_curves(
    cells: list[str], task: str, seq_len: int, hidden: int, seeds: int, batch: int, key
) -> dict[str, dict]:
    """{design: norms (S, T)} at initialisation, one-layer models of ``hidden`` units."""
    from gru_research.config import TrainConfig
    from gru_research.tasks import make_task

    curves = {}
    for cell in cells:
        config = TrainConfig(task=task, cell=cell, seq_len=seq_len, hidden=hidden, layers=1)
        task_ = make_task(config.task_config())
        model = config.model_config(task_)
        params = init_population(seed_keys(range(seeds)), model)
        curves[cell] = population_norms(params, model, task_, key, batch)
    return curves


def run_curves(run_dir: str | Path, batch: int, key, layer: int = 0) -> dict:
    """The norms (S, T) of the trained seeds of a run folder (its last checkpoint)."""
    from gru_research.train import load_run

    _, task, model, params = load_run(run_dir)
    return population_norms(params, model, task, key, batch, layer)


def write_curves(curves: dict[str, dict], out_dir: str | Path, title: str) -> dict[str, float]:
    """CSV (design, t, distance, mean, std over seeds) and a log-scale plot, one line per
    design (the mean, its band the seeds' range); returns each design's decay rate of the mean
    curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, rates = ["design,t,distance,mean,std"], {}
    fig, ax = plt.subplots(figsize=(7, 4))
    for design, norms in curves.items():
        values = np.asarray(norms["h"])  # (S, T)
        mean, std = values.mean(axis=0), values.std(axis=0)
        length = len(mean)
        for t in range(length):
            rows.append(f"{design},{t + 1},{length - 1 - t},{mean[t]:.6g},{std[t]:.6g}")
        rates[design] = decay_rate(mean)
        distance = np.arange(length)[::-1]
        ax.plot(distance, mean, label=f"{design} ({rates[design]:+.3f}/step)")
        low, high = values.min(axis=0), values.max(axis=0)  # the seeds' range, log-friendly
        ax.fill_between(distance, np.maximum(low, 1e-30), high, alpha=0.2)
    ax.set(yscale="log", xlabel="distance T − t", ylabel="||dL_T / dh_t||", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "gradflow.png", dpi=120)
    plt.close(fig)
    (out_dir / "gradflow.csv").write_text("\n".join(rows) + "\n")
    return rates
