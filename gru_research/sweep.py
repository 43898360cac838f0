"""Sweeps: W&B sweep files, run here (in this process, on every core, or as SLURM jobs through
:mod:`gru_research.executors`) or exported for ``wandb agent``.

A sweep file is a W&B sweep configuration (``method``, ``metric``, ``parameters`` with
``values`` / ``value`` / a ``distribution``) plus keys that W&B ignores and the export drops:

* ``seeds``: how many seeds each point trains at once, vmapped (seeds are never a parameter);
* ``vmap``: parameters whose ``values`` train in one program with the seeds (a grid's points
  that differ only in them form one group, ``OUT/runs/<group>``, each value a run folder of
  its own under ``values/``); the export gives them to ``wandb agent`` as plain values;
* ``runs``: how many points a ``random`` sweep draws (default 10);
* ``per_cell``: settings of one design over the grid's, ``{cell: {parameter: value}}`` (the
  papers' own sizes: ``rnn_tanh: {hidden: 80}`` beside ``size_like: lstm``); a W&B sweep has
  no conditional parameters, so a file with it is not exported;
* ``report``: how the table is made (``metrics``, ``rows``, ``reference``) and the
  ``paper`` numbers and claims set beside ours.

Parameters are :class:`~gru_research.train.TrainConfig` fields. Each point trains into
``OUT/runs/<point name>``; rerun after a crash, finished points are skipped and a half-finished one
resumes from its checkpoint (that is simply ``train`` on the same folder), whichever way the
points are run.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gru_research.config import VMAPPABLE, TrainConfig, check_values, value_grid, value_name
from gru_research.reporting import CHECKS, PAIRWISE_CHECKS, format_mean_std
from gru_research.tables import tuning_problem
from gru_research.tracking import check_output_folder, write_atomic

if TYPE_CHECKING:
    from gru_research.executors import Execution

SWEEP_METHODS = ("grid", "random")
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "log_uniform_values")
LOCAL_KEYS = ("seeds", "runs", "report", "description", "vmap", "per_cell")
CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true and false, so that a key such
    as ``on`` (in ``tune: {on: validation}``) stays a string, as it does for W&B."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(text: str) -> Any:
    """``text`` parsed as YAML with YAML 1.2's booleans (``on``, ``off``, ``yes``, ``no`` are
    strings)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader)


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file; one clear line for anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep file at {path}")
    try:
        sweep = read_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return check_sweep(sweep, path)


def check_sweep(sweep: Any, path: str | Path) -> dict:
    """The sweep itself if it is well formed; one clear line naming ``path`` otherwise."""
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict):
        raise ValueError(f"{path}: a sweep file needs a 'parameters' mapping")
    method = sweep.get("method", "grid")
    if method not in SWEEP_METHODS:
        raise ValueError(
            f"{path}: unknown method {method!r}; valid methods: {', '.join(SWEEP_METHODS)}"
        )
    unknown = sorted(set(sweep["parameters"]) - CONFIG_FIELDS)
    if unknown:
        raise ValueError(
            f"{path}: unknown parameters {unknown}; valid: {', '.join(sorted(CONFIG_FIELDS))}"
        )
    if "seeds" in sweep["parameters"] or "seed" in sweep["parameters"]:
        raise ValueError(f"{path}: seeds are not a parameter; use the top-level 'seeds' count")
    for name, spec in sweep["parameters"].items():
        if (problem := parameter_problem(spec, method)) is not None:
            raise ValueError(f"{path}: parameter {name!r}: {problem}")
    if (problem := vmap_list_problem(sweep)) is not None:
        raise ValueError(f"{path}: vmap: {problem}")
    if (problem := per_cell_problem(sweep)) is not None:
        raise ValueError(f"{path}: per_cell: {problem}")
    if (problem := report_problem(sweep)) is not None:
        raise ValueError(f"{path}: report: {problem}")
    runs = sweep.get("runs", 10)
    if method == "random" and (isinstance(runs, bool) or not isinstance(runs, int) or runs < 1):
        raise ValueError(f"{path}: 'runs' must be a positive integer, got {runs!r}")
    return sweep


