"""The axes a design gained beyond the classic gates: how each reads h, peepholes, shifted
couplings, the highway output and IndRNN's bounded diagonal; what each refuses."""

import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gru_research.cells import bound_diagonal, init_layer
from gru_research.gates import PRESETS, Candidate, Coupled, Fixed, Gate, recurrence_kind
from gru_research.scan import run_layer
from gru_research.tasks import make_task
from gru_research.train import TrainConfig, build_program


@pytest.mark.parametrize(
    ("h", "kind"),
    [(True, ("full", 1)), ("full", ("full", 1)), (False, ("none", 0)), ("none", ("none", 0)),
     ("diagonal", ("diagonal", 0)), ("block:4", ("block", 4))],
)  # fmt: skip
def test_recurrence_spellings(h, kind):
    assert recurrence_kind(h) == kind


@pytest.mark.parametrize("h", ["block:0", "block:", "blocks:2", "dense", 3])
def test_an_unknown_recurrence_is_one_line_naming_the_valid_ones(h):
    with pytest.raises(ValueError) as err:
        Gate(h=h)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in ("full", "diagonal", "block:k"))


@pytest.mark.parametrize(
    ("base", "change", "match"),
    [
        ("gru", dict(gates=(("z", Gate(peephole="previous")), ("r", Gate()))), "LSTM family"),
        ("gru", dict(output="highway"), "highway"),
        ("lstm", dict(gates=(("i", Gate(peephole="current")), *PRESETS["lstm"].gates[1:])),
         "current cell"),
        ("lstm", dict(gates=(("i", Coupled("f", shift=1.0)), ("f", Fixed(1.0)), ("o", Gate()))),
         "shifted gate"),
        ("min_gru", dict(update="rg_lru", gates=(("z", Gate(h=False)), ("r", Fixed(1.0)))),
         "RG-LRU"),
        ("rg_lru", dict(candidate=Candidate(activation="identity")), "RG-LRU"),
    ],
)  # fmt: skip
def test_impossible_combinations_are_refused(base, change, match):
    with pytest.raises(ValueError, match=match):
        replace(PRESETS[base], **change)


def test_block_heads_must_divide_the_hidden_size():
    design = replace(PRESETS["lstm"], candidate=Candidate(h="block:4"))
    init_layer(jax.random.key(0), design, 3, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        init_layer(jax.random.key(0), design, 3, 6)


def test_a_block_recurrence_stores_only_its_blocks_and_equals_the_block_diagonal_matmul():
    design = replace(PRESETS["rnn_tanh"], name="rnn_block", candidate=Candidate(h="block:2"))
    params = init_layer(jax.random.key(0), design, 3, 4)
    assert "U" not in params or not params["U"]
    blocks = params["R"]["h"]
    assert blocks.shape == (2, 2, 2)
    for block in blocks:  # each block orthogonal by itself, as a full kernel would be
        np.testing.assert_allclose(block @ block.T, np.eye(2), atol=1e-6)
    full = jax.scipy.linalg.block_diag(*blocks)
    dense, dense_params = (
        PRESETS["rnn_tanh"],
        {"W": params["W"], "b": params["b"], "U": {"h": full}},
    )
    xs = jax.random.normal(jax.random.key(1), (2, 7, 3))
    np.testing.assert_allclose(
        run_layer(params, design, xs)[0], run_layer(dense_params, dense, xs)[0], atol=1e-6
    )


@pytest.mark.slow
def test_indrnn_bound_follows_the_length_and_holds_at_init_and_after_every_step():
    """Li et al. (2018): |u| ≤ 2^(1/T) keeps h from growing faster than 2 over T steps."""
    config = TrainConfig(
        task="adding", cell="indrnn", seq_len=10, hidden=8, batch_size=8, lr=1.0, steps=4
    )
    bound = config.design().diagonal_bound
    assert bound == pytest.approx(2.0 ** (1 / 10))
    u = init_layer(jax.random.key(0), config.design(), 2, 256)["u"]["h"]
    assert float(u.min()) >= 0.0 and float(u.max()) <= bound and float(u.max()) > 0.9 * bound

    task = make_task(config.task_config())
    program = build_program(config, task, config.model_config(task))
    state = program.init(jnp.stack([jax.random.key(0)]))
    for _ in range(3):
        state, _ = program.train_chunk(state, task.data, 0)
    diagonals = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state["params"])
                 if any(getattr(k, "key", None) == "u" for k in path)]  # fmt: skip
    assert diagonals and max(float(jnp.max(jnp.abs(d))) for d in diagonals) <= bound
    assert any(float(jnp.max(jnp.abs(d))) == pytest.approx(bound) for d in diagonals)


