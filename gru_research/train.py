"""Training: one pure train step, vmapped over seeds, jitted once; evaluation, checkpoints, resume.

The per-seed train step is a pure function of (params, optimiser state, key) built from a
frozen :class:`TrainConfig`; ``jax.vmap`` over the leading seed axis turns it into a
population and ``jax.jit`` compiles it once (several steps per call, by ``lax.scan``). Seed
``s`` uses ``jax.random.key(s)``, split into its initialisation, training, validation and test
streams, so seed 2 of a 4-seed run is exactly the run ``--seed 2 --seeds 1``.

A seed whose loss or parameters become NaN or infinite is marked diverged and frozen (its
later updates are skipped) while the others go on; the summary lists it and reports its
final metrics as null rather than averaging them in.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gru_research.gates import GateDesign, get_design
from gru_research.model import (
    PRECISIONS,
    ModelConfig,
    apply_model,
    count_params,
    init_model,
    initial_carries,
    model_param_count,
    seed_keys,
    shard_over_seeds,
)
from gru_research.scan import ScanKind
from gru_research.tasks import IGNORED_TARGET, Task, TaskConfig, make_task
from gru_research.tracking import (
    WANDB_MODES,
    MetricsFile,
    WandbRuns,
    git_commit,
    package_version,
    read_json,
    write_json,
)

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
RECURRENT_INITS = ("orthogonal", "identity", "lecun_normal")
TASK_SEQ_LEN = {"copy": 20, "adding": 50, "selective_copy": 64, "lm": 64}  # small defaults
SCHEDULES = ("constant", "cosine", "epoch_decay")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; the run folder's ``config.json`` is this, resolved."""

    task: str = "copy"
    cell: str = "gru"
    seed: int = 0
    seeds: int = 1
    steps: int = 1000
    seq_len: int | None = None
    num_tokens: int = 16
    hidden: int = 64
    param_budget: int | None = None
    layers: int = 1
    block: Literal["plain", "residual"] = "plain"
    scan: ScanKind = "auto"
    bidirectional: str | None = None
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    gate_bias: float | None = None
    chrono_t_max: float | None = None
    recurrent_init: str | None = None
    learn_initial_state: bool = False
    stateful: bool = False
    epochs: int | None = None
    lr_decay: float = 1.0
    lr_decay_after: int = 0
    init_scale: float | None = None
    loss_sum_over_time: bool = False
    precision: str = "float32"
    remat: bool = False
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    rms_decay: float = 0.9
    schedule: str = "constant"
    warmup_steps: int = 0
    clip_norm: float | None = 1.0
    clip_value: float | None = None
    log_every: int = 50
    eval_every: int = 250
    eval_batches: int = 4
    checkpoint_every: int = 500
    corpus: str = "tiny_shakespeare"
    text_file: str | None = None
    tfds_data_dir: str | None = None
    tfds_manual_dir: str | None = None
    data_dir: str | None = None
    data_checks: bool = True

    def __post_init__(self) -> None:
        if self.seq_len is None and self.task in TASK_SEQ_LEN:
            object.__setattr__(self, "seq_len", TASK_SEQ_LEN[self.task])
        for name in ("seeds", "steps", "hidden", "layers", "batch_size", "seq_len"):
            _positive(name, getattr(self, name))
        for name in ("log_every", "eval_every", "checkpoint_every", "eval_batches"):
            _positive(name, getattr(self, name))
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; valid schedules: {', '.join(SCHEDULES)}"
            )
        if self.param_budget is not None and self.param_budget < 1:
            raise ValueError(f"param_budget must be a positive integer, got {self.param_budget}")
        if self.stateful and self.task != "lm":
            raise ValueError("stateful training (carried state across windows) needs --task lm")
        if self.recurrent_init not in (None, *RECURRENT_INITS):
            raise ValueError(
                f"unknown recurrent_init {self.recurrent_init!r}; valid: "
                f"{', '.join(RECURRENT_INITS)}"
            )
        if self.epochs is not None and (self.epochs < 1 or not self.stateful):
            raise ValueError("--epochs takes a positive count and needs --stateful (task lm)")
        if self.schedule == "epoch_decay" and self.epochs is None:
            raise ValueError("the epoch_decay schedule needs --epochs (stateful lm)")
        if self.init_scale is not None and not self.init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {self.init_scale}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    def task_config(self) -> TaskConfig:
        return TaskConfig(
            name=self.task,
            seq_len=self.seq_len,
            num_tokens=self.num_tokens,
            corpus=self.corpus,
            text_file=self.text_file,
            tfds_data_dir=self.tfds_data_dir,
            tfds_manual_dir=self.tfds_manual_dir,
            data_dir=self.data_dir,
            data_checks=self.data_checks,
            eval_batches=self.eval_batches,
        )

    def design(self) -> GateDesign:
        """The preset with this run's initialisation options applied (DESIGN.md §5)."""
        design = get_design(self.cell)
        options = {
            "chrono_t_max": self.chrono_t_max,
            "learn_initial_state": self.learn_initial_state or None,
            "recurrent_init": self.recurrent_init,
        }
        design = dataclasses.replace(design, **{k: v for k, v in options.items() if v})
        if self.gate_bias is not None and design.keep_gate is not None:
            gate, sign = design.keep_gate  # where z writes, a keeping bias B is −B on z
            source = dataclasses.replace(design.gate(gate), bias_init=sign * self.gate_bias)
            design = dataclasses.replace(
                design, gates=tuple((n, source if n == gate else s) for n, s in design.gates)
            )
        return design

    def model_config(self, task: Task) -> ModelConfig:
        """The model; with ``param_budget``, the largest hidden size within that budget."""

        def config(hidden: int) -> ModelConfig:
            return ModelConfig(
                cell=self.design(),
                input_size=task.input_size,
                vocab_size=task.vocab_size,
                hidden_size=hidden,
                output_size=task.output_size,
                num_layers=self.layers,
                block=self.block,
                scan=self.scan,
                bidirectional=self.bidirectional,
                dropout=self.dropout,
                recurrent_dropout=self.recurrent_dropout,
                precision=self.precision,
                remat=self.remat,
            )

        if self.param_budget is None:
            return config(self.hidden)
        low, high = 1, 4096  # the count grows with the hidden size: bisect
        if model_param_count(config(low)) > self.param_budget:
            raise ValueError(f"param_budget {self.param_budget} is below the smallest model")
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (
                (mid, high)
                if model_param_count(config(mid)) <= self.param_budget
                else (low, mid - 1)
            )
        return config(low)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def learning_rate(config: TrainConfig) -> optax.Schedule:
    """Constant, cosine decay to zero, or the epoch decay of Zaremba et al. (2014), after an
    optional linear warm-up.

    ``epoch_decay`` (with ``epochs``, where an epoch is ``steps // epochs`` steps): the rate is
    ``lr`` for the first ``lr_decay_after`` epochs, then multiplied by ``lr_decay`` at the start
    of each later epoch: epoch e (from 0) uses ``lr * lr_decay ** max(e + 1 - K, 0)``.
    """
    decay_steps = max(config.steps - config.warmup_steps, 1)
    if config.schedule == "epoch_decay":
        per_epoch = config.steps // config.epochs

        def main(step):
            epoch = step // per_epoch
            return config.lr * config.lr_decay ** jnp.maximum(epoch + 1 - config.lr_decay_after, 0)

    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(config.lr, decay_steps)
    else:
        main = optax.constant_schedule(config.lr)
    if not config.warmup_steps:
        return main
    warmup = optax.linear_schedule(0.0, config.lr, config.warmup_steps)
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


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """optax: element-wise then global-norm clipping, then the optimiser.

    ``rmsprop`` is the Arjovsky et al. (2016) protocol: accumulator initialised to 1e-3,
    r ← 0.9 r + 0.1 g², step lr · g / √r with no epsilon (pair it with ``clip_value=1``).
    """
    lr = learning_rate(config)
    optimizers = {
        "adam": lambda: optax.adam(lr),
        "adamw": lambda: optax.adamw(lr, weight_decay=config.weight_decay),
        "rmsprop": lambda: optax.rmsprop(lr, decay=config.rms_decay, eps=0.0, initial_scale=1e-3),
        "sgd": lambda: optax.sgd(lr),
    }
    clipping = []
    if config.clip_value:
        clipping.append(optax.clip(config.clip_value))
    if config.clip_norm:
        clipping.append(optax.clip_by_global_norm(config.clip_norm))
    return optax.chain(*clipping, optimizers[config.optimizer]())


