"""The sequence features for every preset, on every scan it runs: right padding, resets in a
packed batch, both directions and seeds vmapped. Parametrised over ``PRESETS`` itself, so a new
preset cannot escape them (tests/test_sequences.py checks the same features in more depth on
one preset per family)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gru_research.cells import init_layer
from gru_research.gates import PRESETS
from gru_research.model import (
    ModelConfig,
    apply_model,
    init_model,
    init_population,
    over_seeds,
    seed_keys,
)
from gru_research.scan import run_layer

B, T, I, H = 3, 9, 3, 4
LENGTHS = (9, 5, 1)
CASES = [
    (name, scan)
    for name, design in PRESETS.items()
    for scan in (("sequential", "parallel") if design.parallel_scan else ("sequential",))
]

pytestmark = pytest.mark.slow  # about a hundred small compilations; tests/test_sequences.py
# runs the same features on one preset per family in the unit tests


def close(a, b, tol=1e-5) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) <= tol * max(float(np.max(np.abs(b))), 1.0)


def layer(name: str):
    """A layer with every parameter redrawn away from its initialisation (biases, peepholes,
    decays non-zero), and inputs."""
    design = PRESETS[name]
    shapes = init_layer(jax.random.key(0), design, I, H)
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(
        tree, [0.5 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves, strict=True)]
    )
    return design, params, jax.random.normal(jax.random.key(2), (B, T, I))


def leaves_close(got, want, index=None) -> bool:
    pick = (lambda v: v) if index is None else (lambda v: v[index])
    pairs = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    return all(close(pick(a), b) for a, b in pairs)


@pytest.mark.parametrize("name, scan", CASES)
def test_padded_batch_equals_each_sequence_alone(name, scan):
    design, params, xs = layer(name)
    ys, carry = run_layer(params, design, xs, scan=scan, seq_lengths=jnp.array(LENGTHS))
    for b, n in enumerate(LENGTHS):
        alone, alone_carry = run_layer(params, design, xs[b : b + 1, :n], scan=scan)
        assert close(ys[b, :n], alone[0]) and not np.any(np.asarray(ys[b, n:]))
        assert leaves_close(jax.tree.map(lambda v, b=b: v[b : b + 1], carry), alone_carry)


@pytest.mark.parametrize("name, scan", CASES)
def test_a_reset_in_a_packed_batch_equals_two_sequences(name, scan):
    design, params, xs = layer(name)
    k = 4
    resets = jnp.zeros((B, T), bool).at[:, k].set(True)
    ys, carry = run_layer(params, design, xs, scan=scan, resets=resets)
    first, _ = run_layer(params, design, xs[:, :k], scan=scan)
    second, second_carry = run_layer(params, design, xs[:, k:], scan=scan)
    assert close(ys, jnp.concatenate([first, second], axis=1))
    assert leaves_close(carry, second_carry)


@pytest.mark.parametrize("name, scan", CASES)
def test_the_backward_direction_reads_each_sequence_reversed(name, scan):
    config = ModelConfig(
        cell=name, input_size=I, hidden_size=H, output_size=2 * H, scan=scan, bidirectional="concat"
    )
    params = init_model(jax.random.key(0), config)
    params["readout"] = {"w": jnp.eye(2 * H), "b": jnp.zeros(2 * H)}
    directions = params["layers"][0]
    xs = jax.random.normal(jax.random.key(2), (B, T, I))
    ys, _ = apply_model(params, config, xs, seq_lengths=jnp.array(LENGTHS))
    design = PRESETS[name]
    for b, n in enumerate(LENGTHS):
        forward, _ = run_layer(directions["forward"], design, xs[b : b + 1, :n], scan=scan)
        backward, _ = run_layer(
            directions["backward"], design, xs[b : b + 1, :n][:, ::-1], scan=scan
        )
        assert close(ys[b, :n], jnp.concatenate([forward[0], backward[0, ::-1]], axis=-1))


@pytest.mark.parametrize("name", list(PRESETS))
def test_vmapped_seeds_equal_each_seed_alone(name):
    config = ModelConfig(cell=name, input_size=I, hidden_size=H, output_size=2)
    seeds = [0, 1]
    batch = {
        "x": jax.random.normal(jax.random.key(3), (len(seeds), B, T, I)),
        "y": jax.random.normal(jax.random.key(4), (len(seeds), B, T, 2)),
    }

    def loss(params, batch):
        return jnp.mean((apply_model(params, config, batch["x"])[0] - batch["y"]) ** 2)

    population = init_population(seed_keys(seeds), config)
    values, grads = over_seeds(jax.value_and_grad(loss))(population, batch)
    for s, seed in enumerate(seeds):
        take = lambda tree, s=s: jax.tree.map(lambda v: v[s], tree)  # noqa: E731
        single = init_model(jax.random.key(seed), config)
        assert leaves_close(take(population), single)
        value, grad = jax.value_and_grad(loss)(single, take(batch))
        assert close(values[s], value) and leaves_close(take(grads), grad)