def test_bound_diagonal_moves_only_diagonal_weights():
    tree = {"layers": [{"u": {"h": jnp.array([-3.0, 0.5, 3.0])}, "b": {"h": jnp.full(3, 5.0)}}]}
    bounded = bound_diagonal(tree, 2.0)
    np.testing.assert_array_equal(bounded["layers"][0]["u"]["h"], [-2.0, 0.5, 2.0])
    np.testing.assert_array_equal(bounded["layers"][0]["b"]["h"], 5.0)
    assert bound_diagonal(tree, None) is tree


def test_sru_highway_reads_the_input_itself_where_widths_agree():
    """Lei et al. (2018): h = r ⊙ c + (1 − r) ⊙ √3 x, with no skip kernel when I = H."""
    design = PRESETS["sru"]
    square, wide = (
        init_layer(jax.random.key(0), design, 4, 4),
        init_layer(jax.random.key(0), design, 3, 4),
    )
    assert "skip" not in square["W"] and wide["W"]["skip"].shape == (3, 4)
    xs = jax.random.normal(jax.random.key(1), (2, 1, 4))
    ys, (c, _) = run_layer(square, design, xs)
    f = jax.nn.sigmoid(xs[:, 0] @ square["W"]["f"] + square["b"]["f"])
    r = jax.nn.sigmoid(xs[:, 0] @ square["W"]["o"] + square["b"]["o"])
    c_want = (1 - f) * (xs[:, 0] @ square["W"]["g"])  # c_0 = 0: no peephole term
    np.testing.assert_allclose(c, c_want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ys[:, 0], r * c_want + (1 - r) * math.sqrt(3.0) * xs[:, 0], rtol=1e-5, atol=1e-6
    )


# inputs over time: a short causal convolution (the dense window is the qrnn preset's, checked
# against its NumPy reference in tests/test_numpy_reference.py)

HAWK_CONV = replace(PRESETS["rg_lru"], name="rg_lru_conv4", short_conv=4)


def conv_reference(xs: np.ndarray, history: np.ndarray, w: np.ndarray, b: np.ndarray):
    """x̂_t = w_1 x_{t−3} + w_2 x_{t−2} + w_3 x_{t−1} + w_4 x_t + b, the three inputs before
    the first step from ``history``, step by step in float64."""
    seq = np.concatenate([history, xs], axis=1).astype(np.float64)
    k = w.shape[0]
    return np.stack(
        [sum(w[j] * seq[:, t + j] for j in range(k)) + b for t in range(xs.shape[1])], axis=1
    )


def conv_layer(seed: int = 0):
    params = init_layer(jax.random.key(seed), HAWK_CONV, 3, 3)
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(9), a.shape), params)
    return params, jax.random.normal(jax.random.key(seed + 1), (2, 10, 3))


