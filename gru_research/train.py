"""Training: one pure train step, vmapped over seeds, jitted once; evaluation, checkpoints, resume.

The per-seed train step is a pure function of (params, optimiser state, key) built from a
frozen :class:`~gru_research.config.TrainConfig`; ``jax.vmap`` over the leading seed axis
turns it into a population and ``jax.jit`` compiles it once (several steps per call, by
``lax.scan``). Seed ``s`` uses ``jax.random.key(s)``, split into its initialisation, training,
validation and test streams, so seed 2 of a 4-seed run is exactly the run ``--seed 2 --seeds 1``.

A seed whose loss or parameters become NaN or infinite is marked diverged and frozen (its
later updates are skipped) while the others go on; the summary lists it and reports its
final metrics as null rather than averaging them in.

:func:`train` reads in four phases: *prepare* (every check, the task, the model and the
compiled program with its memory, before any folder exists), the *initial state* (fresh or
restored from the last checkpoint), the *loop* and the *summary*. :func:`load_run` is the one
way into a trained run folder.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import math
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, reduce
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gru_research.cells import bound_diagonal
from gru_research.config import (
    TrainConfig,
    check_values,
    from_saved,
    read_run_file,
    value_name,
)
from gru_research.model import (
    ModelConfig,
    apply_model,
    count_params,
    init_model,
    initial_carries,
    seed_keys,
    seed_sharding,
)
from gru_research.tasks import IGNORED_TARGET, Task, make_task
from gru_research.tracking import (
    WANDB_MODES,
    MetricsFile,
    WandbRuns,
    git_commit,
    package_version,
    read_json,
    remove_offline_runs,
    write_json,
)

__all__ = ["RunError", "TrainConfig", "build_program", "evaluate", "load_run", "train"]


Hyper = Mapping[str, Any]
"""Traced values of vmapped fields (:data:`~gru_research.config.VMAPPABLE`), by field name:
they replace the config's own values of those fields."""
NO_HYPER: Hyper = MappingProxyType({})


def learning_rate(config: TrainConfig, hyper: Hyper = NO_HYPER) -> optax.Schedule:
    """Constant, cosine decay to zero, or the epoch decay of Zaremba et al. (2014), after an
    optional linear warm-up.

    ``epoch_decay`` (with ``epochs``, where an epoch is ``steps // epochs`` steps): the rate is
    ``lr`` for the first ``lr_decay_after`` epochs, then multiplied by ``lr_decay`` at the start
    of each later epoch: epoch e (from 0) uses ``lr * lr_decay ** max(e + 1 - K, 0)``.
    """
    lr, lr_decay = hyper.get("lr", config.lr), hyper.get("lr_decay", config.lr_decay)
    decay_steps = max(config.steps - config.warmup_steps, 1)
    if config.schedule == "epoch_decay":
        per_epoch = config.steps // config.epochs

        def main(step):
            epoch = step // per_epoch
            return lr * lr_decay ** jnp.maximum(epoch + 1 - config.lr_decay_after, 0)

    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps)
    else:
        main = optax.constant_schedule(lr)
    if not config.warmup_steps:
        return main
    warmup = optax.linear_schedule(0.0, lr, config.warmup_steps)
    return optax.join_schedules([warmup, main], [config.warmup_steps])


def resolve_epochs(config: TrainConfig, task: Task) -> TrainConfig:
    """With ``epochs``: the step count, and evaluation and checkpoints once per epoch.

    An epoch is one pass of the B training streams (:func:`~gru_research.tasks.lm.stream_window`);
    ``log_every`` becomes the largest divisor of the epoch's windows not above it, so logging
    lands on epoch ends.
    """
    if config.epochs is None:
        return config
    per_epoch = task.windows_per_epoch(config.batch_size)
    log_every = max(d for d in range(1, min(config.log_every, per_epoch) + 1) if per_epoch % d == 0)
    if config.warmup_steps >= config.epochs * per_epoch:
        raise ValueError(
            f"warmup_steps must be below the {config.epochs * per_epoch} steps of "
            f"{config.epochs} epoch{'s' * (config.epochs > 1)}, got {config.warmup_steps}"
        )
    return dataclasses.replace(
        config,
        steps=config.epochs * per_epoch,
        eval_every=per_epoch,
        checkpoint_every=per_epoch,
        log_every=log_every,
    )


