"""Beyond the happy path: variable lengths, resets, carried state, bidirectional layers,
dropout and gate initialisations."""

from dataclasses import replace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from presets import unit_unless_new

from gru_research.cells import chrono_bias, init_layer
from gru_research.gates import PRESETS
from gru_research.model import (
    ModelConfig,
    apply_model,
    init_model,
    recurrent_dropout_mask,
    reverse_sequences,
)
from gru_research.scan import run_layer

# one preset per family and path: reset after / before, ungated, LSTM, and the linear ones
FAMILIES = [
    ("gru", "sequential"),
    ("mgu", "sequential"),
    ("rnn_tanh", "sequential"),
    ("lstm", "sequential"),
    ("min_gru", "sequential"),
    ("min_gru", "parallel"),
    ("min_gru_linear", "parallel"),
    ("min_lstm", "sequential"),
    ("min_lstm", "parallel"),
]


def close(a, b, tol=1e-5) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(b))), 1e-12)
    return float(np.max(np.abs(a - b))) / scale <= tol


def setup(name: str, batch=3, length=12, learn_initial_state=False):
    design = replace(PRESETS[name], learn_initial_state=learn_initial_state)
    params = init_layer(jax.random.key(0), design, 4, 8)
    if learn_initial_state:
        params["h0"] = jax.random.uniform(jax.random.key(7), (8,), minval=0.1, maxval=0.5)
        if "c0" in params:
            params["c0"] = jax.random.uniform(jax.random.key(8), (8,), minval=0.1, maxval=0.5)
    xs = jax.random.normal(jax.random.key(1), (batch, length, 4))
    return design, params, xs


@pytest.mark.parametrize(
    "name, scan",
    [
        pytest.param(*c, marks=pytest.mark.slow) if c == ("min_gru", "parallel") else c
        for c in FAMILIES
    ],
)
def test_padded_batch_equals_each_sequence_alone(name, scan):
    design, params, xs = setup(name)
    lengths = jnp.array([12, 7, 1])
    ys, carry = run_layer(params, design, xs, scan=scan, seq_lengths=lengths)
    for b, n in enumerate([12, 7, 1]):
        alone, alone_carry = run_layer(params, design, xs[b : b + 1, :n], scan=scan)
        assert close(ys[b, :n], alone[0])
        assert not np.any(np.asarray(ys[b, n:]))
        for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(alone_carry), strict=True):
            assert close(got[b], want[0])


@pytest.mark.parametrize("name, scan", FAMILIES)
@pytest.mark.parametrize("learned", [False, True])
def test_a_reset_equals_two_separate_sequences(name, scan, learned):
    design, params, xs = setup(name, learn_initial_state=learned)
    k = 5
    resets = jnp.zeros(xs.shape[:2], bool).at[:, k].set(True)
    ys, carry = run_layer(params, design, xs, scan=scan, resets=resets)
    first, _ = run_layer(params, design, xs[:, :k], scan=scan)
    second, second_carry = run_layer(params, design, xs[:, k:], scan=scan)
    assert close(ys, jnp.concatenate([first, second], axis=1))
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(second_carry), strict=True):
        assert close(got, want)


@pytest.mark.parametrize("name", [unit_unless_new(name) for name in PRESETS])
def test_two_halves_with_the_carry_passed_equal_the_whole(name):
    design, params, xs = setup(name)
    scans = ["sequential", "parallel"] if design.parallel_scan else ["sequential"]
    for scan in scans:
        whole, last = run_layer(params, design, xs, scan=scan)
        first, mid = run_layer(params, design, xs[:, :6], scan=scan)
        second, last2 = run_layer(params, design, xs[:, 6:], mid, scan=scan)
        assert close(jnp.concatenate([first, second], axis=1), whole)
        for a, b in zip(jax.tree.leaves(last2), jax.tree.leaves(last), strict=True):
            assert close(a, b)


def test_learned_initial_state_starts_the_sequence_and_gets_gradients():
    design, params, xs = setup("lstm", learn_initial_state=True)
    ys, _ = run_layer(params, design, xs)
    explicit, _ = run_layer(
        params,
        design,
        xs,
        (jnp.broadcast_to(params["c0"], (3, 8)), jnp.broadcast_to(params["h0"], (3, 8))),
    )
    assert close(ys, explicit)
    grads = jax.grad(lambda p: jnp.sum(run_layer(p, design, xs)[0] ** 2))(params)
    assert float(jnp.abs(grads["h0"]).sum()) > 0 and float(jnp.abs(grads["c0"]).sum()) > 0


