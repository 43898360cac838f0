"""Signed initial and carried-in states: the log-space parallel scan equals the sequential one.

minGRU and minLSTM scan in log space, where a, b > 0 but the state may have any sign (a learned
h_0 / c_0, a carried-in state, a restart to the learned state). Both scans must equal a NumPy
loop of h_t = a_t h_{t−1} + b_t, and the learned state must get its gradient under both.
"""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research.cells import init_layer, join_carry
from gru_research.gates import PRESETS
from gru_research.scan import run_layer

LOG_SPACE = ["min_gru", "min_lstm"]
PARALLEL = LOG_SPACE + ["min_gru_linear"]
EVERY_PARALLEL = [name for name, design in PRESETS.items() if design.parallel_scan]
B, I, H = 4, 3, 5
layer = jax.jit(run_layer, static_argnums=1, static_argnames="scan")


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def g_pos(v: np.ndarray) -> np.ndarray:
    """Feng et al.'s g: v + 1/2 for v ≥ 0, σ(v) otherwise."""
    return np.where(v >= 0, v + 0.5, sigmoid(v))


def setup(name: str, length: int, dtype=jnp.float64, seed: int = 0):
    """A learned-state design with signed h_0 (and c_0), a signed carry, lengths and resets."""
    design = replace(PRESETS[name], learn_initial_state=True)
    keys = jax.random.split(jax.random.key(seed), 6)
    params = init_layer(keys[0], design, I, H)
    params["h0"] = jax.random.normal(keys[1], (H,))
    if "c0" in params:
        params["c0"] = jax.random.normal(keys[2], (H,))
    params = jax.tree.map(lambda v: v.astype(dtype), params)
    xs = jax.random.normal(keys[3], (B, length, I), dtype)
    h = jax.random.normal(keys[4], (B, H), dtype)
    carry = (h[::-1], h) if design.family == "lstm" else h
    inputs = jax.random.normal(keys[5], (B, design.input_history, I), dtype)
    carry = join_carry(design, carry, inputs)  # with the last inputs of a window
    if design.forget_lower_bound:  # a layer's HGRN bound, as a deeper layer of a model has
        params["lower_bound"] = jnp.linspace(0.1, 0.9, H, dtype=dtype)
    rng = np.random.default_rng(seed)
    seq_lengths = jnp.asarray(np.r_[length, rng.integers(1, length + 1, B - 1)])
    resets = jnp.asarray(rng.random((B, length)) < 0.15)
    return design, params, xs, carry, seq_lengths, resets