# ---------------------------------------------------------------------------------------------
# the pure, per-seed program


@dataclass(frozen=True)
class Program:
    """The jitted, seed-vmapped functions of one run."""

    init: Any  # seed keys -> state (seeds one after another, see model.init_population)
    train_chunk: Any  # (state, data) -> (state, per-step metrics), `chunk` steps
    evaluate: Any  # (params, inputs, targets) -> metrics, per seed, shared batch
    evaluate_sampled: Any  # (params, keys, data) -> metrics, per seed, own batches
    evaluate_stream: Any  # (params, windows) -> weighted metric sums and weight, per seed
    chunk: int


def _finite(tree) -> jax.Array:
    return reduce(jnp.logical_and, [jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(tree)])


def build_program(config: TrainConfig, task: Task, model: ModelConfig) -> Program:
    optimizer = make_optimizer(config)
    uses_dropout = config.dropout > 0 or config.recurrent_dropout > 0

    def metrics_of(params, inputs, targets):
        outputs, _ = apply_model(params, model, inputs)
        return task.metrics(outputs, targets)

    def loss_fn(params, inputs, targets, carries, dropout_key):
        outputs, carries = apply_model(params, model, inputs, carries, dropout_key=dropout_key)
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

    def init(seed_key):
        init_key, train_key, valid_key, test_key = jax.random.split(seed_key, 4)
        params = init_model(init_key, model)
        if config.init_scale is not None:
            params = uniform_init(jax.random.fold_in(init_key, 1), params, config.init_scale)
        carries = initial_carries(params, model, config.batch_size) if config.stateful else None
        return {
            "carries": carries,
            "params": params,
            "opt_state": optimizer.init(params),
            "key": jax.random.key_data(train_key),
            "eval_keys": jax.random.key_data(jnp.stack([valid_key, test_key])),
            "diverged": jnp.array(False),
            "diverged_at": jnp.array(-1),
            "step": jnp.array(0),
        }

    def train_step(state, data):
        key, batch_key = jax.random.split(jax.random.wrap_key_data(state["key"]))
        inputs, targets, carries = batch(state, data, batch_key)
        dropout_key = jax.random.fold_in(batch_key, 1) if uses_dropout else None
        (loss, (metrics, carries)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], inputs, targets, carries, dropout_key
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        step = state["step"] + 1
        bad = ~(jnp.isfinite(loss) & _finite(params))
        diverged = state["diverged"] | bad
        keep_old = diverged
        new = {
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

    chunk = math.gcd(config.log_every, config.eval_every, config.checkpoint_every, config.steps)

    def train_chunk(state, data):
        return jax.lax.scan(lambda s, _: train_step(s, data), state, None, length=chunk)

    def evaluate_sampled(params, eval_key, data):
        def one(i):
            inputs, targets = task.sample(
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

    return Program(
        init=jax.jit(lambda keys: jax.lax.map(init, keys)),  # not vmap: see init_population
        train_chunk=jax.jit(jax.vmap(train_chunk, in_axes=(0, None))),
        evaluate=jax.jit(jax.vmap(metrics_of, in_axes=(0, None, None))),
        evaluate_sampled=jax.jit(jax.vmap(evaluate_sampled, in_axes=(0, 0, None))),
        evaluate_stream=jax.jit(jax.vmap(evaluate_stream, in_axes=(0, None, None))),
        chunk=chunk,
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
        if not batches:  # a synthetic task: fresh batches from the split's own key
            which = {"validation": 0, "test": 1}[split]
            keys = state["eval_keys"][:, which]
            out = program.evaluate_sampled(state["params"], keys, task.data)
            return {k: np.asarray(v) for k, v in out.items()}
        totals, weight = {}, 0.0
        for inputs, targets, w in batches:
            out = program.evaluate(state["params"], jnp.asarray(inputs), jnp.asarray(targets))
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64) * w
            weight += w
        means = {k: v / weight for k, v in totals.items()}
    if "perplexity" in means:  # exp of the mean loss, not the mean of exps
        means["perplexity"] = np.exp(means["loss"])
    return means


# ---------------------------------------------------------------------------------------------
# the run folder


class RunError(ValueError):
    """A problem with a run folder (mismatched config, corrupt checkpoint)."""


def resolved_config(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def _records(step: int, seeds: list[int], split: str, metrics: dict, extra=None) -> list[dict]:
    records = []
    for s, seed in enumerate(seeds):
        record = {"step": step, "seed": seed, "split": split}
        for name, values in metrics.items():
            value = float(np.asarray(values)[s])
            record[name] = value if math.isfinite(value) else None
        if extra:
            record.update(extra(s, record))
        records.append(record)
    return records


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig of a run folder (fields added since the run take their defaults)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"no run folder at {run_dir} (config.json missing)")
    saved = read_json(run_dir / "config.json")["run"]
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names})


