"""The speed options keep the model exact: the fused-kernel gradient, remat, bfloat16, sharding.

The fused-kernel gradient (:func:`gru_research.scan.state_reading_scan`) is checked against
JAX's own gradient of a plain ``lax.scan`` over the Flax-style cell, written here from
``cell_apply``; finite differences in float64 cover it too (test_core).
"""

import json
import os
import subprocess
import sys
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research.cells import init_layer, initial_carry, input_projection, recurrent_step
from gru_research.gates import PRESETS
from gru_research.model import ModelConfig, apply_model, init_model
from gru_research.scan import run_layer

STATE_READING = [name for name, design in PRESETS.items() if design.reads_state]
B, T, I, H = 3, 9, 4, 8  # H divisible by the 4 heads of a block recurrence


def plain_scan_layer(params, design, xs, seq_lengths, resets, h_mask):
    """The reference: ``lax.scan`` of the one-step cell on raw inputs, JAX's own autodiff."""
    fresh = initial_carry(params, design, (xs.shape[0],))

    def step(carry, inputs):
        x_t, t, reset_t = inputs
        carry_in = jax.tree.map(lambda f, c: jnp.where(reset_t[:, None], f, c), fresh, carry)
        pre = input_projection(params, design, x_t)
        new, y = recurrent_step(params, design, carry_in, pre, h_mask)
        valid = (t < seq_lengths)[:, None]
        new = jax.tree.map(lambda n, c: jnp.where(valid, n, c), new, carry)
        return new, jnp.where(valid, y, 0.0)

    inputs = (jnp.swapaxes(xs, 0, 1), jnp.arange(xs.shape[1]), jnp.swapaxes(resets, 0, 1))
    last, ys = jax.lax.scan(step, fresh, inputs)
    return jnp.swapaxes(ys, 0, 1), last


def _inputs(key=1):
    xs = jax.random.normal(jax.random.key(key), (B, T, I))
    seq_lengths = jnp.array([T, 4, 7])
    resets = jnp.zeros((B, T), bool).at[0, 5].set(True).at[2, 2].set(True)
    h_mask = jax.random.bernoulli(jax.random.key(3), 0.7, (B, H)) / 0.7
    return xs, seq_lengths, resets, h_mask


def _loss(layer):
    def loss(params, xs):
        ys, last = layer(params, xs)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(last))

    return loss