def test_reverse_sequences_respects_lengths():
    xs = jnp.arange(2 * 5)[:, None].reshape(2, 5, 1).astype(float)
    out = reverse_sequences(xs, jnp.array([5, 3]))
    assert out[0, :, 0].tolist() == [4, 3, 2, 1, 0]
    assert out[1, :, 0].tolist() == [7, 6, 5, 8, 9]
    assert np.array_equal(reverse_sequences(out, jnp.array([5, 3])), xs)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_bidirectional_gru_matches_flax_bidirectional(with_lengths):
    config = ModelConfig(
        cell="gru", input_size=4, hidden_size=5, output_size=1, bidirectional="concat"
    )
    params = init_model(jax.random.key(0), config)["layers"][0]
    xs = jax.random.normal(jax.random.key(1), (3, 9, 4))
    lengths = jnp.array([9, 4, 6]) if with_lengths else None
    ours, _ = apply_model(
        {"layers": [params], "readout": {"w": jnp.eye(10), "b": jnp.zeros(10)}},
        replace(config, output_size=10),
        xs,
        seq_lengths=lengths,
    )
    flax_model = nn.Bidirectional(nn.RNN(nn.GRUCell(5)), nn.RNN(nn.GRUCell(5)))
    variables = flax_model.init(jax.random.key(0), xs)

    def to_flax(p):
        cell = {
            f"i{g}": {"kernel": p["W"][k], "bias": p["b"][k]}
            for g, k in (("r", "r"), ("z", "z"), ("n", "h"))
        }
        cell |= {f"h{g}": {"kernel": p["U"][k]} for g, k in (("r", "r"), ("z", "z"))}
        cell["hn"] = {"kernel": p["U"]["h"], "bias": p["c_h"]}
        cell["ir"]["bias"] = p["b"]["r"]
        return {"cell": cell}

    mapped = {
        "params": {
            "forward_rnn": to_flax(params["forward"]),
            "backward_rnn": to_flax(params["backward"]),
        }
    }
    assert jax.tree.structure(mapped) == jax.tree.structure(variables)
    theirs = flax_model.apply(mapped, xs, seq_lengths=lengths)
    if with_lengths:  # Flax leaves padded outputs as they are; ours are zero there
        valid = (jnp.arange(9)[None, :] < lengths[:, None])[..., None]
        theirs = jnp.where(valid, theirs, 0.0)
    assert close(ours, theirs)


@pytest.mark.slow
def test_bidirectional_sum_and_residual_run():
    for block, merge in [("plain", "sum"), ("residual", "sum")]:
        config = ModelConfig(
            cell="min_gru",
            vocab_size=7,
            hidden_size=6,
            output_size=7,
            num_layers=2,
            block=block,
            bidirectional=merge,
        )
        params = init_model(jax.random.key(0), config)
        out, carries = apply_model(params, config, jnp.ones((2, 5), int))
        assert out.shape == (2, 5, 7) and len(carries) == 2 and len(carries[0]) == 2


def test_dropout_same_key_same_masks_and_deterministic_evaluation():
    config = ModelConfig(
        cell="gru",
        vocab_size=9,
        hidden_size=8,
        output_size=9,
        num_layers=2,
        dropout=0.3,
        recurrent_dropout=0.3,
    )
    params = init_model(jax.random.key(0), config)
    tokens = jax.random.randint(jax.random.key(1), (4, 10), 0, 9)
    a = apply_model(params, config, tokens, dropout_key=jax.random.key(5))[0]
    b = apply_model(params, config, tokens, dropout_key=jax.random.key(5))[0]
    c = apply_model(params, config, tokens, dropout_key=jax.random.key(6))[0]
    assert np.array_equal(a, b) and not np.allclose(a, c)
    evaluation = apply_model(params, config, tokens)[0]
    assert np.array_equal(evaluation, apply_model(params, config, tokens)[0])
    no_dropout = replace(config, dropout=0.0, recurrent_dropout=0.0)
    assert close(evaluation, apply_model(params, no_dropout, tokens)[0], 1e-7)