def numpy_reference(name: str, params, xs, carry, seq_lengths, resets):
    """(outputs, carry) of h_t = a_t h_{t−1} + b_t stepped in NumPy, (a, b) from W x + b."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    xs, seq_lengths, resets = (np.asarray(v) for v in (xs, seq_lengths, resets))
    lstm = name == "min_lstm"
    if lstm:
        i = sigmoid(xs @ p["W"]["i"] + p["b"]["i"])
        f = sigmoid(xs @ p["W"]["f"] + p["b"]["f"])
        a, b = f / (i + f), i / (i + f) * g_pos(xs @ p["W"]["g"] + p["b"]["g"])
    else:
        z = sigmoid(xs @ p["W"]["z"] + p["b"]["z"])
        v = xs @ p["W"]["h"] + p["b"]["h"]
        a, b = 1.0 - z, z * (g_pos(v) if name == "min_gru" else v)
    fresh = p["c0"] if lstm else p["h0"]
    state = np.array(carry[0] if lstm else carry, np.float64)
    h_last = np.array(carry[1], np.float64) if lstm else None
    ys = np.zeros(xs.shape[:2] + (H,))
    for n in range(xs.shape[0]):
        for t in range(seq_lengths[n]):
            if resets[n, t]:
                state[n] = fresh
            state[n] = a[n, t] * state[n] + b[n, t]
            ys[n, t] = state[n]  # minLSTM: h = o ⊙ c with o ≡ 1 and no tanh
        if lstm and seq_lengths[n] > 0:
            h_last[n] = ys[n, seq_lengths[n] - 1]
    return ys, ((state, h_last) if lstm else state)


def assert_equal(got, want, tol: float) -> None:
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert rel_err(a, b) <= tol


@pytest.mark.parametrize("name", PARALLEL)
@pytest.mark.parametrize("carried", [False, True])
def test_signed_states_parallel_equals_sequential_and_numpy_float64(name, carried):
    with jax.enable_x64(True):
        design, params, xs, carry, lengths, resets = setup(name, length=13)
        start = carry if carried else None

        def run(scan):
            return layer(params, design, xs, start, scan=scan, seq_lengths=lengths, resets=resets)

        parallel, sequential = run("parallel"), run("sequential")
        fresh = (params["c0"], params["h0"]) if design.family == "lstm" else params["h0"]
        begin = carry if carried else jax.tree.map(lambda v: jnp.broadcast_to(v, (B, H)), fresh)
        reference = numpy_reference(name, params, xs, begin, lengths, resets)
        assert_equal(parallel, sequential, 1e-10)
        assert_equal(parallel, reference, 1e-10)
        assert_equal(sequential, reference, 1e-10)


def scalar_loss(ys, last) -> jax.Array:
    return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(jnp.sin(c) + c**2) for c in jax.tree.leaves(last))


def _central_differences(loss, tree, eps: float = 1e-6):
    """dL/dv of every entry of every leaf of ``tree`` by (L(v + ε) − L(v − ε)) / 2ε."""

    def leaf_grad(path, leaf):
        grad = np.zeros(leaf.shape)
        for k in np.ndindex(leaf.shape):
            bump = lambda s, path=path, k=k: jax.tree_util.tree_map_with_path(  # noqa: E731
                lambda p, v: v.at[k].add(s) if p == path else v, tree
            )
            grad[k] = (loss(bump(eps)) - loss(bump(-eps))) / (2 * eps)
        return grad

    return jax.tree_util.tree_map_with_path(leaf_grad, tree)


@pytest.mark.parametrize("name", PARALLEL)
@pytest.mark.parametrize("signed", [False, True])
def test_learned_state_gradient_equal_under_both_scans_and_finite_differences(name, signed):
    """The learned state starts every sequence and every reset, from its initial zeros or
    signed. minLSTM's h = c never reads h_0, which reaches the loss only as the carry of an
    empty sequence: one is in the batch."""
    with jax.enable_x64(True):
        design, params, xs, _, lengths, resets = setup(name, length=9, seed=1)
        lengths = lengths.at[-1].set(0)
        learned = {k: params[k] if signed else 0.0 * params[k] for k in ("h0", "c0") if k in params}

        def loss(states, scan):
            ys, last = layer(
                params | states, design, xs, scan=scan, seq_lengths=lengths, resets=resets
            )
            return scalar_loss(ys, last)

        parallel = jax.grad(loss)(learned, "parallel")
        sequential = jax.grad(loss)(learned, "sequential")
        numeric = _central_differences(jax.jit(lambda s: loss(s, "sequential")), learned)
        for key in learned:
            assert float(jnp.max(jnp.abs(parallel[key]))) > 1e-3
            assert rel_err(parallel[key], sequential[key]) <= 1e-10
            assert rel_err(parallel[key], numeric[key]) <= 1e-7


@pytest.mark.parametrize("name", PARALLEL)
def test_carried_state_gradient_equal_under_both_scans(name):
    with jax.enable_x64(True):
        design, params, xs, carry, lengths, resets = setup(name, length=9, seed=2)
        lengths = lengths.at[-1].set(0)  # the carried h of minLSTM reaches the loss only here

        def loss(carry, scan):
            ys, last = layer(
                params, design, xs, carry, scan=scan, seq_lengths=lengths, resets=resets
            )
            return scalar_loss(ys, last)

        parallel = jax.grad(loss)(carry, "parallel")
        sequential = jax.grad(loss)(carry, "sequential")
        assert all(float(jnp.max(jnp.abs(g))) > 1e-3 for g in jax.tree.leaves(parallel))
        assert_equal(parallel, sequential, 1e-10)


@pytest.mark.parametrize(
    "name", ["min_gru", *(pytest.param(n, marks=pytest.mark.slow) for n in EVERY_PARALLEL[1:])]
)
def test_parallel_float32_at_T_1000_equals_float64_sequential(name):
    design, params, xs, carry, lengths, resets = setup(name, length=1000, dtype=jnp.float32)
    resets = (resets & (jax.random.uniform(jax.random.key(5), resets.shape) < 0.1)).at[0].set(False)
    parallel = layer(params, design, xs, carry, scan="parallel", seq_lengths=lengths, resets=resets)
    with jax.enable_x64(True):
        as64 = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), tree)  # noqa: E731
        reference = layer(
            as64(params),
            design,
            as64(xs),
            as64(carry),
            scan="sequential",
            seq_lengths=lengths,
            resets=resets,
        )
        assert_equal(parallel, reference, 1e-5)