def _checkpoint_manager(run_dir: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (run_dir / "checkpoints").resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
    )


def _restore(manager, step: int, like: dict) -> dict:
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax raises many kinds; all mean the same to the user
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RunError(
            f"corrupt or mismatched checkpoint at step {step} in {manager.directory}: {first_line}"
        ) from None


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
    run_dir = Path(run_dir)
    if wandb_mode not in WANDB_MODES:
        raise ValueError(f"unknown W&B mode {wandb_mode!r}; valid modes: {', '.join(WANDB_MODES)}")
    config_file = run_dir / "config.json"
    resumed = config_file.exists()
    task = None
    if config.epochs is not None:  # the step count depends on the corpus
        task = make_task(config.task_config())
        config = resolve_epochs(config, task)
    if resumed:
        saved = read_json(config_file)
        defaults = resolved_config(TrainConfig())  # a field added since the run: its default
        differs = sorted(
            k for k, v in resolved_config(config).items() if saved["run"].get(k, defaults[k]) != v
        )
        if differs:
            raise RunError(
                f"{run_dir} holds a run with a different config (differs in: "
                f"{', '.join(differs)}); use another --out"
            )
        if (run_dir / "summary.json").exists():
            return read_json(run_dir / "summary.json")
    task = task or make_task(config.task_config())
    model = config.model_config(task)
    with _removed_on_bad_input(run_dir):
        seeds = config.seed_list
        program = build_program(config, task, model)
        state = program.init(seed_keys(seeds))
        manager = _checkpoint_manager(run_dir)
        start = 0
        if resumed:
            latest = manager.latest_step()
            if latest is not None:
                state = _restore(manager, latest, state)
                start = latest
        elif state_transform is not None:
            state = state_transform(state)
        state = shard_over_seeds(state)
        if not resumed:
            write_json(
                run_dir / "config.json",
                {
                    "wandb_id": uuid.uuid4().hex[:8],
                    "run": resolved_config(config),
                    "model": dataclasses.asdict(model),
                    "task": {
                        "name": task.name,
                        "baseline": task.baseline,
                        "solved": task.solved_rule,
                    },
                    "package_version": package_version(),
                    "git_commit": git_commit(),
                    "params_per_seed": count_params(jax.tree.map(lambda v: v[0], state["params"])),
                    "seed_devices": len(state["step"].sharding.device_set),
                },
            )
        metrics_file = MetricsFile(run_dir / "metrics.jsonl")
        metrics_file.truncate_after(start)
        wandb_runs = WandbRuns(
            wandb_mode,
            run_dir,
            resolved_config(config),
            seeds,
            project=wandb_project,
            group=wandb_group or f"{config.task}-T{config.seq_len}",
            run_id=read_json(run_dir / "config.json")["wandb_id"],
            name=config.cell,
        )
        baseline_fields = {f"baseline_{k}": v for k, v in task.baseline.items()}

        def with_baseline(s, record):
            values = {k: v for k, v in record.items() if isinstance(v, float)}
            solved = all(v is not None for v in record.values()) and bool(task.is_solved(values))
            return {**baseline_fields, "solved": solved}

        def log(records):
            metrics_file.extend(records)
            wandb_runs.log(records)

        bar = _progress_bar(config.steps, start, progress)
        started, window = time.perf_counter(), []
        step = start
        while step < config.steps and (stop_after is None or step < stop_after):
            state, metrics = program.train_chunk(state, task.data)
            step += program.chunk
            window.append(jax.tree.map(lambda v: jnp.mean(v, axis=1), metrics))
            if step % config.log_every == 0 or step == config.steps:
                means = jax.tree.map(lambda *v: np.mean(np.stack(v), axis=0), *window)
                window = []
                log(_records(step, seeds, "train", means))
                bar.update(config.log_every)
                bar.set_postfix_str(" ".join(f"{float(v):.4f}" for v in means["loss"]))
            if step % config.eval_every == 0 or step == config.steps:
                valid = evaluate(
                    program, task, state, "validation", config.batch_size, config.stateful
                )
                log(_records(step, seeds, "validation", valid, with_baseline))
            if step % config.checkpoint_every == 0 or step == config.steps:
                import orbax.checkpoint as ocp

                manager.save(step, args=ocp.args.StandardSave(state))
                manager.wait_until_finished()
        bar.close()
        if step < config.steps:
            manager.close()
            return {"stopped_at": step}

        test = evaluate(program, task, state, "test", config.batch_size, config.stateful)
        test_records = _records(step, seeds, "test", test, with_baseline)
        log(test_records)
        diverged = [seed for seed, d in zip(seeds, np.asarray(state["diverged"]), strict=True) if d]
        final = {
            name: [None if r["seed"] in diverged else r[name] for r in test_records]
            for name in test
        }
        summary = {
            "task": config.task,
            "cell": config.cell,
            "seeds": seeds,
            "steps": config.steps,
            "final": final,
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
            "wall_time_s": round(time.perf_counter() - started, 2),
        }
        wandb_runs.finish(
            {seed: {f"test/{k}": v[i] for k, v in final.items()} for i, seed in enumerate(seeds)}
        )
        write_json(run_dir / "summary.json", summary)
        manager.close()
        return summary


@contextmanager
def _removed_on_bad_input(run_dir: Path):
    """A run folder this call created is removed again if the run is refused."""
    created = not run_dir.exists()
    try:
        yield
    except (RunError, ValueError, FileNotFoundError):
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _progress_bar(total: int, start: int, enabled: bool | None):
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)