def uniform_init(key: jax.Array, params, scale: float):
    """Every parameter drawn from U[−scale, scale], biases and embedding included (Zaremba et
    al., 2014: the forget-gate bias starts near 0, not at 1)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            jax.random.uniform(k, v.shape, v.dtype, -scale, scale)
            for k, v in zip(keys, leaves, strict=True)
        ],
    )


def _floored_rsqrt(r: jax.Array) -> jax.Array:
    return jax.lax.rsqrt(jnp.maximum(r, jnp.finfo(r.dtype).tiny))


def scale_by_rms_floored(decay, initial_scale: float) -> optax.GradientTransformation:
    """optax's ``scale_by_rms`` with no epsilon, the accumulator floored where it is used.

    r ← decay · r + (1 − decay) · g², update g / √max(r, tiny), with tiny the smallest normal
    number of r's dtype (1.2e-38 in float32). Without an epsilon, an accumulator that decays
    below tiny (a parameter whose gradient stays under about 1e-19 for some 760 steps, from
    1e-3) is flushed to zero on CPUs and the update is 0/0. Wherever r ≥ tiny the update is
    that of ``optax.scale_by_rms(decay, eps=0.0, initial_scale)``, bit for bit, and the state
    is the same.
    """
    inner = optax.scale_by_rms(decay=decay, eps=0.0, initial_scale=initial_scale)

    def update(updates, state, params=None):
        del params
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, decay, 2)
        scaled = jax.tree.map(lambda r, g: _floored_rsqrt(r) * g, nu, updates)
        return scaled, optax.ScaleByRmsState(nu=nu)

    return optax.GradientTransformation(inner.init, update)


def rmsprop(lr, decay) -> optax.GradientTransformation:
    """RMSProp as in Arjovsky et al. (2016): the accumulator initialised to 1e-3,
    r ← decay · r + (1 − decay) · g², step lr · g / √r with no epsilon (floored where r would
    leave float32's normal range: :func:`scale_by_rms_floored`). Its state has the layout of
    ``optax.rmsprop``'s."""
    return optax.chain(
        scale_by_rms_floored(decay, initial_scale=1e-3),
        optax.scale_by_learning_rate(lr),
        optax.identity(),
    )


def make_optimizer(config: TrainConfig, hyper: Hyper = NO_HYPER) -> optax.GradientTransformation:
    """optax: element-wise then global-norm clipping, then the optimiser.

    ``rmsprop`` is the Arjovsky et al. (2016) protocol (:func:`rmsprop`; pair it with
    ``clip_value=1``). The optimiser's state does not depend on ``hyper``: every vmapped value
    starts alike.
    """
    value = lambda name: hyper.get(name, getattr(config, name))  # noqa: E731
    lr = learning_rate(config, hyper)
    optimizers = {
        "adam": lambda: optax.adam(lr),
        "adamw": lambda: optax.adamw(lr, weight_decay=value("weight_decay")),
        "rmsprop": lambda: rmsprop(lr, value("rms_decay")),
        "sgd": lambda: optax.sgd(lr),
    }
    clipping = []
    if config.clip_value:
        clipping.append(optax.clip(value("clip_value")))
    if config.clip_norm:
        clipping.append(optax.clip_by_global_norm(value("clip_norm")))
    return optax.chain(*clipping, optimizers[config.optimizer]())


# ---------------------------------------------------------------------------------------------
# the pure, per-seed program


def chunk_length(config: TrainConfig) -> int:
    """Steps per compiled call: every log, evaluation and checkpoint falls on a chunk's end.

    Independent of ``steps``: a run whose length is not a multiple ends with one shorter
    chunk, a second program.
    """
    return math.gcd(config.log_every, config.eval_every, config.checkpoint_every)


@dataclass(frozen=True)
class Program:
    """The jitted, seed-vmapped functions of one run (of a group: every value's seeds)."""

    init: Any  # seed keys -> state (seeds one after another, see model.init_population)
    train_steps: Any  # length -> jitted (state, data, first step) -> (state, per-step metrics)
    evaluate: Any  # (params, inputs, targets) -> metrics, per seed, shared batch
    evaluate_sampled: Any  # (params, keys, data) -> metrics, per seed, own batches
    evaluate_stream: Any  # (params, windows) -> weighted metric sums and weight, per seed
    chunk: int

    @property
    def train_chunk(self):
        """The program of one full chunk."""
        return self.train_steps(self.chunk)


FIRST_STEP = jax.ShapeDtypeStruct((), jnp.int32)
"""The abstract first-step argument of a compiled chunk."""


def _finite(tree) -> jax.Array:
    return reduce(jnp.logical_and, [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(tree)])


DROPOUT_FIELDS = ("dropout", "recurrent_dropout")
INIT_FIELDS = ("gate_bias", "chrono_t_max")  # read by the layers' initialisers


def member_hypers(values: Sequence[Mapping[str, float]], seeds: int) -> dict[str, jax.Array]:
    """Each vmapped field's value for every member of a group, value-major: members
    v·S .. v·S + S − 1 are value v's S seeds."""
    names = list(values[0]) if values else []
    dtype = jnp.result_type(float)
    return {n: jnp.repeat(jnp.asarray([v[n] for v in values], dtype), seeds) for n in names}


def build_program(
    config: TrainConfig, task: Task, model: ModelConfig, values: Sequence[Mapping] = ()
) -> Program:
    """The program of a run; with ``values`` (one mapping of vmapped fields to numbers per
    value), of a group that trains every value's seeds at once, the values read from the
    state (``state["hyper"]``), so one compilation serves them all."""
    vmapped = tuple(values[0]) if values else ()
    optimizer = make_optimizer(config)  # its state's structure: the same for every value
    uses_dropout = (
        config.dropout > 0
        or config.recurrent_dropout > 0
        or any(f in vmapped for f in DROPOUT_FIELDS)
    )

    eval_metrics = task.eval_metrics or task.metrics
    eval_sample = task.eval_sample or task.sample

    def seq_lengths(targets):
        return None if task.seq_lengths is None else task.seq_lengths(targets)

    def metrics_of(params, inputs, targets):
        outputs, _ = apply_model(params, model, inputs, seq_lengths=seq_lengths(targets))
        return eval_metrics(outputs, targets)

    def loss_fn(params, hyper, inputs, targets, carries, dropout_key):
        rates = {k: v for k, v in hyper.items() if k in DROPOUT_FIELDS}
        outputs, carries = apply_model(
            params, model, inputs, carries, seq_lengths=seq_lengths(targets),
            dropout_key=dropout_key, dropout_rates=rates,
        )  # fmt: skip
        metrics = task.metrics(outputs, targets)
        # Summed over the T steps and averaged over the batch: the convention the published
        # learning rate of 1 of Zaremba et al. (2014) assumes (their TensorFlow code).
        scale = inputs.shape[1] if config.loss_sum_over_time else 1
        return metrics["loss"] * scale, (metrics, carries)

    def batch(state, data, batch_key):
        """This step's batch, and the carries it starts from (stateful lm: the last window's)."""
        if not config.stateful:
            return (*task.sample(data, batch_key, config.batch_size), None)
        inputs, targets, epoch_start = task.stream_window(data, state["step"], config.batch_size)
        fresh = initial_carries(state["params"], model, config.batch_size)
        return (
            inputs,
            targets,
            jax.tree.map(lambda f, c: jnp.where(epoch_start, f, c), fresh, state["carries"]),
        )

    def init(seed_key, hyper):
        init_key, train_key, valid_key, test_key = jax.random.split(seed_key, 4)
        params = init_model(init_key, model, {k: v for k, v in hyper.items() if k in INIT_FIELDS})
        init_scale = hyper.get("init_scale", config.init_scale)
        if init_scale is not None:
            params = uniform_init(jax.random.fold_in(init_key, 1), params, init_scale)
        carries = initial_carries(params, model, config.batch_size) if config.stateful else None
        return ({"hyper": hyper} if vmapped else {}) | {
            "carries": carries,
            "params": params,
            "opt_state": optimizer.init(params),
            "key": jax.random.key_data(train_key),
            "eval_keys": jax.random.key_data(jnp.stack([valid_key, test_key])),
            "diverged": jnp.array(False),
            "diverged_at": jnp.array(-1),
            "step": jnp.array(0),
        }

    def loss_and_grads(state, hyper, data, batch_key, dropout_key, step):
        """The step's (loss, (metrics, carries)) and gradients; a task with length buckets
        trains on the step's bucket, one compiled branch per bucket."""
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if task.length_buckets is None:
            inputs, targets, carries = batch(state, data, batch_key)
            return grad_fn(state["params"], hyper, inputs, targets, carries, dropout_key)

        def in_bucket(sample):
            def branch(params):
                inputs, targets = sample(data, batch_key, config.batch_size)
                return grad_fn(params, hyper, inputs, targets, None, dropout_key)

            return branch

        branches = [in_bucket(sample) for sample in task.length_buckets.samplers]
        return jax.lax.switch(task.length_buckets.bucket_of(step), branches, state["params"])

    def train_step(state, data, global_step):
        key, batch_key = jax.random.split(jax.random.wrap_key_data(state["key"]))
        hyper = state.get("hyper", {})
        dropout_key = jax.random.fold_in(batch_key, 1) if uses_dropout else None
        (loss, (metrics, carries)), grads = loss_and_grads(
            state, hyper, data, batch_key, dropout_key, global_step
        )
        step_optimizer = make_optimizer(config, hyper) if vmapped else optimizer
        updates, opt_state = step_optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        params = bound_diagonal(params, model.design.diagonal_bound)
        step = state["step"] + 1
        bad = ~(jnp.isfinite(loss) & _finite(params))
        diverged = state["diverged"] | bad
        keep_old = diverged
        new = ({"hyper": hyper} if vmapped else {}) | {
            "carries": jax.lax.stop_gradient(carries) if config.stateful else None,
            "params": jax.tree.map(lambda o, n: jnp.where(keep_old, o, n), state["params"], params),
            "opt_state": jax.tree.map(
                lambda o, n: jnp.where(keep_old, o, n), state["opt_state"], opt_state
            ),
            "key": jax.random.key_data(key),
            "eval_keys": state["eval_keys"],
            "diverged": diverged,
            "diverged_at": jnp.where(bad & ~state["diverged"], step, state["diverged_at"]),
            "step": step,
        }
        return new, metrics

    @cache
    def train_steps(length: int):
        def steps(state, data, first_step):
            """``length`` steps from ``first_step``, the run's step count: shared by every
            member (not vmapped), so what depends on it alone is the same for all seeds."""
            global_steps = first_step + jnp.arange(length)
            return jax.lax.scan(lambda s, t: train_step(s, data, t), state, global_steps)

        return jax.jit(jax.vmap(steps, in_axes=(0, None, None)))

    def evaluate_sampled(params, eval_key, data):
        def one(i):
            inputs, targets = eval_sample(
                data, jax.random.fold_in(jax.random.wrap_key_data(eval_key), i), config.batch_size
            )
            return metrics_of(params, inputs, targets)

        per_batch = jax.lax.map(one, jnp.arange(config.eval_batches))
        return jax.tree.map(lambda v: jnp.mean(v, axis=0), per_batch)

    def evaluate_stream(params, inputs, targets):
        """One stream of windows (W, T) in order, the carry crossing windows; sums weighted
        by each window's real targets."""

        def window(carries, batch):
            window_inputs, window_targets = batch
            outputs, carries = apply_model(params, model, window_inputs[None], carries)
            weight = jnp.sum(window_targets != IGNORED_TARGET)
            metrics = task.metrics(outputs, window_targets[None])
            return carries, (jax.tree.map(lambda v: v * weight, metrics), weight)

        _, (sums, weights) = jax.lax.scan(
            window, initial_carries(params, model, 1), (inputs, targets)
        )
        return jax.tree.map(jnp.sum, sums), jnp.sum(weights)

    def init_members(seed_keys):
        """Every member's state: seed s of each value starts from key(s)."""
        keys = jnp.tile(seed_keys, max(len(values), 1))
        return jax.lax.map(lambda a: init(*a), (keys, member_hypers(values, len(seed_keys))))

    return Program(
        init=jax.jit(init_members),  # lax.map, not vmap: see init_population
        train_steps=train_steps,
        evaluate=jax.jit(jax.vmap(metrics_of, in_axes=(0, None, None))),
        evaluate_sampled=jax.jit(jax.vmap(evaluate_sampled, in_axes=(0, 0, None))),
        evaluate_stream=jax.jit(jax.vmap(evaluate_stream, in_axes=(0, None, None))),
        chunk=chunk_length(config),
    )


def evaluate(
    program: Program, task: Task, state: dict, split: str, batch_size: int, stream: bool = False
) -> dict:
    """Metrics per seed ({name: array (S,)}) on the validation or test split.

    ``stream`` (stateful lm): the whole split as one stream, the state carried across it.
    """
    if stream:
        inputs, targets = task.eval_stream(split)
        sums, weight = program.evaluate_stream(
            state["params"], jnp.asarray(inputs), jnp.asarray(targets)
        )
        means = {k: np.asarray(v, np.float64) / np.asarray(weight) for k, v in sums.items()}
    else:
        batches = task.eval_data(split, batch_size)
        if batches:
            means = _weighted_means(program, state, batches)
        else:  # a synthetic task: fresh batches from the split's own key
            which = {"validation": 0, "test": 1}[split]
            keys = state["eval_keys"][:, which]
            out = program.evaluate_sampled(state["params"], keys, task.data)
            means = {k: np.asarray(v) for k, v in out.items()}
    return task.derived_metrics(means) if task.derived_metrics else means


def _weighted_means(program: Program, state: dict, batches: list) -> dict:
    """The weighted mean per seed of each metric over fixed ``(inputs, targets, weight)``
    batches."""
    totals, weight = {}, 0.0
    for inputs, targets, w in batches:
        out = program.evaluate(
            state["params"], jnp.asarray(inputs), jax.tree.map(jnp.asarray, targets)
        )
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64) * w
        weight += w
    return {k: v / weight for k, v in totals.items()}


