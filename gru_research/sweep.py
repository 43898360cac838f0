"""Sweeps: W&B sweep files, run locally one point after another, or exported for ``wandb agent``.

A sweep file is a W&B sweep configuration (``method``, ``metric``, ``parameters`` with
``values`` / ``value`` / a ``distribution``) plus keys that W&B ignores and the export drops:

* ``seeds``: how many seeds each point trains at once, vmapped (seeds are never a parameter);
* ``runs``: how many points a ``random`` sweep draws (default 10);
* ``report``: how the table is made (``metrics``, ``rows``, ``reference``) and the
  ``paper`` numbers and claims set beside ours.

Parameters are :class:`~gru_research.train.TrainConfig` fields. Each point trains into
``OUT/runs/<point name>``; rerun after a crash, finished points are skipped and a half-finished one
resumes from its checkpoint (that is simply ``train`` on the same folder).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from gru_research.config import TrainConfig
from gru_research.reporting import format_mean_std
from gru_research.tracking import write_atomic

SWEEP_METHODS = ("grid", "random")
LOCAL_KEYS = ("seeds", "runs", "report", "description")
CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file; one clear line for anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep file at {path}")
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return check_sweep(sweep, path)


def check_sweep(sweep: Any, path: str | Path) -> dict:
    """The sweep itself if it is well formed; one clear line naming ``path`` otherwise."""
    if not isinstance(sweep, dict) or "parameters" not in sweep:
        raise ValueError(f"{path}: a sweep file needs a 'parameters' mapping")
    if sweep.get("method", "grid") not in SWEEP_METHODS:
        raise ValueError(
            f"{path}: unknown method {sweep['method']!r}; valid methods: {', '.join(SWEEP_METHODS)}"
        )
    unknown = sorted(set(sweep["parameters"]) - CONFIG_FIELDS)
    if unknown:
        raise ValueError(
            f"{path}: unknown parameters {unknown}; valid: {', '.join(sorted(CONFIG_FIELDS))}"
        )
    if "seeds" in sweep["parameters"] or "seed" in sweep["parameters"]:
        raise ValueError(f"{path}: seeds are not a parameter; use the top-level 'seeds' count")
    return sweep


def _sample(spec: dict, rng: random.Random) -> Any:
    """One draw from a W&B parameter distribution."""
    kind = spec.get("distribution", "categorical" if "values" in spec else "constant")
    if kind == "constant":
        return spec["value"]
    if kind == "categorical":
        return rng.choice(spec["values"])
    if kind == "int_uniform":
        return rng.randint(spec["min"], spec["max"])
    if kind == "uniform":
        return rng.uniform(spec["min"], spec["max"])
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))
    raise ValueError(
        f"unsupported distribution {kind!r}; supported: categorical, int_uniform, "
        "uniform, log_uniform_values"
    )


def expand(sweep: dict) -> list[dict]:
    """The points of a sweep: the grid's cartesian product in file order, or N random draws."""
    params = sweep["parameters"]
    if sweep.get("method", "grid") == "grid":
        axes = []
        for name, spec in params.items():
            if "values" in spec:
                axes.append([(name, v) for v in spec["values"]])
            elif "value" in spec:
                axes.append([(name, spec["value"])])
            else:
                raise ValueError(f"grid parameter {name!r} needs 'values' or 'value'")
        return [dict(point) for point in itertools.product(*axes)]
    rng = random.Random(sweep.get("random_seed", 0))
    return [
        {name: _sample(spec, rng) for name, spec in params.items()}
        for _ in range(sweep.get("runs", 10))
    ]


def point_name(point: dict, sweep: dict) -> str:
    """A folder name from the parameters that vary across the sweep (the cell if none do)."""
    varying = [n for n, s in sweep["parameters"].items() if "value" not in s]
    varying = varying or (["cell"] if "cell" in point else list(point))
    return ",".join(f"{n}={point[n]}" for n in varying).replace("/", "_")


def point_config(point: dict, sweep: dict) -> TrainConfig:
    return TrainConfig(**point, seeds=sweep.get("seeds", 1))


def run_sweep(
    sweep: str | Path | dict,
    out: str | Path,
    *,
    wandb_mode: str = "offline",
    progress=print,
    data_dir: str | None = None,
) -> list[dict]:
    """Train every point into ``out/<point name>``, one after another; resumable.

    ``sweep`` is a sweep file, or a sweep already read (a dict with a ``name``), as the
    ``sweeps`` of an experiment such as textbook_claims.yaml. ``data_dir`` is the data root
    every point reads (where the file does not set ``data_dir`` itself).
    """
    from gru_research.train import train  # JAX: imported when a sweep runs

    out = Path(out)
    given = isinstance(sweep, dict)
    spec = check_sweep(sweep, sweep.get("name", "sweep")) if given else load_sweep(sweep)
    group = spec.get("name", out.name if given else Path(sweep).stem)
    points = [{"data_dir": data_dir, **p} if data_dir else p for p in expand(spec)]
    configs = [point_config(p, spec) for p in points]  # every point checked before any runs
    out.mkdir(parents=True, exist_ok=True)
    if given:
        write_atomic(out / "sweep.yaml", yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    else:
        shutil.copyfile(sweep, out / "sweep.yaml")
    summaries = []
    for i, (point, config) in enumerate(zip(points, configs, strict=True), 1):
        name = point_name(point, spec)
        run_dir = out / "runs" / name
        finished = (run_dir / "summary.json").exists()
        start = time.perf_counter()
        summary = train(config, run_dir, wandb_mode=wandb_mode, wandb_group=group)
        seconds = time.perf_counter() - start
        summaries.append(summary)
        progress(
            f"[{i}/{len(points)}] {name}: "
            + ("already done" if finished else f"{seconds:.0f}s")
            + "; "
            + describe(summary)
        )
    return summaries


def describe(summary: dict) -> str:
    """'loss 0.01230 ± 0.0040 (n=4, 1 diverged)' for a summary's final loss."""
    values = [v for v in summary["final"]["loss"] if v is not None]
    if not values:
        return "all seeds diverged"
    diverged = len(summary["diverged"])
    return f"loss {format_mean_std(values)} (n={len(values)}" + (
        f", {diverged} diverged)" if diverged else ")"
    )


def export_wandb(path: str | Path, target: str | Path) -> dict:
    """Write the configuration ``wandb sweep`` takes: our keys dropped, seeds a fixed value,
    and a ``command`` that runs ``gru-research train`` with the agent's ``--name=value`` args.
    """
    sweep = load_sweep(path)
    exported = {k: v for k, v in sweep.items() if k not in LOCAL_KEYS}
    exported["name"] = sweep.get("name", Path(path).stem)
    exported["parameters"] = {**sweep["parameters"], "seeds": {"value": sweep.get("seeds", 1)}}
    exported["command"] = ["${env}", "gru-research", "train", "${args}"]
    write_atomic(Path(target), yaml.safe_dump(exported, sort_keys=False))
    return exported
