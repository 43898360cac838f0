"""The recurrent core: scans agree, gradients are right, seeds vmap, counts match closed forms."""

from dataclasses import replace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from presets import unit_unless_new

from gru_research.cells import init_layer, join_carry, zero_carry
from gru_research.gates import PRESETS, Candidate, Fixed, Gate, GateDesign, get_design
from gru_research.model import (
    GatedCell,
    GatedRNN,
    ModelConfig,
    RecurrentLayer,
    apply_model,
    count_params,
    design_param_count,
    init_model,
    init_population,
    model_param_count,
    over_seeds,
    seed_keys,
)
from gru_research.scan import run_layer

PARALLEL = [name for name, design in PRESETS.items() if design.parallel_scan]  # min_gru first


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def random_carry(
    design: GateDesign, key, batch: int, hidden: int, inputs: int, positive: bool = False
):
    """A random state, and for a design with an input history its last inputs."""
    h = jax.random.uniform(key, (batch, hidden), minval=0.0 if positive else -1.0)
    state = (h, h[::-1]) if design.family == "lstm" else h
    if design.gating == "exponential":  # c, n > 0, m, h
        state = (h[::-1], 0.5 + h**2, h - 0.5, h)
    history = jax.random.normal(jax.random.fold_in(key, 1), (batch, design.input_history, inputs))
    return join_carry(design, state, history)


@pytest.mark.parametrize(
    "name", [pytest.param("min_gru", marks=pytest.mark.slow), *map(unit_unless_new, PARALLEL[1:])]
)
@pytest.mark.parametrize("carried", [False, True])
def test_parallel_scan_equals_sequential_at_T_1000(name, carried):
    design = PRESETS[name]
    params = init_layer(jax.random.key(0), design, 5, 7)
    xs = jax.random.normal(jax.random.key(1), (3, 1000, 5))
    carry = random_carry(design, jax.random.key(2), 3, 7, 5, positive=True) if carried else None
    ys_seq, c_seq = run_layer(params, design, xs, carry, scan="sequential")
    ys_par, c_par = run_layer(params, design, xs, carry, scan="parallel")
    assert rel_err(ys_par, ys_seq) <= 1e-4
    for a, b in zip(jax.tree.leaves(c_par), jax.tree.leaves(c_seq), strict=True):
        assert rel_err(a, b) <= 1e-4


@pytest.mark.parametrize(
    "name",
    [pytest.param("min_gru", marks=pytest.mark.slow), *map(unit_unless_new, PARALLEL[1:]), "gru"],
)
def test_auto_scan_equals_explicit_choices(name):
    design = PRESETS[name]
    params = init_layer(jax.random.key(0), design, 5, 7)
    xs = jax.random.normal(jax.random.key(1), (2, 40, 5))
    auto = run_layer(params, design, xs, scan="auto")[0]
    for kind in ["sequential", "parallel"] if design.parallel_scan else ["sequential"]:
        assert rel_err(auto, run_layer(params, design, xs, scan=kind)[0]) <= 1e-5


def test_parallel_scan_refused_for_state_reading_designs():
    params = init_layer(jax.random.key(0), PRESETS["gru"], 3, 4)
    with pytest.raises(ValueError, match="only the sequential scan"):
        run_layer(params, PRESETS["gru"], jnp.zeros((1, 5, 3)), scan="parallel")


# the minimal RNNs' gradients are also checked against finite differences in
# tests/test_initial_state.py (learned and carried states under both scans)
FD_SLOW = {"min_gru", "min_lstm"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in FD_SLOW else unit_unless_new(n)
        for n in PRESETS
    ],
)
def test_gradients_match_finite_differences_float64(name):
    design = PRESETS[name]
    with jax.enable_x64(True):
        params = jax.tree.map(
            lambda v: v.astype(jnp.float64), init_layer(jax.random.key(0), design, 3, 4)
        )
        xs = jax.random.normal(jax.random.key(1), (2, 6, 3), jnp.float64)
        carry = jax.tree.map(
            lambda v: v.astype(jnp.float64),
            random_carry(design, jax.random.key(2), 2, 4, 3, positive=True),
        )

        def loss(params, xs, carry):
            ys, last = run_layer(params, design, xs, carry, scan="sequential")
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(last))

        check_grads(loss, (params, xs, carry), order=1, modes=["rev"])
        if design.parallel_scan:
            check_grads(
                lambda p, x: jnp.sum(jnp.sin(run_layer(p, design, x, scan="parallel")[0])),
                (params, xs),
                order=1,
                modes=["rev"],
            )