# ---------------------------------------------------------------------------------------------
# checkpoints


class RunError(ValueError):
    """A problem with a run folder (mismatched config, corrupt checkpoint)."""


def checkpoint_manager(run_dir: Path):
    """The orbax manager of ``RUN/checkpoints`` (the last two kept)."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (Path(run_dir) / "checkpoints").resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )


def abstract_state(program: Program, seeds: list[int]) -> Any:
    """The shapes, dtypes and device placement of a run's state (nothing is computed)."""
    shapes = jax.eval_shape(program.init, seed_keys(seeds))
    members = len(shapes["step"])  # the seeds of every value of a group
    sharding = seed_sharding(members) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_checkpoint(manager, step: int, abstract: Any) -> dict:
    """The state saved at ``step``; one clear line if it is corrupt or of another run."""
    import orbax.checkpoint as ocp

    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax raises many kinds; all mean the same to the user
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(
            f"corrupt or mismatched checkpoint at step {step} in {manager.directory}: {first_line}"
        ) from None


CHECKSUMS = "checksums.json"
"""``RUN/checksums.json``: the sha256 of every file of each checkpoint, written once orbax has
finished saving it and checked before the checkpoint is trusted."""

ELAPSED = "elapsed.json"
"""``RUN/elapsed.json``: the seconds of training (every attempt's) up to each checkpoint, so a
resumed run's wall time counts the attempts before it."""


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the checkpoints in ``RUN/checkpoints``, newest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((int(p.name) for p in folder.iterdir() if p.name.isdigit()), reverse=True)


