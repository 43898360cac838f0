"""The ``rg_lru`` preset against the authors' code: recurrentgemma's ``RGLRU`` layer.

Their layer maps onto ours with x̃ = x (W_h = I, b_h = 0, so I = H), their block-diagonal gate
kernels as dense W with zeros off the blocks, and their ``a_param`` as −Λ (their
exp(−softplus(a_param)) is our σ(Λ)). Their segment positions restart the state where they are
0, as our ``resets`` do; both scans are compared, with a carried state and a packed batch.
Griffin's short convolution (``Conv1D``) is compared with our ``short_conv`` input axis.

recurrentgemma is in the ``dev`` extra, which CI installs (there a missing package fails);
elsewhere the test skips without it.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import block_diag

from gru_research.gates import PRESETS
from gru_research.scan import run_layer

if os.environ.get("CI"):
    import recurrentgemma.jax as rg  # CI installs the dev extra: a missing package fails here
else:
    rg = pytest.importorskip("recurrentgemma.jax", reason="recurrentgemma is not installed")

B, T, H, HEADS = 2, 11, 8, 2


def their_layer_and_ours(seed: int):
    """recurrentgemma's RGLRU with redrawn (non-zero) parameters, and ours mapped from them."""
    layer = rg.layers.RGLRU(width=H, num_heads=HEADS)
    x = jnp.zeros((B, T, H))
    variables = layer.init(jax.random.key(seed), x, jnp.zeros((B, T), jnp.int32))
    params = variables["params"]
    rng = np.random.default_rng(seed)
    redraw = lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), jnp.float32)  # noqa: E731
    params = {
        "a_param": params["a_param"],
        "input_gate": jax.tree.map(redraw, params["input_gate"]),
        "a_gate": jax.tree.map(redraw, params["a_gate"]),
    }
    ours = {
        "W": {
            "z": block_diag(*params["input_gate"]["w"]),
            "r": block_diag(*params["a_gate"]["w"]),
            "h": jnp.eye(H),
        },
        "b": {
            "z": params["input_gate"]["b"].reshape(H),
            "r": params["a_gate"]["b"].reshape(H),
            "h": jnp.zeros(H),
        },
        "decay": -params["a_param"],
    }
    return layer, {"params": params}, ours


@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_rg_lru_equals_recurrentgemma(scan):
    layer, theirs, ours = their_layer_and_ours(seed=3)
    xs = jax.random.normal(jax.random.key(4), (B, T, H))
    h0 = jax.random.normal(jax.random.key(5), (B, H))
    # Sequence 0 continues from h0 (positions 1..T); sequence 1 starts fresh, then a second
    # document starts at step 6 of the packed row.
    positions = jnp.stack(
        [jnp.arange(1, T + 1), jnp.concatenate([jnp.arange(6), jnp.arange(T - 6)])]
    )
    want_ys, want_last = layer.apply(theirs, xs, positions, cache=h0)
    got_ys, got_last = run_layer(ours, PRESETS["rg_lru"], xs, h0, scan=scan, resets=positions == 0)
    np.testing.assert_allclose(got_ys, want_ys, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_last, want_last, rtol=1e-5, atol=1e-6)


def test_rg_lru_initial_decays_lie_where_recurrentgemma_draws_them():
    """a² uniform on [0.9², 0.999²] (De et al., 2024) in both: compare the two draws' ranges."""
    from gru_research.cells import init_layer

    ours = init_layer(jax.random.key(0), PRESETS["rg_lru"], H, 4096)["decay"]
    theirs = rg.layers.rnn_real_param_init(min_rad=0.9, max_rad=0.999)(jax.random.key(0), (4096,))
    a_ours, a_theirs = jax.nn.sigmoid(ours), jnp.exp(-jax.nn.softplus(theirs))
    for a in (a_ours, a_theirs):
        assert 0.9 - 1e-6 <= float(a.min()) and float(a.max()) <= 0.999 + 1e-6
    squared = [np.sort(np.asarray(a, np.float64) ** 2) for a in (a_ours, a_theirs)]
    assert np.max(np.abs(squared[0] - squared[1])) < 0.01  # same distribution, two draws


def test_short_convolution_equals_recurrentgemma_conv1d():
    """Griffin's width-4 causal convolution: their taps ``w`` (4, H), oldest first, and ``b``
    are ours; a segment position 0 is our reset; their decoding cache (the last 3 inputs) is
    our carried history."""
    from dataclasses import replace

    from gru_research.cells import init_layer, inputs_over_time

    conv = rg.layers.Conv1D(width=H, temporal_width=4)
    design = replace(PRESETS["rg_lru"], name="rg_lru_conv4", short_conv=4)
    xs = jax.random.normal(jax.random.key(6), (B, T, H))
    positions = jnp.stack([jnp.arange(T), jnp.concatenate([jnp.arange(5), jnp.arange(T - 5)])])
    variables = conv.init(jax.random.key(8), xs, positions)
    redraw = lambda a: a + 0.5 * jax.random.normal(jax.random.key(9), a.shape)  # noqa: E731
    params = jax.tree.map(redraw, variables["params"])
    ours = init_layer(jax.random.key(0), design, H, H) | {"conv": dict(params)}

    want, want_cache = conv.apply({"params": params}, xs, positions)
    got, carried = inputs_over_time(ours, design, xs, jnp.zeros((B, 3, H)), positions == 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carried, want_cache, rtol=1e-6)

    x_next = jax.random.normal(jax.random.key(10), (B, 1, H))
    want, want_cache = conv.apply({"params": params}, x_next, jnp.full((B, 1), T), cache=carried)
    got, carried = inputs_over_time(ours, design, x_next, carried)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carried, want_cache, rtol=1e-6)