def _closed_form_count(name: str, I: int, H: int) -> int:
    """Parameters of one layer, from DESIGN.md §2 (one input-side bias per gate, plus c_h)."""
    full = I * H + H * H + H  # W x + U h + b
    counts = {
        "rnn_tanh": full,
        "gru": 3 * full + H,
        "gru_reset_before": 3 * full,
        "gru_no_reset": 2 * full,
        "mgu": 2 * full,
        "mgu_flax": 2 * full + H,
        "min_gru": 2 * (I * H + H),
        "min_gru_linear": 2 * (I * H + H),
        "min_gru_signed": 2 * (I * H + H),
        "gru1": 2 * (H * H + H) + full + H,
        "gru2": 2 * (H * H) + full + H,
        "gru3": 2 * H + full + H,
        "lstm": 4 * full,
        "min_lstm": 3 * (I * H + H),
        "lstm_no_input_gate": 3 * full,
        "lstm_no_forget_gate": 3 * full,
        "lstm_no_output_gate": 3 * full,
        "lstm_cifg": 3 * full,
        "lstm_forget_bias_0": 4 * full,
        "indrnn": I * H + 2 * H,  # W, b, the diagonal u
        "lstm_peephole": 4 * full + 3 * H,  # a peephole vector per gate
        "lstm_peephole_nig": 3 * full + 2 * H,
        "lstm_peephole_nfg": 3 * full + 2 * H,
        "lstm_peephole_nog": 3 * full + 2 * H,
        "lstm_peephole_niaf": 4 * full + 3 * H,
        "lstm_peephole_noaf": 4 * full + 3 * H,
        "lstm_peephole_cifg": 3 * full + 2 * H,
        "janet": 2 * full,
        "sru": 2 * (I * H + 2 * H) + I * H + I * H,  # f, r with peepholes; W x; W_skip (I ≠ H)
        "rg_lru": 3 * (I * H + H) + H,  # input gate, recurrence gate, W x; the decay Λ
        "hgrn": 3 * (I * H + H),  # f, o and the candidate from x (the model holds Γ)
        "slstm": 4 * (I * H + H) + 4 * (H // 4) ** 2 * 4,  # 4 heads of (H/4)² per gate
        "qrnn": 3 * (2 * I * H + H),  # f, o and the candidate over a window of two inputs
    }
    return counts[name]


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_counts_equal_closed_forms(name):
    I, H = 5, 8  # H divisible by the 4 heads of a block recurrence
    assert design_param_count(name, I, H) == _closed_form_count(name, I, H)
    assert count_params(init_layer(jax.random.key(0), PRESETS[name], I, H)) == (
        _closed_form_count(name, I, H)
    )


def test_gru_count_is_three_blocks_plus_biases():
    I, H = 64, 128
    assert design_param_count("gru", I, H) == 3 * (I * H + H * H) + 4 * H
    assert design_param_count("lstm", I, H) == 4 * (I * H + H * H) + 4 * H


def test_unknown_design_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_design("gruu")
    message = str(err.value)
    assert "\n" not in message and "gruu" in message
    assert all(name in message for name in PRESETS)


def test_a_new_variant_is_a_few_lines_of_description():
    # Greff et al. (2017): an LSTM without output activation, and a ReLU-candidate GRU.
    noaf = replace(PRESETS["lstm"], name="lstm_noaf", output_activation="identity")
    relu_gru = replace(PRESETS["gru"], name="gru_relu", candidate=Candidate(activation="relu"))
    learned_vector_gate = GateDesign(
        name="gru_const_update",
        family="gru",
        gates=(("z", Gate(x=False, h=False, bias_init=2.0)), ("r", Fixed(1.0))),
    )
    xs = jax.random.normal(jax.random.key(1), (2, 9, 3))
    for design in [noaf, relu_gru, learned_vector_gate]:
        params = init_layer(jax.random.key(0), design, 3, 4)
        ys, _ = run_layer(params, design, xs)
        assert ys.shape == (2, 9, 4) and bool(jnp.all(jnp.isfinite(ys)))
    assert not np.allclose(
        run_layer(init_layer(jax.random.key(0), noaf, 3, 4), noaf, xs)[0],
        run_layer(init_layer(jax.random.key(0), PRESETS["lstm"], 3, 4), PRESETS["lstm"], xs)[0],
    )


def test_a_design_must_name_its_family_gates():
    with pytest.raises(ValueError, match="names the gates"):
        GateDesign(name="bad", family="gru", gates=(("z", Gate()),))


def _loss(config: ModelConfig):
    def loss(params, batch):
        logits, _ = apply_model(params, config, batch["x"])
        return jnp.mean((logits - batch["y"]) ** 2)

    return loss


@pytest.mark.parametrize("block", ["plain", pytest.param("residual", marks=pytest.mark.slow)])
def test_vmapped_seeds_equal_separate_calls(block):
    config = ModelConfig(
        cell="gru", input_size=3, hidden_size=8, output_size=2, num_layers=2, block=block
    )
    seeds = [0, 1, 2, 3]
    with jax.enable_x64(True):
        params = init_population(seed_keys(seeds), config)
        batch = {
            "x": jax.random.normal(jax.random.key(9), (4, 5, 10, 3)),
            "y": jax.random.normal(jax.random.key(8), (4, 5, 10, 2)),
        }
        loss = _loss(config)
        values, grads = over_seeds(jax.value_and_grad(loss))(params, batch)
        one_seed = jax.jit(jax.value_and_grad(loss))
        for s, seed in enumerate(seeds):
            single = init_model(jax.random.key(seed), config)
            take = lambda tree, s=s: jax.tree.map(lambda v: v[s], tree)  # noqa: E731
            chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, b), take(params), single)
            assert all(jax.tree.leaves(chex_equal))
            value, grad = one_seed(single, take(batch))
            assert abs(float(values[s]) - float(value)) <= 1e-6
            for a, b in zip(jax.tree.leaves(take(grads)), jax.tree.leaves(grad), strict=True):
                assert float(jnp.max(jnp.abs(a - b))) <= 1e-6
    first, second = (jax.tree.map(lambda v, s=s: v[s], params) for s in (0, 1))
    assert not np.allclose(first["readout"]["w"], second["readout"]["w"])