def parameter_problem(spec: Any, method: str) -> str | None:
    """What is wrong with one parameter's spec in a sweep of ``method``, or None."""
    if not isinstance(spec, dict):
        return f"needs a mapping with 'value', 'values' or a 'distribution', got {spec!r}"
    if "values" in spec:
        values = spec["values"]
        if not isinstance(values, list):
            return f"'values' must be a list, got {values!r}"
        if not values:
            return "'values' is an empty list; give at least one value"
    kind = spec.get("distribution", "categorical" if "values" in spec else "constant")
    if method == "grid":
        if "values" not in spec and "value" not in spec:
            return "a grid sweep needs 'values' or 'value' (distributions need method: random)"
        return None
    if kind not in DISTRIBUTIONS:
        return f"unknown distribution {kind!r}; valid: {', '.join(DISTRIBUTIONS)}"
    if kind == "constant" and "value" not in spec:
        return "needs 'value', 'values' or a 'distribution'"
    if kind == "categorical" and "values" not in spec:
        return "the categorical distribution needs 'values'"
    if kind in ("int_uniform", "uniform", "log_uniform_values"):
        return _range_problem(spec, kind)
    return None


def vmap_list_problem(sweep: dict) -> str | None:
    """What is wrong with a sweep's ``vmap`` list, or None: each entry a vmappable parameter
    of the sweep given by ``values``, in a grid sweep."""
    names = sweep.get("vmap", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return f"must be a list of parameter names, got {names!r}"
    if names and sweep.get("method", "grid") != "grid":
        return "vmapped values need method: grid (their values are trained together)"
    for name in names:
        if name not in VMAPPABLE:
            return f"{name!r} cannot be vmapped; vmappable: {', '.join(VMAPPABLE)}"
        if "values" not in sweep["parameters"].get(name, {}):
            return f"{name!r} must be a parameter of the sweep given by 'values'"
    if len(set(names)) < len(names):
        return f"names a parameter twice: {names}"
    return None


def grid_values(spec: dict) -> list | None:
    """The values a sweep parameter takes (``values``, or ``[value]``), or None for a random
    sweep's distribution."""
    if "values" in spec:
        return list(spec["values"])
    return [spec["value"]] if "value" in spec else None


def per_cell_problem(sweep: dict) -> str | None:
    """What is wrong with a sweep's ``per_cell`` settings, or None: each key a cell of the
    sweep, each value a mapping of parameters that are neither the cell nor vmapped."""
    per_cell = sweep.get("per_cell", {})
    if not isinstance(per_cell, dict):
        return f"must be a mapping of cell to settings, got {per_cell!r}"
    cells = grid_values(sweep["parameters"].get("cell", {})) or []
    for cell, settings in per_cell.items():
        if cell not in cells:
            return f"{cell!r} is not a cell of the sweep; valid: {', '.join(map(str, cells))}"
        if not isinstance(settings, dict):
            return f"{cell}: needs a mapping of parameter to value, got {settings!r}"
        if unknown := sorted(set(settings) - CONFIG_FIELDS):
            return (
                f"{cell}: unknown parameters {unknown}; valid: {', '.join(sorted(CONFIG_FIELDS))}"
            )
        if fixed := [n for n in settings if n in ("cell", "seed", "seeds", *sweep.get("vmap", []))]:
            return f"{cell}: {fixed[0]!r} cannot be set per cell"
        if varied := [n for n in settings if "values" in sweep["parameters"].get(n, {})]:
            return f"{cell}: {varied[0]!r} is varied over the grid and cannot be set per cell"
    return None


def per_cell_keys(sweep: dict) -> tuple[str, ...]:
    """The parameters some design sets for itself (``per_cell``): part of that design's row in
    the tables, never a column."""
    return tuple(sorted({k for settings in sweep.get("per_cell", {}).values() for k in settings}))


def report_problem(sweep: dict) -> str | None:
    """What is wrong with a sweep's ``report`` (its reference is not a row of the sweep), or
    None."""
    report = sweep.get("report", {})
    if not isinstance(report, dict):
        return f"must be a mapping, got {report!r}"
    if "tune" in report and (problem := tuning_problem(report["tune"], sweep["parameters"])):
        return f"tune: {problem}"
    reference, row = report.get("reference"), str(report.get("rows", "cell")).split(",")[0]
    rows = grid_values(sweep["parameters"].get(row, {}))
    if reference is not None and rows is not None and reference not in rows:
        valid = ", ".join(map(str, rows))
        return f"reference {reference!r} is not a {row} of the sweep; valid: {valid}"
    for entry in report.get("paper", []):
        where = {k: v for k, v in entry.items() if k not in ("value", "metric", "source")}
        if problem := where_problem(where, sweep["parameters"]):
            return f"paper entry {entry.get('source', where)!r}: {problem}"
    for claim in report.get("claims", []):
        text = claim.get("text", claim)
        if not any(check in claim for check in CHECKS):
            return f"claim {text!r} has no check; valid checks: {', '.join(CHECKS)}"
        against = next((claim[k] for k in PAIRWISE_CHECKS if k in claim), {})
        for where in (
            claim.get("where", {}),
            {k: v for k, v in against.items() if k != "tolerance"},
        ):
            if problem := where_problem(where, sweep["parameters"]):
                return f"claim {text!r}: {problem}"
    return None


def where_problem(where: dict, parameters: dict) -> str | None:
    """What is wrong with a claim's or a paper number's ``where`` (a parameter the sweep does not
    have, a value it never takes), or None: a typo there would leave the claim without data."""
    for name, wanted in where.items():
        if name not in parameters:
            return f"{name!r} is not a parameter of the sweep; valid: {', '.join(parameters)}"
        grid = grid_values(parameters[name])
        if grid is None:  # a random sweep's distribution: any value may come
            continue
        missing = [v for v in (wanted if isinstance(wanted, list) else [wanted]) if v not in grid]
        if missing:
            valid = ", ".join(map(str, grid))
            return f"{name} {missing[0]!r} is not in the sweep; valid: {valid}"
    return None


def _range_problem(spec: dict, kind: str) -> str | None:
    """What is wrong with the ``min`` and ``max`` of a uniform distribution, or None."""
    bounds = [spec.get("min"), spec.get("max")]
    number = int if kind == "int_uniform" else int | float
    if any(isinstance(b, bool) or not isinstance(b, number) for b in bounds):
        kind_words = "integers" if kind == "int_uniform" else "numbers"
        return (
            f"{kind} needs 'min' and 'max' {kind_words}, got min={bounds[0]!r}, max={bounds[1]!r}"
        )
    low, high = bounds
    if not low <= high:
        return f"{kind} needs min <= max, got min={low!r}, max={high!r}"
    if kind == "log_uniform_values" and low <= 0:
        return f"log_uniform_values needs min > 0, got {low!r}"
    return None


def _sample(spec: dict, rng: random.Random) -> Any:
    """One draw from a W&B parameter distribution (checked by :func:`parameter_problem`)."""
    kind = spec.get("distribution", "categorical" if "values" in spec else "constant")
    if kind == "constant":
        return spec["value"]
    if kind == "categorical":
        return rng.choice(spec["values"])
    if kind == "int_uniform":
        return rng.randint(spec["min"], spec["max"])
    if kind == "uniform":
        return rng.uniform(spec["min"], spec["max"])
    return math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))


