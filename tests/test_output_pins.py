"""Output pins: a few presets' outputs and gradients, float64, pinned to 1e-12.

A change to the cell arithmetic that is meant to leave today's designs as they are (a new axis
of the design space, a faster path) must leave these numbers as they are. Parameters and inputs
come from NumPy's generator, so the pins do not depend on JAX's random numbers; each case runs
with right-padded lengths and a reset in the batch, so the masks are pinned too.

``python tests/test_output_pins.py`` rewrites ``tests/output_pins.json`` (only for a change that
is meant to move the numbers, said so in its commit).
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research.cells import init_layer
from gru_research.gates import PRESETS
from gru_research.scan import run_layer

PINS = Path(__file__).with_name("output_pins.json")
B, T, I, H = 3, 7, 3, 4
TOLERANCE = 1e-12
CASES = [
    ("gru", "sequential"),
    ("gru_reset_before", "sequential"),
    ("mgu", "sequential"),
    ("lstm", "sequential"),
    ("lstm_cifg", "sequential"),
    ("min_gru", "sequential"),
    ("min_gru", "parallel"),
    ("min_lstm", "parallel"),
    ("min_gru_linear", "parallel"),
]


def pinned_numbers(name: str, scan: str) -> dict[str, list]:
    """The outputs, last carry and parameter gradients of one case, as nested lists."""
    design = PRESETS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    shapes = init_layer(jax.random.key(0), design, I, H)
    params = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape)), shapes)
    xs = jnp.asarray(rng.standard_normal((B, T, I)))
    carry = jax.tree.map(
        lambda a: jnp.asarray(rng.uniform(0.1, 0.9, (B, H))),
        run_layer(shapes, design, jnp.zeros((B, 1, I)))[1],
    )
    lengths = jnp.array([T, T - 2, 4])
    resets = jnp.zeros((B, T), bool).at[0, 3].set(True)

    def loss(params):
        ys, last = run_layer(
            params, design, xs, carry, scan=scan, seq_lengths=lengths, resets=resets
        )
        return jnp.sum(ys**2) + sum(jnp.sum(c**3) for c in jax.tree.leaves(last)), (ys, last)

    grads, (ys, last) = jax.grad(loss, has_aux=True)(params)
    tolist = lambda tree: jax.tree.map(lambda a: np.asarray(a).tolist(), tree)  # noqa: E731
    return {"ys": tolist(ys), "carry": tolist(last), "grads": tolist(grads)}


def all_pins() -> dict[str, dict]:
    with jax.enable_x64(True):
        return {f"{name}/{scan}": pinned_numbers(name, scan) for name, scan in CASES}


@pytest.mark.parametrize(("name", "scan"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_outputs_and_gradients_equal_their_pins(name, scan):
    want = json.loads(PINS.read_text())[f"{name}/{scan}"]
    with jax.enable_x64(True):
        got = pinned_numbers(name, scan)
    for part in ("ys", "carry", "grads"):  # JSON keeps the leaves' order, not tuples
        np.testing.assert_allclose(
            jax.tree.leaves(got[part]), jax.tree.leaves(want[part]), rtol=0, atol=TOLERANCE
        )


if __name__ == "__main__":
    PINS.write_text(json.dumps(all_pins(), indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {PINS}", file=sys.stderr)