def test_shared_data_vmaps_only_params():
    config = ModelConfig(cell="min_gru", input_size=3, hidden_size=4, output_size=1)
    params = init_population(seed_keys([0, 1]), config)
    batch = {"x": jnp.ones((2, 6, 3)), "y": jnp.zeros((2, 6, 1))}
    values = over_seeds(_loss(config), shared_data=True)(params, batch)
    assert values.shape == (2,) and float(values[0]) != float(values[1])


@pytest.mark.slow
def test_token_inputs_and_every_preset_forward_and_grad():
    for name in PRESETS:
        config = ModelConfig(cell=name, vocab_size=11, hidden_size=8, output_size=11, num_layers=2)
        params = init_model(jax.random.key(0), config)
        tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, 11)

        def loss(p, config=config, tokens=tokens):
            logits = apply_model(p, config, tokens)[0]
            return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

        grads = jax.jit(jax.grad(loss))(params)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)), name


def test_carries_continue_a_sequence():
    config = ModelConfig(cell="lstm", input_size=3, hidden_size=5, output_size=2, num_layers=2)
    params = init_model(jax.random.key(0), config)
    xs = jax.random.normal(jax.random.key(1), (2, 12, 3))
    whole, last = apply_model(params, config, xs)
    first, mid = apply_model(params, config, xs[:, :5])
    second, last2 = apply_model(params, config, xs[:, 5:], mid)
    assert rel_err(jnp.concatenate([first, second], axis=1), whole) <= 1e-5
    for a, b in zip(jax.tree.leaves(last2), jax.tree.leaves(last), strict=True):
        assert rel_err(a, b) <= 1e-5


def test_flax_modules_match_the_functional_form():
    config = ModelConfig(cell="mgu", input_size=3, hidden_size=5, output_size=2)
    xs = jax.random.normal(jax.random.key(1), (2, 8, 3))
    module = GatedRNN(config)
    variables = module.init(jax.random.key(0), xs)
    out, _ = module.apply(variables, xs)
    ref, _ = apply_model(variables["params"]["model"], config, xs)
    assert np.array_equal(out, ref)

    layer = RecurrentLayer(cell="lstm", hidden_size=5)
    layer_vars = layer.init(jax.random.key(0), xs)
    ys, _ = layer.apply(layer_vars, xs)
    assert rel_err(ys, run_layer(layer_vars["params"]["layer"], PRESETS["lstm"], xs)[0]) <= 1e-6

    for name in ["gru", "mgu", "min_gru", "lstm", "min_lstm"]:
        rnn = nn.RNN(GatedCell(cell=name, hidden_size=5))
        rnn_vars = rnn.init(jax.random.key(0), xs)
        params = rnn_vars["params"]["cell"]["layer"]
        expected = run_layer(params, PRESETS[name], xs, scan="sequential")[0]
        assert rel_err(rnn.apply(rnn_vars, xs), expected) <= 1e-5, name


def test_zero_carry_shapes():
    assert zero_carry(PRESETS["gru"], (3,), 4).shape == (3, 4)
    c, h = zero_carry(PRESETS["lstm"], (3,), 4)
    assert c.shape == h.shape == (3, 4)


@pytest.mark.parametrize("bad", [dict(hidden_size=0), dict(num_layers=-1), dict(block="deep")])
def test_model_config_refuses_impossible_sizes(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


def test_one_hot_tokens_equal_an_identity_embedding():
    """``one_hot``: tokens enter the gates as one-hot vectors (no embedding parameter), which is
    the embedded model with the embedding fixed to the identity."""
    one_hot = ModelConfig(cell="lstm", vocab_size=10, hidden_size=6, output_size=9, one_hot=True)
    embedded = replace(one_hot, one_hot=False, embed_size=10)
    params = init_model(jax.random.key(0), one_hot)
    assert "embed" not in params and params["layers"][0]["W"]["i"].shape == (10, 6)
    tokens = jax.random.randint(jax.random.key(1), (3, 7), 0, 10)
    with_identity = {**params, "embed": jnp.eye(10)}
    assert jnp.allclose(
        apply_model(params, one_hot, tokens)[0], apply_model(with_identity, embedded, tokens)[0]
    )
    assert model_param_count(one_hot) == count_params(params)
    with pytest.raises(ValueError, match="one_hot needs token inputs"):
        ModelConfig(cell="gru", input_size=2, one_hot=True)