def expand(sweep: dict) -> list[dict]:
    """The points of a sweep: the grid's cartesian product in file order, or N random draws,
    each with its cell's ``per_cell`` settings over them."""
    params, per_cell = sweep["parameters"], sweep.get("per_cell", {})
    if sweep.get("method", "grid") == "grid":
        axes = [[(name, v) for v in grid_values(spec)] for name, spec in params.items()]
        points = [dict(point) for point in itertools.product(*axes)]
    else:
        rng = random.Random(sweep.get("random_seed", 0))
        points = [
            {name: _sample(spec, rng) for name, spec in params.items()}
            for _ in range(sweep.get("runs", 10))
        ]
    return [{**point, **per_cell.get(point.get("cell"), {})} for point in points]


def point_name(point: dict, sweep: dict) -> str:
    """A folder name from the parameters that vary across the sweep, the vmapped ones aside
    (the cell if none do)."""
    vmapped = sweep.get("vmap", [])
    varying = [n for n, s in sweep["parameters"].items() if "value" not in s and n not in vmapped]
    varying = varying or (["cell"] if "cell" in point else [n for n in point if n not in vmapped])
    return ",".join(f"{n}={point[n]}" for n in varying).replace("/", "_")


def point_config(point: dict, sweep: dict) -> TrainConfig:
    return TrainConfig(**point, seeds=sweep.get("seeds", 1))


