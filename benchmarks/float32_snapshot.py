"""Every preset's float32 outputs, last carry and parameter gradients, for a before/after check.

A change meant to leave today's designs as they are (a new axis of the design space, a faster
path) can be checked bit for bit on one machine: snapshot the code before the change and after
it, then compare the two files::

    PYTHONPATH=<checkout before> python benchmarks/float32_snapshot.py write before.npz
    PYTHONPATH=<checkout after>  python benchmarks/float32_snapshot.py write after.npz
    python benchmarks/float32_snapshot.py compare before.npz after.npz

Each preset known to both runs is compared on each scan it runs, at an input narrower than the
state (I = 3) and as wide as it (I = 16, H = 16), with lengths and a reset in the batch.
``tests/test_output_pins.py`` pins a few of the same numbers in float64 for CI.
"""

from __future__ import annotations

import argparse
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np

B, T, H = 4, 12, 16
INPUT_SIZES = (3, 16)


def snapshot(name: str, scan: str, input_size: int) -> dict[str, np.ndarray]:
    """The case's outputs, carry leaves and gradient leaves, by position in their trees."""
    from gru_research.cells import init_layer
    from gru_research.gates import PRESETS
    from gru_research.scan import run_layer

    design = PRESETS[name]
    rng = np.random.default_rng(zlib.crc32(f"{name}/{input_size}".encode()))
    shapes = init_layer(jax.random.key(0), design, input_size, H)
    params = jax.tree.map(
        lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), jnp.float32), shapes
    )
    xs = jnp.asarray(rng.standard_normal((B, T, input_size)), jnp.float32)
    carry = jax.tree.map(
        lambda a: jnp.asarray(rng.uniform(0.1, 0.9, a.shape), jnp.float32),
        run_layer(shapes, design, jnp.zeros((B, 1, input_size)))[1],
    )
    lengths = jnp.array([T, T - 3, 5, 1])
    resets = jnp.zeros((B, T), bool).at[0, 4].set(True)

    def loss(params):
        ys, last = run_layer(
            params, design, xs, carry, scan=scan, seq_lengths=lengths, resets=resets
        )
        return jnp.sum(ys**2) + sum(jnp.sum(c**3) for c in jax.tree.leaves(last)), (ys, last)

    grads, (ys, last) = jax.jit(jax.grad(loss, has_aux=True))(params)
    leaves = {"ys": [ys], "carry": jax.tree.leaves(last), "grads": jax.tree.leaves(grads)}
    return {f"{part}{i}": np.asarray(v) for part, vs in leaves.items() for i, v in enumerate(vs)}


def write(path: str) -> None:
    from gru_research.gates import PRESETS

    arrays = {}
    for name, design in PRESETS.items():
        for scan in ("sequential", "parallel") if design.parallel_scan else ("sequential",):
            for size in INPUT_SIZES:
                for key, value in snapshot(name, scan, size).items():
                    arrays[f"{name}/{scan}/I={size}/{key}"] = value
    np.savez(path, **arrays)
    print(f"wrote {len(arrays)} arrays of {len(PRESETS)} presets to {path}", file=sys.stderr)


def compare(before: str, after: str) -> int:
    """Prints each case present in both files that is not bit-for-bit equal; 1 if any."""
    old, new = np.load(before), np.load(after)
    cases = sorted({k.rsplit("/", 1)[0] for k in old.files} & {k.rsplit("/", 1)[0] for k in new})
    differing = []
    for case in cases:
        keys = [k for k in old.files if k.startswith(case + "/")]
        same = all(k in new and np.array_equal(old[k], new[k]) for k in keys)
        if not same:
            worst = max(float(np.max(np.abs(old[k] - new[k]))) for k in keys if k in new)
            differing.append(case)
            print(f"{case}: differs, max |after - before| = {worst:.3g}")
    only = sorted({k.split("/")[0] for k in new.files} - {k.split("/")[0] for k in old.files})
    print(f"{len(cases) - len(differing)} of {len(cases)} cases bit-for-bit equal (float32)")
    print(f"new presets, not compared: {', '.join(only) or 'none'}")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("write").add_argument("path")
    pair = commands.add_parser("compare")
    pair.add_argument("before")
    pair.add_argument("after")
    args = parser.parse_args()
    if args.command == "write":
        write(args.path)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