def checkpoint_digests(step_dir: Path) -> dict[str, str]:
    """The sha256 of every file under one checkpoint's folder, by relative path."""
    return {
        str(path.relative_to(step_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(step_dir.rglob("*"))
        if path.is_file()
    }


def _read_record(run_dir: Path, name: str) -> dict[str, Any]:
    """``RUN/name``, a record keyed by checkpoint step; {} where none was written yet."""
    path = run_dir / name
    return read_json(path) if path.exists() else {}


def _kept(run_dir: Path, recorded: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``recorded`` (keyed by step) whose checkpoint orbax has not deleted."""
    existing = {str(s) for s in checkpoint_steps(run_dir)}
    return {k: v for k, v in recorded.items() if k in existing}


def record_checksums(run_dir: Path, step: int) -> None:
    """Add the checkpoint just saved at ``step``; forget those orbax has since deleted."""
    recorded = _kept(run_dir, _read_record(run_dir, CHECKSUMS))
    recorded[str(step)] = checkpoint_digests(run_dir / "checkpoints" / str(step))
    write_json(run_dir / CHECKSUMS, recorded)


def record_elapsed(run_dir: Path, step: int, seconds: float) -> None:
    """Add the seconds of training (every attempt's) that reached the checkpoint at ``step``;
    forget those orbax has since deleted."""
    recorded = _kept(run_dir, _read_record(run_dir, ELAPSED))
    write_json(run_dir / ELAPSED, recorded | {str(step): round(seconds, 2)})


def elapsed_until(run_dir: Path, step: int) -> float:
    """The seconds of training recorded at the checkpoint of ``step`` (0 for a fresh run or a
    checkpoint saved before these were recorded)."""
    return float(_read_record(run_dir, ELAPSED).get(str(step), 0.0)) if step else 0.0


def checkpoint_fault(run_dir: Path, step: int) -> str | None:
    """Why the checkpoint at ``step`` cannot be trusted, or None when every file matches."""
    expected = _read_record(run_dir, CHECKSUMS).get(str(step))
    if expected is None:
        return "no checksum recorded"
    actual = checkpoint_digests(run_dir / "checkpoints" / str(step))
    for name, digest in expected.items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name] != digest:
            return f"{name} differs from its checksum"
    extra = sorted(set(actual) - set(expected))
    return f"{extra[0]} was not part of it" if extra else None


def restore_verified(run_dir: Path, abstract: Any, reject: bool = True) -> tuple[dict | None, int]:
    """(state, step) of the newest checkpoint that verifies, or (None, 0) with none saved.

    A checkpoint that fails is, with ``reject``, moved to ``checkpoints/rejected-<step>`` and
    the previous one is tried (two are kept); one line names what was rejected and where the
    run resumed. None verifying is one error line.
    """
    steps, rejected = checkpoint_steps(run_dir), []
    for step in steps:
        fault = checkpoint_fault(run_dir, step)
        if fault is None:
            manager = checkpoint_manager(run_dir)
            try:
                state = restore_checkpoint(manager, step, abstract)
            except RunError as err:
                fault = str(err)
            finally:
                manager.close()
        if fault is None:
            if rejected:
                print(f"{'; '.join(rejected)}; resumed from step {step}", file=sys.stderr)
            return state, step
        if reject:
            folder = run_dir / "checkpoints"
            shutil.rmtree(folder / f"rejected-{step}", ignore_errors=True)
            os.replace(folder / str(step), folder / f"rejected-{step}")
            fault += f", moved to checkpoints/rejected-{step}"
        rejected.append(f"checkpoint at step {step} of {run_dir} failed verification ({fault})")
    if steps:
        raise RunError(
            f"corrupt or mismatched checkpoint: none of {run_dir} verifies "
            f"({'; '.join(rejected)}); start again in another --out"
        )
    return None, 0


class LoadedRun(NamedTuple):
    """A trained run folder: its config, task, model and the parameters of every seed."""

    config: TrainConfig
    task: Task
    model: ModelConfig
    params: Any  # the model's parameters with a leading seed axis


def load_run(run_dir: str | Path) -> LoadedRun:
    """The last checkpoint of a run folder, with everything needed to apply its models (a
    value of a group: its seeds of the group's checkpoint)."""
    run_dir = Path(run_dir)
    saved = read_run_file(run_dir)
    own_config = config = from_saved(saved["run"])
    group_dir, values, members = run_dir, (), slice(None)
    if within := saved.get("vmapped_in"):
        group_dir = (run_dir / within).resolve()
        group = read_run_file(group_dir)
        values = group["values"]
        index = [value_name(v) for v in values].index(run_dir.name)
        members = slice(index * config.seeds, (index + 1) * config.seeds)
        config = from_saved(group["run"])
    task = make_task(config.task_config())
    config = resolve_epochs(config, task)
    model = config.model_config(task)
    program = build_program(config, task, model, values)
    abstract = abstract_state(program, config.seed_list)
    state, _ = restore_verified(group_dir, abstract, reject=False)
    if state is None:
        raise FileNotFoundError(
            f"no checkpoint in {group_dir / 'checkpoints'} (committed run folders keep metrics, "
            "not checkpoints, unless they were added on purpose): remove the run folder and "
            "train it again to read its parameters"
        )
    own_config = resolve_epochs(own_config, task) if values else config
    return LoadedRun(own_config, task, model, _of_members(state["params"], members))


# ---------------------------------------------------------------------------------------------
# training a run folder


class RunLocked(RunError):
    """The run folder is in use by another process."""


LOCK = ".lock"


def _lock_holder(handle) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process"


def check_unlocked(run_dir: Path) -> None:
    """Refuse at once, before any work, a folder another process is training in."""
    path = run_dir / LOCK
    if not path.exists():
        return
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(_in_use(run_dir, _lock_holder(handle))) from None


def _in_use(run_dir: Path, holder: str) -> str:
    return f"{run_dir} is in use by {holder}; wait for it to finish or use another --out"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN/.lock`` for the run's life (``fcntl.flock``: the kernel releases it when
    the process dies, so a killed run never leaves a stale lock)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(_in_use(run_dir, _lock_holder(handle))) from None
        handle.seek(0)
        handle.truncate()
        started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Outlet:
    """Where one value of a run writes its config, metrics, W&B runs and summary, and which
    members of the state are its seeds. A run without vmapped values has one outlet, the run
    folder itself; a group has one per value, ``RUN/values/<field=value,...>``, while its
    checkpoints and lock stay in ``RUN``."""

    run_dir: Path
    config: TrainConfig
    members: slice


def outlets(config: TrainConfig, run_dir: Path, values: Sequence[Mapping]) -> list[Outlet]:
    seeds = config.seeds
    if not values:
        return [Outlet(run_dir, config, slice(0, seeds))]
    return [
        Outlet(
            run_dir / "values" / value_name(v),
            dataclasses.replace(config, **v),
            slice(i * seeds, (i + 1) * seeds),
        )
        for i, v in enumerate(values)
    ]


@dataclass(frozen=True)
class Prepared:
    """A run that passed every check, with its compiled program; no folder written yet."""

    config: TrainConfig
    task: Task
    model: ModelConfig
    program: Program
    train_chunk: Any  # the compiled program of one full chunk
    abstract: Any  # the state's shapes and placement
    resumed: bool
    replace: bool  # the folder holds another config and no checkpoint: start it afresh
    values: tuple[dict[str, float], ...] = ()  # a group's vmapped values
    outlets: tuple[Outlet, ...] = ()


def available_memory() -> int | None:
    """Bytes the program may use: the accelerator's free memory, or the host's available."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_memory(compiled, margin: float = 0.8) -> None:
    """Refuse a program whose compiled memory exceeds ``margin`` of what is available: an
    out-of-memory kill runs no handler, so this is checked before anything is written."""
    analysis = compiled.memory_analysis()
    available = available_memory()
    if analysis is None or available is None:
        return
    needed = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )
    if needed > margin * available:
        raise ValueError(
            f"the training program needs {needed / 2**30:.2f} GiB (its compiled memory analysis) "
            f"but {available / 2**30:.2f} GiB is available; use fewer seeds, a smaller batch, "
            "a shorter --seq-len or --remat"
        )


def _saved_config_differs(
    run_dir: Path, config: TrainConfig, values: Sequence[Mapping] = ()
) -> list[str]:
    """The identity fields in which the run folder's saved config differs from ``config``
    (``values`` too, for a group's folder)."""
    saved = read_json(run_dir / "config.json")
    defaults = TrainConfig().identity()  # a field added since the run: its default
    differs = sorted(
        k for k, v in config.identity().items() if saved["run"].get(k, defaults[k]) != v
    )
    return differs + (["values"] if saved.get("values", []) != list(values) else [])


def prepare(
    config: TrainConfig, run_dir: Path, wandb_mode: str, values: Sequence[Mapping] = ()
) -> Prepared:
    """Every check, the task, the model and the compiled program, before any folder exists
    (``values`` already checked by :func:`train_group`)."""
    if wandb_mode not in WANDB_MODES:
        raise ValueError(f"unknown W&B mode {wandb_mode!r}; valid modes: {', '.join(WANDB_MODES)}")
    task = make_task(config.task_config())
    config = resolve_epochs(config, task)  # with epochs, the step count depends on the corpus
    resumed, replace = (run_dir / "config.json").exists(), False
    if resumed and (differs := _saved_config_differs(run_dir, config, values)):
        if checkpoint_steps(run_dir):
            raise RunError(
                f"{run_dir} holds a run with a different config (differs in: "
                f"{', '.join(differs)}); use another --out"
            )
        print(
            f"replacing {run_dir}: it held a run with a different config ({', '.join(differs)})"
            " and no checkpoint yet",
            file=sys.stderr,
        )
        resumed, replace = False, True
    model = config.model_config(task)
    program = build_program(config, task, model, values)
    abstract = abstract_state(program, config.seed_list)
    train_chunk = program.train_chunk.lower(abstract, task.data, FIRST_STEP).compile()
    check_memory(train_chunk)
    return Prepared(
        config, task, model, program, train_chunk, abstract, resumed, replace, values,
        tuple(outlets(config, run_dir, values)),
    )  # fmt: skip


def write_run_config(run: Prepared, outlet: Outlet, state: dict) -> None:
    """``config.json``: the config, the model, the task, where its data came from, versions
    (a value of a group: that value's config, and where the group is)."""
    write_json(
        outlet.run_dir / "config.json",
        {
            "wandb_id": uuid.uuid4().hex[:8],
            "run": dataclasses.asdict(outlet.config),
            "model": dataclasses.asdict(run.model),
            "task": {
                "name": run.task.name,
                "baseline": run.task.baseline,
                "solved": run.task.solved_rule,
                "data_source": run.task.data_source,
            },
            "package_version": package_version(),
            "git_commit": git_commit(),
            "params_per_seed": count_params(jax.tree.map(lambda v: v[0], state["params"])),
            "seed_devices": len(state["step"].sharding.device_set),
        }
        | ({"vmapped_in": "../.."} if run.values else {}),
    )


def write_group_config(run: Prepared, run_dir: Path) -> None:
    """A group's own ``config.json``: the config its values share, and the values."""
    write_json(
        run_dir / "config.json",
        {
            "run": dataclasses.asdict(run.config),
            "values": list(run.values),
            "package_version": package_version(),
            "git_commit": git_commit(),
        },
    )


def record_attempt(config_path: Path, from_step: int) -> None:
    """Add this attempt to a ``config.json``'s ``attempts``: the commit and the date it ran
    under and the step it started from, so a run resumed across commits names every one."""
    saved = read_json(config_path)
    attempt = {
        "git_commit": git_commit(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "from_step": from_step,
    }
    write_json(config_path, saved | {"attempts": [*saved.get("attempts", []), attempt]})


def _records(step: int, seeds: list[int], split: str, metrics: dict, extra=None) -> list[dict]:
    records = []
    for s, seed in enumerate(seeds):
        record = {"step": step, "seed": seed, "split": split}
        for name, values in metrics.items():
            value = float(np.asarray(values)[s])
            record[name] = value if math.isfinite(value) else None
        if extra:
            record.update(extra(record))
        records.append(record)
    return records


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    wandb_mode: str = "offline",
    wandb_project: str = "gru-research",
    wandb_group: str | None = None,
    progress: bool | None = None,
    state_transform=None,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) the run in ``run_dir``; returns the summary.

    ``state_transform`` edits the initial state (fault injection in tests, custom inits);
    ``stop_after`` stops once that many steps are done, as a killed run would.
    """
    summaries = train_group(
        config, (), run_dir, wandb_mode=wandb_mode, wandb_project=wandb_project,
        wandb_group=wandb_group, progress=progress, state_transform=state_transform,
        stop_after=stop_after,
    )  # fmt: skip
    return summaries[0]


def train_group(
    config: TrainConfig,
    values: Sequence[Mapping[str, float]],
    run_dir: str | Path,
    *,
    wandb_mode: str = "offline",
    wandb_project: str = "gru-research",
    wandb_group: str | None = None,
    progress: bool | None = None,
    state_transform=None,
    stop_after: int | None = None,
) -> list[dict]:
    """Train (or resume) every value of a group in one program: ``values`` (each a mapping of
    the same vmappable fields to numbers) times ``config``'s seeds, vmapped together; returns
    each value's summary, in order. Value v writes ``RUN/values/<field=value,...>`` as a run
    folder of its own (its config, metrics, W&B runs and summary), equal to the run of that
    value alone; the checkpoints and the lock are the group's, in ``RUN``. With no values it
    is :func:`train`, writing ``RUN`` itself."""
    run_dir = Path(run_dir)
    values = check_values(config, values)
    if (finished := finished_summaries(config, run_dir, values)) is not None:
        return finished

    # prepare: every check, the compiled program and its memory; nothing written yet
    check_unlocked(run_dir)
    run = prepare(config, run_dir, wandb_mode, values)
    with run_lock(run_dir):
        return _train_locked(
            run, run_dir, wandb_mode, wandb_project, wandb_group, progress, state_transform,
            stop_after,
        )  # fmt: skip


def _clear_folder(run_dir: Path) -> None:
    """Everything of the run folder but its lock (the folder is being replaced)."""
    for path in run_dir.iterdir():
        if path.name != LOCK:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _members(metrics: dict, outlet: Outlet) -> dict:
    """An outlet's seeds of per-member metrics."""
    return {k: np.asarray(v)[outlet.members] for k, v in metrics.items()}


def _train_locked(
    run: Prepared,
    run_dir: Path,
    wandb_mode: str,
    wandb_project: str,
    wandb_group: str | None,
    progress: bool | None,
    state_transform,
    stop_after: int | None,
) -> list[dict]:
    config, task, seeds = run.config, run.task, run.config.seed_list
    if run.replace:
        _clear_folder(run_dir)

    # initial state: fresh, or restored from the newest checkpoint that verifies
    state, start = restore_verified(run_dir, run.abstract) if run.resumed else (None, 0)
    manager = checkpoint_manager(run_dir)
    if state is None:
        state = run.program.init(seed_keys(seeds))
        if state_transform is not None:
            state = state_transform(state)
        state = jax.device_put(state, jax.tree.map(lambda a: a.sharding, run.abstract))
    if not run.resumed:
        if run.values:
            write_group_config(run, run_dir)
        for outlet in run.outlets:
            outlet.run_dir.mkdir(parents=True, exist_ok=True)
            write_run_config(run, outlet, state)
    configs = [outlet.run_dir / "config.json" for outlet in run.outlets]
    for path in configs + [run_dir / "config.json"] if run.values else configs:
        record_attempt(path, start)
    files, trackers = [], []
    for outlet in run.outlets:
        metrics_file = MetricsFile(outlet.run_dir / "metrics.jsonl")
        metrics_file.truncate_after(start)
        wandb_id = read_json(outlet.run_dir / "config.json")["wandb_id"]
        replay = run.resumed and wandb_mode == "offline"
        if replay:  # metrics.jsonl is the source of truth: each seed's offline history rebuilt
            remove_offline_runs(outlet.run_dir, wandb_id)
        name = config.cell + (f"-{value_name(v)}" if (v := _value_of(run, outlet)) else "")
        wandb_runs = WandbRuns(
            wandb_mode,
            outlet.run_dir,
            dataclasses.asdict(outlet.config),
            seeds,
            project=wandb_project,
            group=wandb_group or f"{config.task}-T{config.seq_len}",
            run_id=wandb_id,
            name=name,
        )
        if replay:
            wandb_runs.log(metrics_file.records)
        files.append(metrics_file)
        trackers.append(wandb_runs)
    baseline_fields = {f"baseline_{k}": v for k, v in task.baseline.items()}

    def with_baseline(record):
        values = {k: v for k, v in record.items() if isinstance(v, float)}
        solved = all(v is not None for v in record.values()) and bool(task.is_solved(values))
        return {**baseline_fields, "solved": solved}

    def log(step: int, split: str, metrics: dict, extra=None) -> list[list[dict]]:
        """Each outlet's records of per-member ``metrics``, written and sent to W&B."""
        written = []
        for outlet, metrics_file, wandb_runs in zip(run.outlets, files, trackers, strict=True):
            records = _records(step, seeds, split, _members(metrics, outlet), extra)
            metrics_file.extend(records)
            wandb_runs.log(records)
            written.append(records)
        return written

    # the loop: chunks of steps, then log, evaluate and checkpoint where they fall due
    bar = _progress_bar(config.steps, start, progress)
    started, window, window_steps, step = time.perf_counter(), [], 0, start
    earlier = elapsed_until(run_dir, start)  # the attempts before this one
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    while step < end:
        length = min(run.program.chunk, config.steps - step)
        chunk = run.train_chunk if length == run.program.chunk else run.program.train_steps(length)
        state, metrics = chunk(state, task.data, jnp.int32(step))
        step += length
        window.append(jax.tree.map(lambda v: jnp.sum(v, axis=1), metrics))
        window_steps += length
        done = step == config.steps
        if step % config.log_every == 0 or done:
            means = _window_mean(window, window_steps)
            log(step, "train", means)
            bar.update(window_steps)
            window, window_steps = [], 0
            bar.set_postfix_str(" ".join(f"{float(v):.4f}" for v in means["loss"]))
        if step % config.eval_every == 0 or done:
            valid = evaluate(
                run.program, task, state, "validation", config.batch_size, config.stateful
            )
            log(step, "validation", valid, with_baseline)
        if step % config.checkpoint_every == 0 or done:
            import orbax.checkpoint as ocp

            manager.save(step, args=ocp.args.StandardSave(state))
            manager.wait_until_finished()
            record_checksums(run_dir, step)
            record_elapsed(run_dir, step, earlier + time.perf_counter() - started)
    bar.close()
    manager.close()
    if step < config.steps:  # stopped early, as a killed run: W&B closed, no summary
        for wandb_runs in trackers:
            wandb_runs.finish({})
        return [{"stopped_at": step} for _ in run.outlets]

    # the summary: the test split, the diverged seeds, W&B closed
    test = evaluate(run.program, task, state, "test", config.batch_size, config.stateful)
    seconds = earlier + time.perf_counter() - started
    summaries = []
    for outlet, test_records, wandb_runs in zip(
        run.outlets, log(step, "test", test, with_baseline), trackers, strict=True
    ):
        own = {k: _of_members(state[k], outlet.members) for k in SUMMARY_STATE}
        summary = summarise(outlet.config, task, own, test_records, seconds)
        wandb_runs.finish(
            {
                seed: {f"test/{k}": v[i] for k, v in summary["final"].items()}
                for i, seed in enumerate(seeds)
            }
        )
        write_json(outlet.run_dir / "summary.json", summary)
        summaries.append(summary)
    return summaries


SUMMARY_STATE = ("params", "diverged", "diverged_at")
"""What :func:`summarise` reads of the state, sliced to each value's seeds."""


def _of_members(tree: Any, members: slice) -> Any:
    return jax.tree.map(lambda v: v[members], tree)


def _value_of(run: Prepared, outlet: Outlet) -> dict[str, float]:
    return run.values[run.outlets.index(outlet)] if run.values else {}


EPOCH_DERIVED = ("steps", "eval_every", "checkpoint_every", "log_every")


def finished_summaries(
    config: TrainConfig, run_dir: Path, values: Sequence[Mapping]
) -> list[dict] | None:
    """Each value's summary if the run (or every value of the group) in ``run_dir`` finished
    with this config (read without building anything: with epochs, the fields the corpus sets
    are not compared)."""
    ignored = EPOCH_DERIVED if config.epochs is not None else ()
    summaries = []
    for outlet in outlets(config, run_dir, values):
        folder = outlet.run_dir
        if not (folder / "summary.json").exists() or not (folder / "config.json").exists():
            return None
        if any(k not in ignored for k in _saved_config_differs(folder, outlet.config)):
            return None
        summaries.append(read_json(folder / "summary.json"))
    if values and (
        not (run_dir / "config.json").exists() or _saved_config_differs(run_dir, config, values)
    ):
        return None
    return summaries


def summarise(
    config: TrainConfig, task: Task, state: dict, test_records: list[dict], seconds: float
) -> dict:
    """``summary.json``: the final test metrics per seed (null for a diverged seed)."""
    seeds = config.seed_list
    diverged = [seed for seed, d in zip(seeds, np.asarray(state["diverged"]), strict=True) if d]
    names = [k for k in test_records[0] if k not in ("step", "seed", "split", "solved")]
    names = [k for k in names if not k.startswith("baseline_")]
    return {
        "task": config.task,
        "cell": config.cell,
        "seeds": seeds,
        "steps": config.steps,
        "final": {
            name: [None if r["seed"] in diverged else r[name] for r in test_records]
            for name in names
        },
        "solved": [r["solved"] and r["seed"] not in diverged for r in test_records],
        "diverged": diverged,
        "diverged_at_step": {
            str(seed): int(at)
            for seed, at in zip(seeds, np.asarray(state["diverged_at"]), strict=True)
            if at >= 0
        },
        "baseline": task.baseline,
        "solved_rule": task.solved_rule,
        "params_per_seed": count_params(jax.tree.map(lambda v: v[0], state["params"])),
        "wall_time_s": round(seconds, 2),
    }


def _window_mean(window: list[dict], steps: int) -> dict:
    """The mean per seed of the training metrics summed over the chunks of a log window."""
    return jax.tree.map(lambda *sums: np.sum(np.stack(sums), axis=0) / steps, *window)


def _progress_bar(total: int, start: int, enabled: bool | None):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)