def sweep_points(
    sweep: dict, source: str | Path, data_dir: str | None = None
) -> list[tuple[str, TrainConfig, dict[str, list]]]:
    """Every point's folder name, config and vmapped values ({parameter: values}, empty when
    nothing is vmapped), all built and checked before any point trains: one line naming
    ``source`` and the point for the first that is wrong. The grid's points that differ only
    in vmapped parameters are one point, a group."""
    vmapped = sweep.get("vmap", [])
    vmap = {n: sweep["parameters"][n]["values"] for n in vmapped}
    points = [{"data_dir": data_dir, **p} if data_dir else p for p in expand(sweep)]
    groups = {}
    for point in points:
        groups.setdefault(point_name(point, sweep), point)  # its first value stands for it
    named = []
    for i, (name, point) in enumerate(groups.items(), 1):
        try:
            config = point_config(point, sweep)
            check_values(config, value_grid(vmap))
            named.append((name, config, vmap))
        except ValueError as err:
            raise ValueError(f"{source}: point {i} of {len(groups)} ({name}): {err}") from None
    return named


def unfinished_points(path: str | Path, out: str | Path, data_dir: str | None = None) -> list[str]:
    """The names of the points of the sweep file ``path`` that have no finished run under
    ``out`` (one line if ``out`` holds no runs of a sweep)."""
    from gru_research.train import finished_summaries  # JAX: imported to read run folders

    if not (Path(out) / "runs").is_dir():
        raise ValueError(f"{out} holds no sweep's runs (no runs/ folder)")
    return [
        name
        for name, config, vmap in sweep_points(load_sweep(path), path, data_dir)
        if finished_summaries(config, Path(out) / "runs" / name, value_grid(vmap)) is None
    ]


@dataclass(frozen=True)
class SweepOutcome:
    """What a sweep invocation did: the finished points' summaries (in sweep order), how its
    points were run (for the report) and how many are not finished (in progress elsewhere,
    queued or running as jobs)."""

    summaries: list[dict]
    how: str
    pending: int


def run_sweep(
    sweep: str | Path | dict,
    out: str | Path,
    *,
    wandb_mode: str = "offline",
    progress=print,
    data_dir: str | None = None,
    jobs: int | None = 1,
    threads_per_point: int | None = None,
) -> list[dict]:
    """Train every point into ``out/runs/<point name>``; resumable; the finished points'
    summaries.

    ``sweep`` is a sweep file, or a sweep already read (a dict with a ``name``), as the
    ``sweeps`` of an experiment such as textbook_claims.yaml. ``data_dir`` is the data root
    every point reads (where the file does not set ``data_dir`` itself). ``jobs=1`` (the
    default) trains the points in this process, one after another; more (or None: auto, or a
    ``threads_per_point``) trains them in worker processes (:mod:`gru_research.executors`).
    The whole file, every point's config and ``out`` are checked before anything is written;
    if the first point fails before its run folder exists, the folders made for ``out`` are
    removed again.
    """
    from gru_research.executors import Execution

    execution = Execution(jobs=jobs, threads_per_point=threads_per_point)
    return train_sweep(
        sweep, out, wandb_mode=wandb_mode, progress=progress, data_dir=data_dir, execution=execution
    ).summaries


