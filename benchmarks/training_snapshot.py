"""A committed run retrained for a few steps, its parameters saved for a before/after check.

When a sweep's points were trained at different commits, or a run of one experiment is reused
by another, this shows that the commits train the same numbers: retrain the run's own config
at each commit for the same number of steps and compare the parameters bit for bit::

    PYTHONPATH=<checkout A> python benchmarks/training_snapshot.py write RUN STEPS a.npz
    PYTHONPATH=<checkout B> python benchmarks/training_snapshot.py write RUN STEPS b.npz
    python benchmarks/training_snapshot.py compare a.npz b.npz

RUN is a run folder with a ``config.json``; training stops after STEPS steps, and the last
checkpoint by then is saved (a run counted in epochs checkpoints at the end of each epoch, so
give it a whole epoch). ``--data-dir`` replaces the config's data folder, which is saved
relative to the folder the run was started in.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def write(run: Path, steps: int, path: str, data_dir: str | None) -> None:
    import jax
    import orbax.checkpoint as ocp

    from gru_research.train import TrainConfig, train  # importable there at every commit

    saved = json.loads((run / "config.json").read_text())["run"]
    known = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}
    config = TrainConfig(
        **known | {"checkpoint_every": steps} | ({"data_dir": data_dir} if data_dir else {})
    )
    with tempfile.TemporaryDirectory() as folder:
        train(config, Path(folder) / "run", wandb_mode="disabled", stop_after=steps)
        # listed and restored here, not through gru_research's own helpers, which older commits
        # may lack or define differently: this must run unchanged at every commit compared
        done = sorted(
            int(p.name) for p in (Path(folder) / "run/checkpoints").iterdir() if p.name.isdigit()
        )
        if not done:
            sys.exit(f"no checkpoint within {steps} steps; give a whole epoch or more")
        state = ocp.StandardCheckpointer().restore(
            Path(folder) / f"run/checkpoints/{done[-1]}/default"
        )
    leaves = jax.tree_util.tree_leaves_with_path(state["params"])
    np.savez(path, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    print(
        f"wrote the parameters after {done[-1]} steps ({len(leaves)} arrays) to {path}",
        file=sys.stderr,
    )


def compare(first: str, second: str) -> int:
    """Prints whether the two files hold the same parameters bit for bit; 1 if they differ."""
    a, b = np.load(first), np.load(second)
    if sorted(a.files) != sorted(b.files):
        print(f"different parameters: {sorted(set(a.files) ^ set(b.files))}")
        return 1
    differing = [k for k in a.files if not np.array_equal(a[k], b[k])]
    for key in differing:
        print(f"{key}: max |difference| {np.abs(a[key] - b[key]).max():.3g}")
    print(f"{len(a.files) - len(differing)} of {len(a.files)} arrays bit for bit equal")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="retrain RUN's config for STEPS steps; save its parameters")
    w.add_argument("run", type=Path)
    w.add_argument("steps", type=int)
    w.add_argument("path")
    w.add_argument("--data-dir", help="the data folder (default: the run's own)")
    c = sub.add_parser("compare", help="compare two snapshots bit for bit")
    c.add_argument("first")
    c.add_argument("second")
    args = parser.parse_args()
    if args.command == "write":
        write(args.run, args.steps, args.path, args.data_dir)
        return 0
    return compare(args.first, args.second)


if __name__ == "__main__":
    sys.exit(main())