def test_variational_mask_is_one_mask_for_every_time_step():
    mask = recurrent_dropout_mask(jax.random.key(3), 0.5, 4, 8)
    assert mask.shape == (4, 8)  # no time axis: drawn once, outside the time loop
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0.0, 2.0}
    design, params, xs = setup("gru", batch=4)
    params = init_layer(jax.random.key(0), design, 4, 8)
    ys, _ = run_layer(params, design, xs, h_mask=mask)
    # the same mask at every step: stepping by hand with h * mask reproduces the scan
    h, manual = jnp.zeros((4, 8)), []
    for t in range(xs.shape[1]):
        out, _ = run_layer(params, design, xs[:, t : t + 1], h, h_mask=mask)
        h = out[:, 0]
        manual.append(h)
    assert close(ys, jnp.stack(manual, axis=1))
    # and the mask does act: zeroed units do not feed the recurrent matmul
    assert not close(ys, run_layer(params, design, xs)[0])


def test_chrono_initialisation_range_and_seeds():
    t_max = 100.0
    lstm = replace(PRESETS["lstm"], chrono_t_max=t_max)
    first = init_layer(jax.random.key(0), lstm, 3, 64)
    second = init_layer(jax.random.key(1), lstm, 3, 64)
    b_f = np.asarray(first["b"]["f"])
    assert np.all(b_f >= 0.0) and np.all(b_f <= np.log(t_max - 1))
    assert np.array_equal(np.asarray(first["b"]["i"]), -b_f)
    assert not np.allclose(b_f, np.asarray(second["b"]["f"]))
    # where z writes the candidate (mgu, min_gru), its bias gets the negative
    for name in ["mgu", "min_gru"]:
        b_z = np.asarray(
            init_layer(jax.random.key(0), replace(PRESETS[name], chrono_t_max=t_max), 3, 64)["b"][
                "z"
            ]
        )
        assert np.all(b_z <= 0.0) and np.all(b_z >= -np.log(t_max - 1))
    b_z = np.asarray(
        init_layer(jax.random.key(0), replace(PRESETS["gru"], chrono_t_max=t_max), 3, 64)["b"]["z"]
    )
    assert np.all(b_z >= 0.0)
    with pytest.raises(ValueError):
        chrono_bias(jax.random.key(0), 2.0, 4)


def test_identity_recurrent_init():
    design = replace(PRESETS["rnn_tanh"], recurrent_init="identity")
    params = init_layer(jax.random.key(0), design, 3, 4)
    assert np.array_equal(params["U"]["h"], np.eye(4))


def test_stream_windows_cover_each_stream_once_per_epoch():
    from gru_research.tasks.lm import stream_window

    tokens = jnp.arange(103)
    batch, seq_len = 4, 5  # 25 tokens per stream, (25 - 1) // 5 = 4 windows per epoch
    seen, starts = [], []
    for window in range(8):
        inputs, targets, start = stream_window(tokens, jnp.array(window), batch, seq_len)
        assert np.array_equal(targets, inputs + 1)
        seen.append(np.asarray(targets))
        starts.append(bool(start))
    assert starts == [True, False, False, False] * 2
    epoch = np.concatenate(seen[:4], axis=1)
    streams = np.arange(100).reshape(4, 25)
    assert np.array_equal(epoch, streams[:, 1:21])  # each target once, in order, per stream
    assert np.array_equal(np.concatenate(seen[4:], axis=1), epoch)


@pytest.mark.slow
def test_stateful_lm_and_the_design_options_run_through_the_cli(tmp_path):
    import json
    import subprocess
    import sys

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 300)
    common = [
        "--steps",
        "20",
        "--log-every",
        "10",
        "--eval-every",
        "20",
        "--checkpoint-every",
        "20",
        "--hidden",
        "16",
        "--batch-size",
        "4",
        "--wandb",
        "disabled",
    ]
    runs = {
        "stateful": [
            "--task",
            "lm",
            "--text-file",
            str(corpus),
            "--seq-len",
            "16",
            "--stateful",
            "--cell",
            "lstm",
            "--learn-initial-state",
            "--layers",
            "2",
        ],
        "options": [
            "--task",
            "copy",
            "--seq-len",
            "10",
            "--cell",
            "gru",
            "--dropout=0.1",
            "--recurrent_dropout=0.2",
            "--chrono-t-max",
            "30",
            "--gate-bias",
            "1",
            "--recurrent-init",
            "identity",
            "--bidirectional",
            "sum",
            "--learn_initial_state=true",
        ],
    }
    for name, args in runs.items():
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gru_research.cli",
                "train",
                *args,
                *common,
                "--out",
                str(tmp_path / name),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["diverged"] == [] and summary["final"]["loss"][0] > 0
    config = json.loads((tmp_path / "stateful" / "config.json").read_text())
    assert config["run"]["stateful"] is True
    assert config["model"]["cell"]["learn_initial_state"] is True
