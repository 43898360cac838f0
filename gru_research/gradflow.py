"""Gradient flow through time: ||dL_T / dh_t|| for t = 1..T, in one backward pass.

The loss L_T is the loss at the last step only. A zero perturbation ε_t is added to the carry
after every step, carry_t ← step(carry_{t−1}, x_t) + ε_t, so that dL_T / dε_t = dL_T / dcarry_t.
One ``jax.grad`` with respect to all the ε then gives the whole curve, where a naive approach
would need T backward passes. Seeds are vmapped. For the LSTM family the norm is taken over
the whole carry (c and h concatenated), and separately over h (DESIGN.md §5).

The decay rate of a curve is the least-squares slope of log ||dL_T / dh_t|| against the
distance T − t. A plain tanh RNN's gradient vanishes at a rate that gates are meant to slow
(Hochreiter, 1991; Bengio et al., 1994).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gru_research.cells import input_projection, step_from_projection
from gru_research.model import ModelConfig, _apply_dense, init_population, seed_keys
from gru_research.tasks import Task
from gru_research.tasks.base import token_cross_entropy

GRADFLOW_TASKS = ("copy", "adding", "lm")


def last_step_loss(task: Task, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """The loss at the last step: the adding MSE (it is already), or the last token's
    cross-entropy."""
    if task.name == "adding":
        return task.metrics(outputs, targets)["loss"]
    return token_cross_entropy(outputs[:, -1:], targets[:, -1:])


def carry_gradients(params, config: ModelConfig, task: Task, inputs, targets):
    """dL_T / dcarry_t for every t: a carry-shaped tree of (T, B, H) arrays, one seed."""
    design, layer = config.design, params["layers"][0]
    x = params["embed"][inputs] if config.vocab_size else inputs
    pre = input_projection(layer, design, jnp.swapaxes(x, 0, 1))
    batch, length = x.shape[0], x.shape[1]
    zero = jnp.zeros((batch, config.hidden_size))
    carry0 = (zero, zero) if design.family == "lstm" else zero

    def loss(perturbation):
        def step(carry, inputs):
            pre_t, eps_t = inputs
            carry = jax.tree.map(
                jnp.add, step_from_projection(layer, design, carry, pre_t)[0], eps_t
            )
            return carry, None

        last, _ = jax.lax.scan(step, carry0, (pre, perturbation))
        h_last = last[1] if design.family == "lstm" else last
        outputs = _apply_dense(params["readout"], h_last)[:, None]
        return last_step_loss(task, outputs, targets)

    zeros = jax.tree.map(lambda c: jnp.zeros((length,) + c.shape), carry0)
    return jax.grad(loss)(zeros)


def gradient_norms(params, config: ModelConfig, task: Task, inputs, targets) -> dict:
    """{"carry": (T,), "h": (T,)}: the batch-mean norm of dL_T / dcarry_t and dL_T / dh_t."""
    grads = carry_gradients(params, config, task, inputs, targets)
    parts = grads if config.design.family == "lstm" else (grads,)
    carry = jnp.sqrt(sum(jnp.sum(g**2, axis=-1) for g in parts)).mean(axis=1)
    h = jnp.linalg.norm(parts[-1], axis=-1).mean(axis=1)
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


def check_single_layer(config: ModelConfig) -> None:
    if config.num_layers != 1 or config.block != "plain" or config.bidirectional:
        raise ValueError("gradflow measures one plain, unidirectional recurrent layer (--layers 1)")


def population_norms(population, config: ModelConfig, task: Task, key: jax.Array, batch: int):
    """Gradient norms of every seed (vmapped) on one shared batch: {"carry", "h"}: (S, T)."""
    check_single_layer(config)
    inputs, targets = task.sample(task.data, key, batch)
    fn = jax.jit(jax.vmap(lambda p: gradient_norms(p, config, task, inputs, targets)))
    return jax.tree.map(np.asarray, fn(population))


def initial_population(config: ModelConfig, seeds: list[int]):
    return init_population(seed_keys(seeds), config)


def trained_population(run_dir: str | Path):
    """(TrainConfig, task, ModelConfig, params of every seed) from a run folder's last
    checkpoint."""
    from gru_research.tasks import make_task
    from gru_research.train import _checkpoint_manager, _restore, build_program, load_run_config

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    task = make_task(config.task_config())
    model = config.model_config(task)
    program = build_program(config, task, model)
    state = program.init(seed_keys(config.seed_list))
    manager = _checkpoint_manager(run_dir)
    latest = manager.latest_step()
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'}")
    state = _restore(manager, latest, state)
    manager.close()
    return config, task, model, state["params"]


def initial_curves(
    cells: list[str], task: str, seq_len: int, hidden: int, seeds: int, batch: int, key
) -> dict[str, dict]:
    """{design: norms (S, T)} at initialisation, one-layer models of ``hidden`` units."""
    from gru_research.tasks import make_task
    from gru_research.train import TrainConfig

    curves = {}
    for cell in cells:
        config = TrainConfig(task=task, cell=cell, seq_len=seq_len, hidden=hidden, layers=1)
        task_ = make_task(config.task_config())
        model = config.model_config(task_)
        params = initial_population(model, list(range(seeds)))
        curves[cell] = population_norms(params, model, task_, key, batch)
    return curves


def trained_curves(run_dirs: list[str | Path], batch: int, key) -> dict[str, dict]:
    """{"DESIGN (trained, RUN)": norms (S, T)} of the seeds of each run folder."""
    curves = {}
    for run in run_dirs:
        config, task, model, params = trained_population(run)
        norms = population_norms(params, model, task, key, batch)
        curves[f"{config.cell} (trained, {Path(run).name})"] = norms
    return curves


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