def max_abs_diff(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


UNIT = ("gru", "lstm")  # the rest run with the slow tests (CI)
CASES = [
    pytest.param(name, True, marks=() if name in UNIT else pytest.mark.slow)
    for name in STATE_READING
] + [(name, False) for name in ("gru", "gru_reset_before", "lstm")]
WIDTHS = [I, pytest.param(1, id="projected-in-loop")]  # 4 I > H: hoisted; I = 1: in the loop


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(("name", "masks"), CASES)
def test_fused_kernel_gradient_equals_plain_scan_gradient(name, masks, width):
    learned = PRESETS[name].gating != "exponential"  # a stabilised state starts at zero
    design = replace(PRESETS[name], learn_initial_state=learned)
    params = init_layer(jax.random.key(0), design, width, H)
    if learned:
        params["h0"] = 0.1 * jnp.arange(H, dtype=jnp.float32)  # a non-zero learned start
    xs, seq_lengths, resets, h_mask = _inputs()
    xs = xs[..., :width]
    if not masks:
        seq_lengths, resets, h_mask = jnp.full((B,), T), jnp.zeros((B, T), bool), None

    def ours(p, x):
        return run_layer(
            p,
            design,
            x,
            scan="sequential",
            seq_lengths=seq_lengths if masks else None,
            resets=resets if masks else None,
            h_mask=h_mask,
        )

    def reference(p, x):
        return plain_scan_layer(p, design, x, seq_lengths, resets, h_mask)

    assert max_abs_diff(ours(params, xs), reference(params, xs)) <= 1e-5
    grads = jax.grad(_loss(ours), argnums=(0, 1))(params, xs)
    expected = jax.grad(_loss(reference), argnums=(0, 1))(params, xs)
    assert max_abs_diff(grads, expected) <= 1e-4


@pytest.mark.slow
def test_fused_kernel_gradient_under_vmap_over_seeds():
    design = PRESETS["gru"]
    keys = jax.random.split(jax.random.key(0), 4)
    population = jax.lax.map(lambda k: init_layer(k, design, I, H), keys)
    xs = _inputs()[0]

    def loss(p):
        return _loss(lambda q, x: run_layer(q, design, x))(p, xs)

    vmapped = jax.jit(jax.vmap(jax.grad(loss)))(population)
    for s in range(4):
        one = jax.grad(loss)(jax.tree.map(lambda v, s=s: v[s], population))
        assert max_abs_diff(jax.tree.map(lambda v, s=s: v[s], vmapped), one) <= 1e-5


def _model_loss(config, tokens):
    def loss(params):
        log_probs = jax.nn.log_softmax(apply_model(params, config, tokens[:, :-1])[0])
        return -jnp.mean(jnp.take_along_axis(log_probs, tokens[:, 1:, None], -1))

    return loss


SLOW = pytest.mark.slow


@pytest.mark.parametrize("cell", [pytest.param(c, marks=SLOW) for c in ("gru", "lstm", "min_gru")])
def test_remat_equals_no_remat(cell):
    config = ModelConfig(cell=cell, vocab_size=11, hidden_size=8, output_size=11, num_layers=2)
    tokens = jax.random.randint(jax.random.key(1), (4, 33), 0, 11)
    params = init_model(jax.random.key(0), config)
    plain = jax.value_and_grad(_model_loss(config, tokens))(params)
    remat = jax.value_and_grad(_model_loss(replace(config, remat=True), tokens))(params)
    assert max_abs_diff(plain, remat) <= 1e-6


BF16_TOLERANCE = 0.05  # documented in README "Speed": relative error of the loss, T = 32


@pytest.mark.parametrize("cell", [pytest.param(c, marks=SLOW) for c in ("gru", "lstm", "min_gru")])
def test_bfloat16_stays_near_float32(cell):
    config = ModelConfig(cell=cell, vocab_size=11, hidden_size=16, output_size=11, num_layers=2)
    tokens = jax.random.randint(jax.random.key(1), (4, 33), 0, 11)
    params = init_model(jax.random.key(0), config)
    loss32, grads32 = jax.value_and_grad(_model_loss(config, tokens))(params)
    bf16 = replace(config, precision="bfloat16")
    loss16, grads16 = jax.value_and_grad(_model_loss(bf16, tokens))(params)
    assert loss16.dtype == jnp.float32  # float32 accumulation, float32 state
    assert abs(float(loss16 - loss32)) <= BF16_TOLERANCE * abs(float(loss32))
    g32, g16 = (
        jnp.concatenate([g.ravel() for g in jax.tree.leaves(g)]) for g in (grads32, grads16)
    )
    cosine = float(g32 @ g16 / (jnp.linalg.norm(g32) * jnp.linalg.norm(g16)))
    assert cosine >= 0.99


def test_unknown_precision_names_the_valid_ones():
    with pytest.raises(ValueError, match="float32, bfloat16"):
        ModelConfig(precision="fp8")


TINY_RUN = {
    "task": "adding",
    "seq_len": 12,
    "cell": "gru",
    "seeds": 4,
    "steps": 20,
    "hidden": 8,
    "log_every": 10,
    "eval_every": 10,
    "checkpoint_every": 20,
    "batch_size": 8,
}
SHARDED_RUN = """
import json, sys
import jax
from gru_research.train import TrainConfig, train
config = TrainConfig(**json.loads(sys.argv[2]))
summary = train(config, sys.argv[1], wandb_mode="disabled", progress=False)
print(json.dumps({"devices": jax.local_device_count(), "final": summary["final"]}))
"""


@pytest.mark.slow
def test_seeds_sharded_over_four_host_devices_equal_one_device(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run(
        [sys.executable, "-c", SHARDED_RUN, str(tmp_path / "sharded"), json.dumps(TINY_RUN)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    sharded = json.loads(out.stdout.strip().splitlines()[-1])
    assert sharded["devices"] == 4
    assert json.loads((tmp_path / "sharded" / "config.json").read_text())["seed_devices"] == 4

    from gru_research.train import TrainConfig, train

    config = TrainConfig(**TINY_RUN)
    single = train(config, tmp_path / "single", wandb_mode="disabled", progress=False)
    assert json.loads((tmp_path / "single" / "config.json").read_text())["seed_devices"] == 1
    np.testing.assert_allclose(sharded["final"]["loss"], single["final"]["loss"], rtol=1e-5)


@pytest.mark.parametrize("name", ["gru", "lstm", "gru_reset_before"])
def test_projection_in_the_loop_equals_the_hoisted_one(name, monkeypatch):
    """Inputs narrower than the state are projected inside the loop (W x_t + b per step, its
    gradient formed after the loop); outputs and gradients equal the hoisted projection."""
    from gru_research import scan

    design = replace(PRESETS[name], learn_initial_state=True)
    params = init_layer(jax.random.key(0), design, 1, H)
    xs, seq_lengths, resets, h_mask = _inputs()
    xs = xs[..., :1]
    assert scan.projects_in_loop(params)  # 4 I ≤ H

    def layer(p, x):
        return run_layer(p, design, x, seq_lengths=seq_lengths, resets=resets, h_mask=h_mask)

    in_loop = layer(params, xs), jax.grad(_loss(layer), argnums=(0, 1))(params, xs)
    monkeypatch.setattr(scan, "projects_in_loop", lambda p: False)
    hoisted = layer(params, xs), jax.grad(_loss(layer), argnums=(0, 1))(params, xs)
    assert max_abs_diff(in_loop, hoisted) <= 1e-5
    wide = init_layer(jax.random.key(0), design, I, H)
    monkeypatch.undo()
    assert not scan.projects_in_loop(wide)  # 4 I > H: hoisted, one matmul for the sequence
