"""Sequence-level parity with the Flax cells the presets claim to equal (DESIGN.md §2).

Each preset's parameters are mapped into the Flax cell's parameter tree (names from
``flax/linen/recurrent.py``) and both run over the same sequence from the same initial carry,
ours through ``run_layer``, Flax's through ``flax.linen.RNN``.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research.cells import init_layer
from gru_research.gates import PRESETS
from gru_research.scan import run_layer

B, T, I, H = 3, 50, 5, 7
ATOL = 1e-5

Params = dict
Carry = jax.Array | tuple[jax.Array, jax.Array]


def dense(kernel: jax.Array, bias: jax.Array | None = None) -> dict:
    return {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}


def to_simple(p: Params) -> dict:
    """SimpleCell: tanh(i(x) + h(h)), the bias on the input Dense."""
    return {"i": dense(p["W"]["h"], p["b"]["h"]), "h": dense(p["U"]["h"])}


def to_gru(p: Params) -> dict:
    """GRUCell: gate biases on the input side; hn carries the reset-after bias c_h."""
    W, U, b = p["W"], p["U"], p["b"]
    return {
        "ir": dense(W["r"], b["r"]),
        "iz": dense(W["z"], b["z"]),
        "in": dense(W["h"], b["h"]),
        "hr": dense(U["r"]),
        "hz": dense(U["z"]),
        "hn": dense(U["h"], p["c_h"]),
    }


def to_mgu(p: Params) -> dict:
    """MGUCell: forget gate f = our z; hn has a bias (c_h) only when reset_gate=True."""
    W, U, b = p["W"], p["U"], p["b"]
    return {
        "if": dense(W["z"], b["z"]),
        "in": dense(W["h"], b["h"]),
        "hf": dense(U["z"]),
        "hn": dense(U["h"], p.get("c_h")),
    }


def to_lstm(p: Params) -> dict:
    """LSTMCell: input Denses without bias, the bias on the recurrent Denses."""
    W, U, b = p["W"], p["U"], p["b"]
    tree = {f"i{k}": dense(W[k]) for k in "ifgo"}
    tree |= {f"h{k}": dense(U[k], b[k]) for k in "ifgo"}
    return tree


CASES: dict[str, tuple[Callable[[], nn.RNNCellBase], Callable[[Params], dict]]] = {
    "rnn_tanh": (lambda: nn.SimpleCell(H), to_simple),
    "gru": (lambda: nn.GRUCell(H), to_gru),
    "mgu_flax": (lambda: nn.MGUCell(H), to_mgu),
    "gru_no_reset": (lambda: nn.MGUCell(H, reset_gate=False), to_mgu),
    "lstm": (lambda: nn.LSTMCell(H), to_lstm),
}


def random_params(name: str, seed: int) -> Params:
    """The preset's parameter tree with every leaf redrawn (nonzero biases and c_h)."""
    params = init_layer(jax.random.PRNGKey(seed), PRESETS[name], I, H)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    new = [jnp.asarray(0.6 * rng.standard_normal(leaf.shape), jnp.float32) for leaf in leaves]
    return jax.tree.unflatten(tree, new)


def random_carry(name: str, seed: int) -> Carry:
    rng = np.random.default_rng(seed + 1)

    def draw() -> jax.Array:
        return jnp.asarray(0.8 * rng.standard_normal((B, H)), jnp.float32)

    return (draw(), draw()) if PRESETS[name].family == "lstm" else draw()


def leaf_count(tree: object) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", list(CASES))
def test_sequence_parity_with_flax(name: str) -> None:
    make_cell, to_flax = CASES[name]
    params = random_params(name, seed=21)
    rng = np.random.default_rng(22)
    xs = jnp.asarray(rng.standard_normal((B, T, I)), jnp.float32)
    carry0 = random_carry(name, seed=23)

    rnn = nn.RNN(make_cell(), return_carry=True)
    flax_params = {"cell": to_flax(params)}
    template = rnn.init(jax.random.PRNGKey(0), xs, initial_carry=carry0)["params"]
    assert jax.tree.structure(flax_params) == jax.tree.structure(template)
    assert jax.tree.map(jnp.shape, flax_params) == jax.tree.map(jnp.shape, template)
    assert leaf_count(params) == leaf_count(template), "parameter counts differ from Flax's"

    flax_carry, flax_ys = rnn.apply({"params": flax_params}, xs, initial_carry=carry0)
    ys, carry = run_layer(params, PRESETS[name], xs, carry0, scan="sequential")

    assert ys.shape == flax_ys.shape == (B, T, H)
    assert float(jnp.max(jnp.abs(ys - flax_ys))) <= ATOL
    for ours, theirs in zip(jax.tree.leaves(carry), jax.tree.leaves(flax_carry), strict=True):
        assert float(jnp.max(jnp.abs(ours - theirs))) <= ATOL


def test_mgu_zhou_is_not_flax_mgu() -> None:
    """google/flax#4608: the ``mgu`` preset (Zhou et al.) must not reproduce Flax's MGUCell."""
    params = random_params("mgu", seed=31)
    xs = jnp.asarray(np.random.default_rng(32).standard_normal((B, T, I)), jnp.float32)
    h0 = random_carry("mgu", seed=33)
    flax_params = {"cell": to_mgu({**params, "c_h": jnp.zeros((H,), jnp.float32)})}
    _, flax_ys = nn.RNN(nn.MGUCell(H), return_carry=True).apply(
        {"params": flax_params}, xs, initial_carry=h0
    )
    ys, _ = run_layer(params, PRESETS["mgu"], xs, h0, scan="sequential")
    assert float(jnp.max(jnp.abs(ys - flax_ys))) > 0.05