def train_sweep(
    sweep: str | Path | dict,
    out: str | Path,
    *,
    wandb_mode: str = "offline",
    progress=print,
    data_dir: str | None = None,
    execution: Execution | None = None,
) -> SweepOutcome:
    """:func:`run_sweep` with every way of running the points (``execution``: in this
    process, local worker processes, SLURM jobs), and what the invocation did."""
    from gru_research.executors import IN_PROCESS, Execution, plan_points

    execution = execution or Execution()
    out = Path(out)
    given = isinstance(sweep, dict)
    source = sweep.get("name", "sweep") if given else sweep
    spec = check_sweep(sweep, source) if given else load_sweep(sweep)
    group = spec.get("name", out.name if given else Path(sweep).stem)
    points = sweep_points(spec, source, data_dir)  # every point checked before any runs
    check_output_folder(out)
    plan = None
    if not execution.in_process:  # the executor checked and the data prepared, nothing written
        plan = plan_points(points, out, execution, wandb_mode=wandb_mode, wandb_group=group)

    made = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    if given:
        write_atomic(out / "sweep.yaml", yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    else:
        shutil.copyfile(sweep, out / "sweep.yaml")
    try:
        if plan is None:
            summaries, pending = _train_in_process(points, out, wandb_mode, group, progress)
        else:
            summaries, pending = plan.run(progress)
    except BaseException:
        remove_made_folders(made, out / "sweep.yaml")
        raise
    return SweepOutcome(summaries, IN_PROCESS if plan is None else plan.how, pending)


def _train_in_process(
    points: list[tuple[str, TrainConfig]], out: Path, wandb_mode: str, group: str, progress
) -> tuple[list[dict], int]:
    """Train the points one after another in this process; their summaries, and how many
    are in progress elsewhere."""
    from gru_research.train import (  # JAX: imported when a sweep runs
        RunLocked,
        finished_summaries,
        train_group,
    )

    summaries, pending = [], 0
    for i, (name, config, vmap) in enumerate(points, 1):
        run_dir = out / "runs" / name
        values = value_grid(vmap)
        start = time.perf_counter()
        group_summaries = finished_summaries(config, run_dir, values)
        done = "already done" if group_summaries is not None else None
        try:
            if group_summaries is None:
                group_summaries = train_group(
                    config, values, run_dir, wandb_mode=wandb_mode, wandb_group=group
                )
        except RunLocked as err:  # another process trains this point: in progress
            progress(f"[{i}/{len(points)}] {name}: in progress elsewhere ({err})")
            pending += 1
            continue
        summaries += group_summaries
        done = done or f"{time.perf_counter() - start:.0f}s"
        progress(f"[{i}/{len(points)}] {name}: {done}; {describe_group(values, group_summaries)}")
    return summaries, pending


def remove_made_folders(made: list[Path], sweep_copy: Path) -> None:
    """Undo a sweep that failed before any run folder: its copy of the sweep file and the
    folders it made, where they hold nothing else (never a folder that held something)."""
    try:
        if not made or set(os.listdir(made[0])) != {sweep_copy.name}:
            return
        sweep_copy.unlink()
        for folder in made:  # innermost first; each is empty once the one inside it is gone
            folder.rmdir()
    except OSError:  # something else appeared meanwhile: leave it, and the error being raised
        return


def describe(summary: dict) -> str:
    """'loss 0.01230 ± 0.0040 (n=4, 1 diverged)' for a summary's final loss."""
    values = [v for v in summary["final"]["loss"] if v is not None]
    if not values:
        return "all seeds diverged"
    diverged = len(summary["diverged"])
    return f"loss {format_mean_std(values)} (n={len(values)}" + (
        f", {diverged} diverged)" if diverged else ")"
    )


def describe_group(values: list[dict], summaries: list[dict]) -> str:
    """:func:`describe` of each value of a group ('lr=0.001: loss ...'), or of a lone run."""
    if not values:
        return describe(summaries[0])
    return "; ".join(
        f"{value_name(value)}: {describe(summary)}"
        for value, summary in zip(values, summaries, strict=True)
    )


def export_wandb(path: str | Path, target: str | Path) -> dict:
    """Write the configuration ``wandb sweep`` takes: our keys dropped, seeds a fixed value,
    and a ``command`` that runs ``gru-research train`` with the agent's ``--name=value`` args.
    """
    sweep = load_sweep(path)
    if "per_cell" in sweep:
        raise ValueError(
            f"{path}: per_cell settings have no W&B form (its sweeps have no conditional "
            "parameters); export a sweep file per cell instead"
        )
    exported = {k: v for k, v in sweep.items() if k not in LOCAL_KEYS}
    exported["name"] = sweep.get("name", Path(path).stem)
    exported["parameters"] = {**sweep["parameters"], "seeds": {"value": sweep.get("seeds", 1)}}
    exported["command"] = ["${env}", "gru-research", "train", "${args}"]
    write_atomic(Path(target), yaml.safe_dump(exported, sort_keys=False))
    return exported