def test_the_short_convolution_equals_its_reference_and_carries_its_last_inputs():
    from gru_research.cells import inputs_over_time

    params, xs = conv_layer()
    history = jax.random.normal(jax.random.key(5), (2, 3, 3))
    read, carried = inputs_over_time(params, HAWK_CONV, xs, history)
    w, b = (np.asarray(params["conv"][k], np.float64) for k in ("w", "b"))
    want = conv_reference(np.asarray(xs), np.asarray(history), w, b)
    np.testing.assert_allclose(read, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(carried, xs[:, -3:])
    # a sequence shorter than the window keeps the tail of the old inputs
    _, short = inputs_over_time(params, HAWK_CONV, xs, history, seq_lengths=jnp.array([10, 2]))
    np.testing.assert_array_equal(short[1], jnp.concatenate([history[1, 2:], xs[1, :2]]))


@pytest.mark.slow
@pytest.mark.parametrize("scan", ["sequential", "parallel"])
def test_a_convolved_layer_in_two_halves_equals_the_whole_and_a_reset_two_sequences(scan):
    params, xs = conv_layer()
    whole, last = run_layer(params, HAWK_CONV, xs, scan=scan)
    first, mid = run_layer(params, HAWK_CONV, xs[:, :4], scan=scan)
    assert mid[1].shape == (2, 3, 3)
    second, last2 = run_layer(params, HAWK_CONV, xs[:, 4:], mid, scan=scan)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(last2), jax.tree.leaves(last), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    resets = jnp.zeros(xs.shape[:2], bool).at[:, 6].set(True)
    packed, packed_last = run_layer(params, HAWK_CONV, xs, mid, scan=scan, resets=resets)
    alone, alone_last = run_layer(params, HAWK_CONV, xs[:, 6:], scan=scan)
    np.testing.assert_allclose(packed[:, 6:], alone, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(packed_last), jax.tree.leaves(alone_last), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_window_and_convolution_settings_are_checked():
    with pytest.raises(ValueError, match="not both"):
        replace(PRESETS["qrnn"], short_conv=4)
    with pytest.raises(ValueError, match="width >= 2"):
        replace(PRESETS["rg_lru"], short_conv=1)
    with pytest.raises(ValueError, match="taps >= 1"):
        replace(PRESETS["qrnn"], input_window=0)


@pytest.mark.slow
def test_hgrn_layers_get_lower_bounds_rising_from_zero_by_depth():
    """γ = cumsum(softmax(Γ)) − softmax(Γ)_1 over the layers, in NumPy; each layer of the
    model equals the layer alone run with its γ (the layer's equations are checked in
    tests/test_numpy_reference.py)."""
    from gru_research.model import ModelConfig, apply_model, init_model

    config = ModelConfig(cell="hgrn", input_size=3, hidden_size=4, output_size=4, num_layers=3)
    params = init_model(jax.random.key(0), config)
    assert params["lower_bounds"].shape == (3, 4)
    params["lower_bounds"] = jax.random.normal(jax.random.key(1), (3, 4))
    params["readout"] = {"w": jnp.eye(4), "b": jnp.zeros(4)}
    logits = np.asarray(params["lower_bounds"], np.float64)
    weights = np.exp(logits) / np.exp(logits).sum(axis=0)
    gammas = np.cumsum(weights, axis=0) - weights[0]
    assert np.all(gammas[0] == 0) and np.all(np.diff(gammas, axis=0) > 0)

    xs = jax.random.normal(jax.random.key(2), (2, 7, 3))
    ys, _ = apply_model(params, config, xs)
    h = xs
    for layer, gamma in zip(params["layers"], gammas, strict=True):
        h, _ = run_layer(
            layer | {"lower_bound": jnp.asarray(gamma, jnp.float32)}, PRESETS["hgrn"], h
        )
    np.testing.assert_allclose(ys, h, rtol=1e-5, atol=1e-6)
    with jax.enable_x64(True):  # Γ's gradient against float64 finite differences
        as64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
        params64, xs64 = as64(params), as64(xs)

        def loss(logits):
            ys = apply_model(params64 | {"lower_bounds": logits}, config, xs64)[0]
            return jnp.sum(jnp.sin(ys))

        check_grads(loss, (params64["lower_bounds"],), order=1, modes=["rev"])


def test_a_forget_lower_bound_needs_a_learned_forget_gate():
    with pytest.raises(ValueError, match="lower bound"):
        replace(PRESETS["lstm_no_forget_gate"], forget_lower_bound=True)
    with pytest.raises(ValueError, match="lower bound"):
        replace(PRESETS["gru"], forget_lower_bound=True)
