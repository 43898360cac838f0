"""Where a training step's time goes in the adding regime, ours against Flax's, as JSON.

    python benchmarks/phases.py [--rounds 7]

Forward, forward + backward and the whole step (RMSProp after element-wise clipping) of a gru
and an lstm at B = 50, T = 200, 2 inputs, H = 128, the last step's MSE, timed interleaved in
one process. It uses only the model's oldest public functions (``ModelConfig``,
``init_model``, ``apply_model``), so that ``campaign.py --before REV`` can run the same
measurement on an older commit of the package and set the two profiles side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gru_research.model import ModelConfig, apply_model, init_model

BATCH, LENGTH, INPUTS, HIDDEN = 50, 200, 2, 128
PHASES = ("forward", "forward + backward", "whole step")
FLAX_CELLS = {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell}


class FlaxModel(nn.Module):
    cell: str

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.RNN(FLAX_CELLS[self.cell](features=HIDDEN))(x))


def batch() -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    inputs = rng.uniform(size=(BATCH, LENGTH, INPUTS)).astype(np.float32)
    return jnp.asarray(inputs), jnp.asarray(rng.uniform(size=BATCH).astype(np.float32))


def phase_runs(loss, params, inputs, targets) -> dict:
    """One callable per phase, each compiled once and waiting for its result."""
    optimizer = optax.chain(optax.clip(1.0), optax.rmsprop(1e-3, decay=0.9))

    def step(state, inputs, targets):
        p, o = state
        grads = jax.grad(loss)(p, inputs, targets)
        updates, o = optimizer.update(grads, o, p)
        return optax.apply_updates(p, updates), o

    forward = jax.jit(loss)
    backward = jax.jit(jax.grad(loss))
    whole = jax.jit(step)
    state = [(params, optimizer.init(params))]

    def run_whole():
        state[0] = whole(state[0], inputs, targets)
        jax.block_until_ready(state[0])

    return {
        "forward": lambda: forward(params, inputs, targets).block_until_ready(),
        "forward + backward": lambda: jax.block_until_ready(backward(params, inputs, targets)),
        "whole step": run_whole,
    }


def measure(rounds: int) -> dict[str, dict[str, float]]:
    """implementation → phase → median seconds, every phase of every implementation timed
    interleaved (one call each per round, after two warm-up calls)."""
    inputs, targets = batch()
    runs = {}
    for cell in FLAX_CELLS:
        config = ModelConfig(cell=cell, input_size=INPUTS, hidden_size=HIDDEN, output_size=1)
        flax_model = FlaxModel(cell)

        def ours(p, x, y, config=config):
            return jnp.mean((apply_model(p, config, x)[0][:, -1, 0] - y) ** 2)

        def flax(p, x, y, model=flax_model):
            return jnp.mean((model.apply(p, x)[:, -1, 0] - y) ** 2)

        for name, loss, params in (
            (f"gru-research {cell}", ours, init_model(jax.random.key(0), config)),
            (f"flax {cell}", flax, flax_model.init(jax.random.key(0), inputs)),
        ):
            for phase, run in phase_runs(loss, params, inputs, targets).items():
                runs[(name, phase)] = run
    for run in runs.values():
        run()
        run()
    seconds = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[key].append(time.perf_counter() - start)
    out: dict[str, dict[str, float]] = {}
    for (name, phase), values in seconds.items():
        out.setdefault(name, {})[phase] = statistics.median(values)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
