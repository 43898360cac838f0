"""Gradient flow through time: one backward pass equals T separate ones; known decay rates."""

import dataclasses
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research import gradflow
from gru_research.cells import input_projection, step_from_projection
from gru_research.gates import PRESETS, Candidate
from gru_research.model import apply_model, init_model
from gru_research.tasks import make_task
from gru_research.train import TrainConfig, load_run, train


def _setup(cell: str, task_name: str = "copy", seq_len: int = 6, hidden: int = 5):
    config = TrainConfig(task=task_name, cell=cell, seq_len=seq_len, hidden=hidden)
    task = make_task(config.task_config())
    model = config.model_config(task)
    params = init_model(jax.random.key(0), model)
    inputs, targets = task.sample(task.data, jax.random.key(1), 3)
    return model, task, params, inputs, targets


def _norms_one_step_at_a_time(model, task, params, inputs, targets):
    """dL_T / dh_t by a separate jax.grad per t: run to step t, differentiate the rest."""
    design, layer = model.design, params["layers"][0]
    x = params["embed"][inputs] if model.vocab_size else inputs
    steps = [input_projection(layer, design, x[:, t]) for t in range(x.shape[1])]
    zero = jnp.zeros((x.shape[0], model.hidden_size))
    carry = (zero, zero) if design.family == "lstm" else zero
    carries = []
    for pre_t in steps:
        carry = step_from_projection(layer, design, carry, pre_t)[0]
        carries.append(carry)

    def loss_from(carry, t):
        for pre_t in steps[t + 1 :]:
            carry = step_from_projection(layer, design, carry, pre_t)[0]
        h = carry[1] if design.family == "lstm" else carry
        logits = h @ params["readout"]["w"] + params["readout"]["b"]
        return gradflow.last_step_loss(task, logits[:, None], targets)

    norms = []
    for t, carry_t in enumerate(carries):
        grads = jax.grad(loss_from)(carry_t, t)
        h_grad = grads[1] if design.family == "lstm" else grads
        norms.append(jnp.linalg.norm(h_grad, axis=-1).mean())
    return jnp.stack(norms)


@pytest.mark.parametrize(
    ("cell", "task_name"),
    [
        pytest.param("gru", "copy", marks=pytest.mark.slow),
        ("lstm", "adding"),
        ("gru", "adding"),
        pytest.param("min_gru", "copy", marks=pytest.mark.slow),
        pytest.param("lstm", "copy", marks=pytest.mark.slow),
        pytest.param("min_gru", "adding", marks=pytest.mark.slow),
    ],
)
def test_one_backward_pass_equals_a_gradient_per_step(cell, task_name):
    model, task, params, inputs, targets = _setup(cell, task_name)
    curve = gradflow.gradient_norms(params, model, task, inputs, targets)["h"]
    expected = _norms_one_step_at_a_time(model, task, params, inputs, targets)
    np.testing.assert_allclose(curve, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("a", [0.9, -0.5])
def test_linear_recurrence_decays_at_log_abs_a(a):
    """h_t = a h_{t−1} + W x_t: dL_T/dh_t = a^(T−t) dL_T/dh_T, so the slope is log|a|."""
    linear = dataclasses.replace(
        PRESETS["rnn_tanh"], name="linear_rnn", candidate=Candidate(activation="identity")
    )
    config = TrainConfig(task="adding", seq_len=12, hidden=4)
    task = make_task(config.task_config())
    model = dataclasses.replace(config.model_config(task), cell=linear)
    params = init_model(jax.random.key(0), model)
    params["layers"][0]["U"]["h"] = a * jnp.eye(4)
    inputs, targets = task.sample(task.data, jax.random.key(1), 8)
    norms = gradflow.gradient_norms(params, model, task, inputs, targets)["h"]
    assert gradflow.decay_rate(np.asarray(norms)) == pytest.approx(math.log(abs(a)), abs=1e-4)


@pytest.mark.slow
def test_a_trained_checkpoint_loads_into_gradflow(tmp_path):
    config = TrainConfig(
        task="adding",
        seq_len=10,
        cell="gru",
        seeds=2,
        steps=20,
        hidden=8,
        log_every=10,
        eval_every=10,
        checkpoint_every=20,
        batch_size=8,
    )
    train(config, tmp_path / "run", wandb_mode="disabled", progress=False)
    loaded, task, model, params = load_run(tmp_path / "run")
    assert loaded.cell == "gru" and jax.tree.leaves(params)[0].shape[0] == 2
    norms = gradflow.population_norms(params, model, task, jax.random.key(0), 4)
    assert norms["h"].shape == (2, 10) and np.all(np.isfinite(norms["h"]))
    np.testing.assert_array_equal(
        gradflow.run_curves(tmp_path / "run", 4, jax.random.key(0))["h"], norms["h"]
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gru_research.cli",
            "gradflow",
            "--checkpoint",
            str(tmp_path / "run"),
        ]
        + ["--batch-size", "4", "--out", str(tmp_path / "flow")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flow" / "gradflow.png").stat().st_size > 0
    assert "gru (trained, run)" in (tmp_path / "flow" / "gradflow.csv").read_text()


@pytest.mark.parametrize("block", ["plain", pytest.param("residual", marks=pytest.mark.slow)])
def test_deep_models_one_gradient_per_step_for_every_layer(block):
    """Each layer's curve of a 2-layer model equals a separate jax.grad of an offset at step t
    alone, through the whole model."""
    config = TrainConfig(task="adding", seq_len=5, cell="lstm", hidden=4, layers=2, block=block)
    task = make_task(config.task_config())
    model = config.model_config(task)
    params = init_model(jax.random.key(2), model)
    inputs, targets = task.sample(task.data, jax.random.key(3), 2)
    length = inputs.shape[1]
    for layer in range(2):
        curve = gradflow.gradient_norms(params, model, task, inputs, targets, layer)["h"]

        @jax.jit
        @jax.grad
        def at_step(offset_h, t, layer=layer):
            h = jnp.zeros((2, length, 4)).at[:, t].set(offset_h)
            offsets = [None, None]
            offsets[layer] = (jnp.zeros((2, length, 4)), h)
            outputs, _ = apply_model(params, model, inputs, carry_offsets=offsets)
            return gradflow.last_step_loss(task, outputs, targets)

        expected = [
            jnp.linalg.norm(at_step(jnp.zeros((2, 4)), t), axis=-1).mean() for t in range(length)
        ]
        np.testing.assert_allclose(curve, jnp.stack(expected), rtol=1e-4, atol=1e-8)
        assert float(curve[0]) > 0 and float(curve[-1]) > 0


def test_gradflow_refuses_bidirectional_models():
    config = TrainConfig(task="adding", seq_len=10, bidirectional="concat", hidden=4)
    task = make_task(config.task_config())
    model = config.model_config(task)
    params = init_model(jax.random.key(0), model)
    inputs, targets = task.sample(task.data, jax.random.key(1), 2)
    with pytest.raises(ValueError, match="forward layers"):
        gradflow.gradient_norms(params, model, task, inputs, targets)
