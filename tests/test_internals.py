"""A layer's per-step internals: ``trace`` (gate values and carries) and ``carry_offsets``
(dL/dcarry_t at every step in one backward pass), for single layers and whole models."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research.cells import cell_apply, hidden_state, init_layer
from gru_research.gates import PRESETS
from gru_research.model import ModelConfig, RecurrentLayer, apply_model, init_model
from gru_research.scan import LayerTrace, run_layer

TRACED = ["gru", "lstm", "mgu", "min_gru", "min_lstm", "gru_reset_before"]
B, T, I, H = 3, 7, 4, 5


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def assert_equal(got, want, tol: float) -> None:
    leaves, wanted = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(leaves) == len(wanted)
    for a, b in zip(leaves, wanted, strict=True):
        assert a.shape == b.shape and rel_err(a, b) <= tol


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def numpy_gates(name: str, p: dict, x: np.ndarray, h: np.ndarray) -> dict[str, np.ndarray]:
    """Every gate at one step from the equations; x (B, I), h (B, H) the previous h."""
    W, U, b = p["W"], p["U"], p["b"]

    def gate(n: str) -> np.ndarray:  # σ(W_n x + b_n + U_n h)
        return sigmoid(x @ W[n] + b[n] + h @ U[n])

    ones = np.ones_like(h)
    if name in ("gru", "gru_reset_before"):
        return {"z": gate("z"), "r": gate("r")}
    if name == "mgu":  # r tied to z
        return {"z": gate("z"), "r": gate("z")}
    if name == "lstm":
        return {n: gate(n) for n in "ifo"}
    if name == "min_gru":  # z from x alone, r fixed to 1
        return {"z": sigmoid(x @ W["z"] + b["z"]), "r": ones}
    i, f = (sigmoid(x @ W[n] + b[n]) for n in "if")  # min_lstm: normalised, o fixed to 1
    return {"i": i / (i + f), "f": f / (i + f), "o": ones}


def layer_setup(name: str, seed: int = 0, dtype=jnp.float64):
    design = PRESETS[name]
    keys = jax.random.split(jax.random.key(seed), 3)
    params = jax.tree.map(lambda v: v.astype(dtype), init_layer(keys[0], design, I, H))
    xs = jax.random.normal(keys[1], (B, T, I), dtype)
    h = jax.random.normal(keys[2], (B, H), dtype)
    carry = (h[::-1], h) if design.family == "lstm" else h
    return design, params, xs, carry


@pytest.mark.parametrize("name", TRACED)
def test_trace_gates_and_carries_follow_the_equations(name):
    with jax.enable_x64(True):
        design, params, xs, carry = layer_setup(name)
        ys, last, trace = run_layer(params, design, xs, carry, scan="sequential", trace=True)
        assert isinstance(trace, LayerTrace)
        assert set(trace.gates) == {n for n, _ in design.gates}

        p = jax.tree.map(np.asarray, params)
        c = carry
        for t in range(T):
            h_prev = np.asarray(hidden_state(design, c))
            want = numpy_gates(name, p, np.asarray(xs[:, t]), h_prev)
            for n, value in want.items():
                assert rel_err(trace.gates[n][:, t], value) <= 1e-10, (n, t)
            c = jax.tree.map(lambda v, t=t: v[:, t], trace.carries)  # the trace's own carry

        stepped, c = [], carry
        for t in range(T):
            c, _ = cell_apply(params, design, c, xs[:, t])
            stepped.append(c)
        assert_equal(trace.carries, jax.tree.map(lambda *v: jnp.stack(v, 1), *stepped), 1e-10)
        assert_equal(ys, hidden_state(design, trace.carries), 1e-10)
        assert_equal(last, c, 1e-10)


FAST_PATH_CASES = [
    name if name in ("gru", "lstm", "min_gru") else pytest.param(name, marks=pytest.mark.slow)
    for name in TRACED + ["min_gru_linear"]
]


@pytest.mark.parametrize("name", FAST_PATH_CASES)
def test_trace_path_equals_the_fast_path_with_lengths_resets_and_offsets(name):
    design, params, xs, carry = layer_setup(name, dtype=jnp.float32)
    design = replace(design, learn_initial_state=True)
    states = ("c0", "h0") if design.family == "lstm" else ("h0",)
    params |= {k: jnp.linspace(-0.5, 0.5, H) for k in states}
    lengths = jnp.array([T, 4, 0])
    resets = jnp.zeros((B, T), bool).at[0, 3].set(True).at[1, 2].set(True)
    noise = 0.1 * jax.random.normal(jax.random.key(9), (2, B, T, H))
    offsets = (noise[0], noise[1]) if design.family == "lstm" else noise[0]
    scans = ["sequential", "parallel"] if design.parallel_scan else ["sequential"]
    for scan in scans:
        for extra in ({}, {"carry_offsets": offsets}):
            kw = dict(scan=scan, seq_lengths=lengths, resets=resets, **extra)
            fast = run_layer(params, design, xs, carry, **kw)
            ys, last, trace = run_layer(params, design, xs, carry, trace=True, **kw)
            assert_equal((ys, last), fast, 1e-5)
            assert_equal(jax.tree.map(lambda c: c[:, -1], trace.carries), last, 1e-5)


def _model_loss(config: ModelConfig, xs):
    def loss(params, offsets, trace=False):
        outputs, carries, *_ = apply_model(params, config, xs, carry_offsets=offsets, trace=trace)
        return jnp.sum(jnp.sin(outputs)) + sum(
            jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carries)
        )

    return loss


def _zero_offsets(config: ModelConfig, batch: int, length: int):
    zero = jnp.zeros((batch, length, config.hidden_size))
    return [(zero, zero) if config.design.family == "lstm" else zero] * config.num_layers


MODEL_CASES = [
    (cell, block, scan)
    for cell in ("gru", "lstm", "min_gru")
    for block in ("plain", "residual")
    for scan in (("sequential", "parallel") if cell == "min_gru" else ("sequential",))
] + [("min_lstm", "plain", "sequential"), ("min_lstm", "plain", "parallel")]
UNIT_MODEL_CASES = {("gru", "plain", "sequential"), ("lstm", "residual", "sequential")}
UNIT_MODEL_CASES |= {("min_gru", "plain", "parallel")}
MODEL_CASES = [
    case if case in UNIT_MODEL_CASES else pytest.param(*case, marks=pytest.mark.slow)
    for case in MODEL_CASES
]


@pytest.mark.parametrize(("cell", "block", "scan"), MODEL_CASES)
def test_offset_gradients_are_every_steps_carry_gradient(cell, block, scan):
    """One grad w.r.t. zero offsets = T grads w.r.t. an offset at step t alone, and = JAX's own
    gradient of the plain scan (the trace path, no custom VJP)."""
    with jax.enable_x64(True):
        config = ModelConfig(
            cell=cell,
            input_size=I,
            hidden_size=H,
            output_size=2,
            num_layers=2,
            block=block,
            scan=scan,
        )
        params = init_model(jax.random.key(0), config)
        xs = jax.random.normal(jax.random.key(1), (B, T, I))
        loss = _model_loss(config, xs)
        zeros = _zero_offsets(config, B, T)
        every = jax.jit(jax.grad(loss, argnums=1))(params, zeros)
        plain = jax.jit(jax.grad(lambda p, o: loss(p, o, trace=True), argnums=1))(params, zeros)
        assert_equal(every, plain, 1e-10)

        def at_step(eps, t):
            return jax.tree.map(lambda z, e: z.at[:, t].set(e), zeros, eps)

        alone = jax.jit(jax.grad(lambda eps, t: loss(params, at_step(eps, t))))
        step_zeros = jax.tree.map(lambda z: z[:, 0], zeros)
        for t in range(T):
            assert_equal(jax.tree.map(lambda g, t=t: g[:, t], every), alone(step_zeros, t), 1e-10)
        for layer in every:
            assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(layer))


@pytest.mark.parametrize("name", ["gru", "lstm", "min_gru", "min_lstm"])
def test_offsets_at_padded_steps_are_ignored(name):
    design, params, xs, carry = layer_setup(name, dtype=jnp.float32)
    lengths = jnp.array([T, 4, 2])
    padded = (jnp.arange(T)[None, :] >= lengths[:, None])[..., None]
    noise = jax.random.normal(jax.random.key(3), (2, B, T, H))
    noise = (noise[0], noise[1]) if design.family == "lstm" else noise[0]
    scans = ["sequential", "parallel"] if design.parallel_scan else ["sequential"]
    for scan in scans:

        def run(offsets, scan=scan):
            return run_layer(
                params, design, xs, carry, scan=scan, seq_lengths=lengths, carry_offsets=offsets
            )

        at_padding = jax.tree.map(lambda n: jnp.where(padded, n, 0.0), noise)
        assert_equal(run(at_padding), run(None), 1e-6)
        grads = jax.grad(lambda o: jnp.sum(jnp.sin(run(o)[0])))(jax.tree.map(jnp.zeros_like, noise))
        for g in jax.tree.leaves(grads):
            assert not np.any(np.asarray(jnp.where(padded, g, 0.0)))


@pytest.mark.parametrize("block", ["plain", pytest.param("residual", marks=pytest.mark.slow)])
@pytest.mark.parametrize("cell", ["gru", "lstm", "min_gru"])
def test_zero_offsets_and_trace_leave_the_model_unchanged(cell, block):
    config = ModelConfig(
        cell=cell, input_size=I, hidden_size=H, output_size=2, num_layers=2, block=block
    )
    params = init_model(jax.random.key(0), config)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    lengths = jnp.array([T, 5, 3])
    want = apply_model(params, config, xs, seq_lengths=lengths)
    zeros = _zero_offsets(config, B, T)
    for offsets in (zeros, [zeros[0], None]):
        assert_equal(
            apply_model(params, config, xs, seq_lengths=lengths, carry_offsets=offsets), want, 1e-5
        )
    outputs, carries, traces = apply_model(params, config, xs, seq_lengths=lengths, trace=True)
    assert_equal((outputs, carries), want, 1e-5)
    assert len(traces) == config.num_layers and all(isinstance(t, LayerTrace) for t in traces)
    for trace in traces:
        assert all(g.shape == (B, T, H) for g in trace.gates.values())


def test_bidirectional_layers_refuse_offsets_and_trace():
    config = ModelConfig(cell="gru", input_size=I, hidden_size=H, bidirectional="concat")
    params = init_model(jax.random.key(0), config)
    xs = jnp.zeros((B, T, I))
    with pytest.raises(ValueError, match="bidirectional"):
        apply_model(params, config, xs, trace=True)
    with pytest.raises(ValueError, match="bidirectional"):
        apply_model(params, config, xs, carry_offsets=[jnp.zeros((B, T, H))])


def test_recurrent_layer_module_traces():
    module = RecurrentLayer("lstm", H)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    variables = module.init(jax.random.key(0), xs)
    ys, carry = module.apply(variables, xs)
    ys_traced, _, trace = module.apply(variables, xs, trace=True)
    assert_equal(ys_traced, ys, 1e-5)
    assert_equal(trace.carries[1][:, -1], carry[1], 1e-5)
