"""The timing harness: training-step throughput, measured in one process, returned as numbers.

Every implementation runs the same full training step — embedding, recurrent layers, readout,
cross-entropy, backward pass, Adam update — on the same shapes. After compiling (timed once),
the implementations are timed *interleaved*, one step each per round, and each reports the
median of its rounds: absolute times drift up to 3× on shared machines, ratios in one process
do not. Anchors: Flax ``nn.RNN`` over ``GRUCell`` / ``OptimizedLSTMCell`` / ``MGUCell``, and
PyTorch ``nn.GRU`` / ``nn.LSTM`` when torch is installed (the ``bench`` extra; on CUDA when JAX
runs on a GPU and torch sees one).

Memory: we report the compiled step's ``memory_analysis()`` (temporaries plus arguments), what
the step itself needs; JAX has no device memory statistics on the CPU.

The reports built from these numbers (targets, tables, plots) live in ``benchmarks/``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gru_research.gates import GateDesign
from gru_research.model import ModelConfig, apply_model, init_model, init_population, seed_keys
from gru_research.reporting import how_many

Array = jax.Array


@dataclass(frozen=True)
class BenchConfig:
    name: str
    batch: int
    length: int
    embed: int
    hidden_size: int
    vocab: int = 64
    layers: int = 1


CONFIGS = {
    "small": BenchConfig("small", batch=32, length=100, embed=64, hidden_size=128),
    "medium": BenchConfig("medium", batch=64, length=200, embed=128, hidden_size=256),
    "long": BenchConfig("long", batch=8, length=4096, embed=128, hidden_size=128),
}


def named_configs(names: str) -> list[BenchConfig]:
    """The configurations named in ``names`` (comma-separated), in that order; a ValueError
    names the valid ones."""
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in CONFIGS]
    if unknown or not chosen:
        given = ", ".join(unknown) if unknown else repr(names)
        raise ValueError(f"unknown benchmark configuration {given}; valid: {', '.join(CONFIGS)}")
    return [CONFIGS[name] for name in chosen]


def split_configs(names: str) -> tuple[list[BenchConfig], list[Regime]]:
    """The harness configurations and the papers' regimes named in ``names`` (comma-separated),
    each in order; a ValueError names every valid name."""
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    regimes = _regimes()
    unknown = [name for name in chosen if name not in CONFIGS and name not in regimes]
    if unknown or not chosen:
        given = ", ".join(unknown) if unknown else repr(names)
        valid = ", ".join([*CONFIGS, *regimes])
        raise ValueError(f"unknown benchmark configuration {given}; valid: {valid}")
    return [CONFIGS[n] for n in chosen if n in CONFIGS], [
        regimes[n] for n in chosen if n in regimes
    ]


@dataclass
class Step:
    """One implementation's training step: ``run()`` does one step and waits for it."""

    name: str
    run: Callable[[], None]
    compile_s: float
    memory_bytes: int | None = None


def _tokens(cfg: BenchConfig, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab, (cfg.batch, cfg.length + 1))


def _cross_entropy(logits, targets):
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def _jax_step(
    name: str,
    loss_fn,
    params,
    tokens: np.ndarray | None = None,
    *,
    batch: tuple[Array, Array] | None = None,
    optimizer: optax.GradientTransformation | None = None,
) -> Step:
    """Jit one optimiser step (Adam by default) of ``loss_fn(params, inputs, targets)`` on
    ``batch`` (or next-token prediction of ``tokens``); time its compilation."""
    optimizer = optimizer or optax.adam(1e-3)

    def step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    if batch is None:
        batch = jnp.asarray(tokens[..., :-1]), jnp.asarray(tokens[..., 1:])
    inputs, targets = batch
    opt_state = optimizer.init(params)
    start = time.perf_counter()
    compiled = (
        jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, inputs, targets).compile()
    )
    compile_s = time.perf_counter() - start
    state = {"params": params, "opt": opt_state}

    def run():
        state["params"], state["opt"], loss = compiled(
            state["params"], state["opt"], inputs, targets
        )
        loss.block_until_ready()

    return Step(name, run, compile_s, compiled_bytes(compiled))


def compiled_bytes(compiled) -> int | None:
    """A compiled program's temporaries plus arguments, from ``memory_analysis()``."""
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    return int(memory.temp_size_in_bytes + memory.argument_size_in_bytes)


def bench_model(cfg: BenchConfig, cell: str, scan: str = "auto", **options: Any) -> ModelConfig:
    """The model every implementation builds for ``cfg``: embedding, layers, readout."""
    return ModelConfig(
        cell=cell,
        vocab_size=cfg.vocab,
        embed_size=cfg.embed,
        hidden_size=cfg.hidden_size,
        output_size=cfg.vocab,
        num_layers=cfg.layers,
        scan=scan,
        **options,
    )


def ours(cfg: BenchConfig, cell: str, seeds: int = 1, scan: str = "auto", **options: Any) -> Step:
    """gru-research's model; with ``seeds`` > 1, that many models trained by one vmapped step.

    ``options`` are further :class:`ModelConfig` fields (``precision``, ``remat``).
    """
    config = bench_model(cfg, cell, scan, **options)

    def loss_one(p, inputs, targets):
        return _cross_entropy(apply_model(p, config, inputs)[0], targets)

    if seeds == 1:
        params, loss = init_model(jax.random.key(0), config), loss_one
    else:
        params = init_population(seed_keys(range(seeds)), config)

        def loss(p, inputs, targets):
            return jnp.sum(jax.vmap(loss_one, in_axes=(0, None, None))(p, inputs, targets))

    label = f"gru-research {cell}" + (f" ({scan} scan)" if scan != "auto" else "")
    label += "".join(f", {k}={v}" for k, v in options.items())
    label += f" ×{seeds} seeds vmapped" if seeds > 1 else ""
    return _jax_step(label, loss, params, _tokens(cfg))


class FlaxModel(nn.Module):
    cell: Callable
    cfg: BenchConfig

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.cfg.vocab, self.cfg.embed)(tokens)
        for _ in range(self.cfg.layers):
            x = nn.RNN(self.cell(features=self.cfg.hidden_size))(x)
        return nn.Dense(self.cfg.vocab)(x)


FLAX_CELLS = {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell, "mgu": nn.MGUCell}


def flax_anchor(cfg: BenchConfig, cell: str) -> Step:
    model = FlaxModel(FLAX_CELLS[cell], cfg)
    tokens = _tokens(cfg)
    params = model.init(jax.random.key(0), jnp.asarray(tokens[:, :-1]))

    def loss(p, inputs, targets):
        return _cross_entropy(model.apply(p, inputs), targets)

    return _jax_step(f"flax nn.RNN({FLAX_CELLS[cell].__name__})", loss, params, tokens)


def _torch_device(torch) -> str:
    """CUDA when JAX runs on a GPU and torch sees one, so both sides use the same device kind."""
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_anchor(cfg: BenchConfig, cell: str) -> Step | None:
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    device = _torch_device(torch)
    rnn_class = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    embed = torch.nn.Embedding(cfg.vocab, cfg.embed)
    rnn = rnn_class(cfg.embed, cfg.hidden_size, num_layers=cfg.layers, batch_first=True)
    readout = torch.nn.Linear(cfg.hidden_size, cfg.vocab)
    modules = torch.nn.ModuleList([embed, rnn, readout]).to(device)
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-3)
    tokens = torch.as_tensor(_tokens(cfg)).to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def run():
        optimizer.zero_grad()
        logits = readout(rnn(embed(inputs))[0])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    run()
    return Step(f"torch nn.{rnn_class.__name__}", run, time.perf_counter() - start)


def time_interleaved(steps: list[Step], rounds: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median seconds per step of each implementation, timed one step each per round."""
    for _ in range(warmup):
        for step in steps:
            step.run()
    times: dict[str, list[float]] = {s.name: [] for s in steps}
    for _ in range(rounds):
        for step in steps:
            start = time.perf_counter()
            step.run()
            times[step.name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@dataclass(frozen=True)
class Timing:
    """One implementation's median step in one interleaved group."""

    config: str
    group: str
    name: str
    seconds: float
    tokens: int
    compile_s: float
    memory_bytes: int | None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def _groups(cfg: BenchConfig) -> list[tuple[str, list[Step | None]]]:
    return [
        ("gru", [ours(cfg, "gru"), flax_anchor(cfg, "gru"), torch_anchor(cfg, "gru")]),
        ("lstm", [ours(cfg, "lstm"), flax_anchor(cfg, "lstm"), torch_anchor(cfg, "lstm")]),
        ("mgu", [ours(cfg, "mgu_flax"), flax_anchor(cfg, "mgu")]),
        (
            "min_gru",
            [
                ours(cfg, "min_gru", scan="sequential"),
                ours(cfg, "min_gru", scan="parallel"),
                ours(cfg, "min_gru"),
                ours(cfg, "gru"),
            ],
        ),
    ]


def compare(cfg: BenchConfig, rounds: int) -> list[Timing]:
    """Each design against its anchors, one interleaved timing per group."""
    timings = []
    for group, steps in _groups(cfg):
        steps = [s for s in steps if s is not None]
        medians = time_interleaved(steps, rounds)
        timings += [
            Timing(
                cfg.name,
                group,
                s.name,
                medians[s.name],
                cfg.batch * cfg.length,
                s.compile_s,
                s.memory_bytes,
            )
            for s in steps
        ]
    return timings


def relative_to_first(timings: list[Timing]) -> list[float]:
    """Each timing's step time over that of the first timing of its (config, group)."""
    first: dict[tuple[str, str], float] = {}
    return [t.seconds / first.setdefault((t.config, t.group), t.seconds) for t in timings]


def _whole_if_large(value: float) -> float | int:
    """A whole number from 1,000 up, so that a table prints 1,134 rather than 1.13e+03."""
    return round(value) if abs(value) >= 1000 else value


def timing_records(timings: list[Timing]) -> list[dict[str, str | float | int | None]]:
    """One record of numbers per timing, keyed by the columns of a timing table; ``vs first``
    is the step time over the first timing's of its group (lower is faster)."""
    return [
        {
            "config": t.config,
            "group": t.group,
            "implementation": t.name,
            "tokens/s": round(t.tokens_per_s),
            "ms/step": _whole_if_large(t.seconds * 1e3),
            "vs first": ratio,
            "compile s": t.compile_s,
            "MiB": None if t.memory_bytes is None else _whole_if_large(t.memory_bytes / 2**20),
        }
        for t, ratio in zip(timings, relative_to_first(timings), strict=True)
    ]


def seed_scaling(cfg: BenchConfig, seed_counts: list[int], rounds: int) -> dict[int, float]:
    """Speed-up of S seeds vmapped in one step over S single-seed steps run one after another,
    timed interleaved."""
    single = ours(cfg, "gru")
    populations = {s: ours(cfg, "gru", seeds=s) for s in seed_counts if s > 1}
    medians = time_interleaved([single, *populations.values()], rounds)
    speed_ups = {1: 1.0}
    for seeds, step in populations.items():
        speed_ups[seeds] = seeds * medians[single.name] / medians[step.name]
    return speed_ups


LENGTH_CURVES = {
    "gru-research gru": lambda cfg: ours(cfg, "gru"),
    "gru-research min_gru (auto scan)": lambda cfg: ours(cfg, "min_gru"),
    "gru-research min_gru (parallel scan)": lambda cfg: ours(cfg, "min_gru", scan="parallel"),
    "flax nn.RNN(GRUCell)": lambda cfg: flax_anchor(cfg, "gru"),
    "torch nn.GRU": lambda cfg: torch_anchor(cfg, "gru"),
}


def length_config(length: int, batch: int = 8) -> BenchConfig:
    """The long configuration's shapes (H = 128) at another length T."""
    return BenchConfig(f"T={length}", batch=batch, length=length, embed=128, hidden_size=128)


def length_scaling(lengths: list[int], rounds: int) -> dict[str, dict[int, float]]:
    """Seconds per step against T at B = 8, H = 128 (the long configuration's shapes)."""
    curves: dict[str, dict[int, float]] = {name: {} for name in LENGTH_CURVES}
    for length in lengths:
        cfg = length_config(length)
        steps = {name: make(cfg) for name, make in LENGTH_CURVES.items()}
        steps = {name: step for name, step in steps.items() if step is not None}
        medians = time_interleaved(list(steps.values()), rounds, warmup=1)
        for name, step in steps.items():
            curves[name][length] = medians[step.name]
    return {name: curve for name, curve in curves.items() if curve}


PHASES = ("forward", "forward + backward", "whole step")


def _phases(name: str, loss_fn, params, tokens) -> dict[str, Callable[[], None]]:
    """Forward only, forward + backward, and the whole step (with Adam) of one model."""
    inputs, targets = jnp.asarray(tokens[..., :-1]), jnp.asarray(tokens[..., 1:])
    forward = jax.jit(loss_fn)
    backward = jax.jit(jax.grad(loss_fn))
    whole = _jax_step(name, loss_fn, jax.tree.map(jnp.copy, params), tokens)  # it donates
    return {
        "forward": lambda: forward(params, inputs, targets).block_until_ready(),
        "forward + backward": lambda: jax.block_until_ready(backward(params, inputs, targets)),
        "whole step": whole.run,
    }


def profile(cfg: BenchConfig, rounds: int) -> dict[str, dict[str, float]]:
    """Where a gru step's time goes, ours against Flax's, timed interleaved: implementation →
    phase (:data:`PHASES`, each including the ones before it) → median seconds."""
    config = bench_model(cfg, "gru")
    tokens = _tokens(cfg)
    model = FlaxModel(FLAX_CELLS["gru"], cfg)
    implementations = {
        "gru-research gru": (
            lambda p, x, y: _cross_entropy(apply_model(p, config, x)[0], y),
            init_model(jax.random.key(0), config),
        ),
        "flax nn.RNN(GRUCell)": (
            lambda p, x, y: _cross_entropy(model.apply(p, x), y),
            model.init(jax.random.key(0), jnp.asarray(tokens[:, :-1])),
        ),
    }
    steps = [
        Step(f"{name}: {phase}", run, 0.0)
        for name, (loss_fn, params) in implementations.items()
        for phase, run in _phases(name, loss_fn, params, tokens).items()
    ]
    for step in steps:
        step.run()
    medians = time_interleaved(steps, rounds)
    return {name: {p: medians[f"{name}: {p}"] for p in PHASES} for name in implementations}


@dataclass(frozen=True)
class RematMemory:
    """A gru step's compiled memory at one length, remat off and on, and the remat step's time
    (it is run, not only compiled)."""

    length: int
    plain_bytes: int
    remat_bytes: int
    remat_step_s: float


def remat_memory(length: int = 10_000) -> RematMemory:
    """The memory of a gru step (B = 8, H = 128) at T = ``length``, remat off and on."""
    cfg = length_config(length)
    plain, remat = ours(cfg, "gru"), ours(cfg, "gru", remat=True)
    remat.run()
    start = time.perf_counter()
    remat.run()
    return RematMemory(
        length, plain.memory_bytes or 0, remat.memory_bytes or 0, time.perf_counter() - start
    )


@dataclass(frozen=True)
class ScanSpeed:
    """At one length T: the median step seconds and the compiled memory of gru (``lax.scan``)
    and of min_gru on the parallel and on the sequential scan."""

    length: int
    gru_s: float
    parallel_s: float
    sequential_s: float
    gru_bytes: int
    parallel_bytes: int
    sequential_bytes: int


def scan_speed(lengths: list[int], batch: int, rounds: int) -> list[ScanSpeed]:
    """One training step of min_gru on the parallel (log-space associative) scan and on the
    sequential scan against gru on ``lax.scan``, per length, at a fixed batch and H = 128."""
    points = []
    for length in lengths:
        cfg = length_config(length, batch)
        gru = ours(cfg, "gru")
        parallel = ours(cfg, "min_gru", scan="parallel")
        sequential = ours(cfg, "min_gru", scan="sequential")
        medians = time_interleaved([gru, parallel, sequential], rounds, warmup=1)
        points.append(
            ScanSpeed(
                length,
                *(medians[s.name] for s in (gru, parallel, sequential)),
                *(s.memory_bytes or 0 for s in (gru, parallel, sequential)),
            )
        )
    return points


# ---------------------------------------------------------------------------------------------
# the papers' regime: the copy and adding experiments' own models, loss and optimiser


@dataclass(frozen=True)
class Regime:
    """A paper's small-model training setting, as ``gru-research train`` runs it.

    ``base`` is the experiment's config (task, T, batch, optimiser, clipping); ``hidden``
    gives the papers' sizes by design, and every other design gets the largest hidden size
    within the parameter count of ``sized_like`` (the designs compared at equal parameters).
    """

    name: str
    base: Any  # a TrainConfig (imported lazily: the harness runs without the training stack)
    hidden: dict[str, int]
    sized_like: str | None = None

    def config(self, cell: str, seeds: int = 1):
        """The TrainConfig of ``cell`` in this regime, with ``seeds`` seeds."""
        if cell in self.hidden or self.sized_like is None:
            size = {"hidden": self.hidden.get(cell, self.base.hidden)}
        else:
            size = {"hidden": self.hidden[self.sized_like], "size_like": self.sized_like}
        return dataclasses.replace(self.base, cell=cell, seeds=seeds, **size)


def regime_task(config):
    from gru_research.tasks import make_task

    return make_task(config.task_config())


def _regimes() -> dict[str, Regime]:
    from gru_research.config import TrainConfig

    rmsprop = {"optimizer": "rmsprop", "lr": 1e-3, "clip_value": 1.0, "clip_norm": None}
    copy = TrainConfig(task="copy", seq_len=100, batch_size=20, one_hot=True, **rmsprop)
    adding = TrainConfig(task="adding", seq_len=200, batch_size=50, hidden=128, **rmsprop)
    return {
        # Arjovsky et al. (2016), Fig. 1: T + 20 = 120 steps, tanh RNN 80, LSTM 40 units
        "copy": Regime("copy", copy, {"rnn_tanh": 80, "lstm": 40}, sized_like="lstm"),
        # Arjovsky et al. (2016), Fig. 2: 128 units, batch 50, T = 200
        "adding": Regime("adding", adding, {}),
    }


REGIME_NAMES = ("copy", "adding")


@dataclass(frozen=True)
class RegimeModel:
    """One design in a regime: its train config, task, model and one fixed batch."""

    config: Any
    task: Any
    model: ModelConfig
    batch: tuple[Array, Array]

    @property
    def hidden_size(self) -> int:
        return self.model.hidden_size

    @property
    def shape(self) -> tuple[int, int]:
        """(B, T) of one seed's batch."""
        inputs = self.batch[0]
        length = inputs.shape[-1] if self.model.vocab_size else inputs.shape[-2]
        return self.config.batch_size, length


def regime_model(regime: Regime, cell: str, seeds: int = 1) -> RegimeModel:
    """The design's model in the regime, with one fixed batch; with ``seeds`` > 1, one batch
    per seed along a leading axis (as ``gru-research train`` samples one per seed)."""
    config = regime.config(cell, seeds)
    task = regime_task(config)

    def sample(key):
        return task.sample(task.data, key, config.batch_size)

    batch = sample(jax.random.key(0)) if seeds == 1 else jax.vmap(sample)(seed_keys(range(seeds)))
    return RegimeModel(config, task, config.model_config(task), batch)


def regime_ours(
    regime: Regime, cell: str, seeds: int = 1, variant: GateDesign | None = None
) -> Step:
    """gru-research's step of the experiment's model: the same loss (the task's metric) and
    optimiser (``train.make_optimizer``) as ``gru-research train``, on a fixed batch; seeds
    vmapped, each on its own batch, as the training loop runs them. A ``variant`` design runs
    in the place of ``cell``'s at the same hidden size."""
    from gru_research.train import make_optimizer

    m = regime_model(regime, cell, seeds)
    if variant is not None:
        m = dataclasses.replace(m, model=dataclasses.replace(m.model, cell=variant))
        cell = variant.name

    def loss_one(p, inputs, targets):
        return m.task.metrics(apply_model(p, m.model, inputs)[0], targets)["loss"]

    if seeds == 1:
        params, loss = init_model(jax.random.key(0), m.model), loss_one
    else:
        params = init_population(seed_keys(range(seeds)), m.model)

        def loss(p, inputs, targets):
            return jnp.sum(jax.vmap(loss_one)(p, inputs, targets))

    label = f"gru-research {cell} (H = {m.hidden_size})"
    label += f" ×{seeds} seeds vmapped" if seeds > 1 else ""
    return _jax_step(label, loss, params, batch=m.batch, optimizer=make_optimizer(m.config))


class RegimeFlaxModel(nn.Module):
    """Flax ``nn.RNN`` over a Flax cell, fed as our model is fed (one-hot tokens or features)."""

    cell: Callable
    hidden_size: int
    output_size: int
    vocab: int | None = None

    @nn.compact
    def __call__(self, inputs):
        x = jax.nn.one_hot(inputs, self.vocab) if self.vocab else inputs
        x = nn.RNN(self.cell(features=self.hidden_size))(x)
        return nn.Dense(self.output_size)(x)


def regime_flax(regime: Regime, cell: str) -> Step:
    """Flax's cell of the same design and hidden size, the same loss and optimiser."""
    from gru_research.train import make_optimizer

    flax_design = "mgu_flax" if cell == "mgu" else cell
    m = regime_model(regime, flax_design)
    vocab = m.model.vocab_size if m.model.one_hot else None
    model = RegimeFlaxModel(FLAX_CELLS[cell], m.hidden_size, m.model.output_size, vocab)
    params = model.init(jax.random.key(0), m.batch[0])

    def loss(p, inputs, targets):
        return m.task.metrics(model.apply(p, inputs), targets)["loss"]

    name = f"flax nn.RNN({FLAX_CELLS[cell].__name__}) (H = {m.hidden_size})"
    return _jax_step(name, loss, params, batch=m.batch, optimizer=make_optimizer(m.config))


def regime_torch(regime: Regime, cell: str, threads: int) -> Step | None:
    """PyTorch ``nn.GRU`` / ``nn.LSTM`` of the same size on the same batch: the task's loss
    (cross-entropy over every step, or the last step's MSE), RMSProp (α = 0.9) after
    element-wise clipping at 1; run with ``threads`` intra-op threads."""
    try:
        import torch
    except ImportError:
        return None
    m = regime_model(regime, cell)
    torch.manual_seed(0)
    inputs = torch.as_tensor(np.array(m.batch[0]))
    targets = torch.as_tensor(np.array(m.batch[1]))
    if m.model.one_hot:
        inputs = torch.nn.functional.one_hot(inputs.long(), m.model.vocab_size).float()
    rnn_class = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    rnn = rnn_class(inputs.shape[-1], m.hidden_size, batch_first=True)
    readout = torch.nn.Linear(m.hidden_size, m.model.output_size)
    parameters = [*rnn.parameters(), *readout.parameters()]
    optimizer = torch.optim.RMSprop(parameters, lr=m.config.lr, alpha=m.config.rms_decay)

    def loss_of(outputs):
        if m.config.task == "adding":
            return torch.nn.functional.mse_loss(outputs[:, -1, 0], targets)
        return torch.nn.functional.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1).long()
        )

    def run():
        torch.set_num_threads(threads)
        optimizer.zero_grad()
        loss_of(readout(rnn(inputs)[0])).backward()
        torch.nn.utils.clip_grad_value_(parameters, m.config.clip_value)
        optimizer.step()

    start = time.perf_counter()
    run()
    name = f"torch nn.{rnn_class.__name__} (H = {m.hidden_size}, {threads} thread"
    return Step(name + ("s)" if threads > 1 else ")"), run, time.perf_counter() - start)


def recurrent_flops(model: RegimeModel) -> float:
    """FLOPs of a training step's recurrent matmuls: h U forward, and its two gradient
    matmuls (with respect to h and to U) backward, at every step: 3 · T · 2 B H (G H)."""
    design = model.model.design
    blocks = design.reading("block")  # k heads: 1/k of a full kernel's FLOPs
    width = len(design.reading("full")) + sum(1 / design.recurrence(n)[1] for n in blocks)
    batch, length = model.shape
    hidden = model.hidden_size
    return 3.0 * length * 2 * batch * hidden * width * hidden


def roofline(model: RegimeModel) -> Step:
    """One matmul of a step's recurrent FLOPs, (3 T B, H) × (H, G H): what the step's
    recurrent arithmetic costs with none of the loop's overheads."""
    hidden = model.hidden_size
    width = round(recurrent_flops(model) / (2 * hidden * hidden * _rows(model)))
    a = jnp.ones((_rows(model), hidden))
    b = jnp.ones((hidden, width * hidden))
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    return Step(
        f"roofline: one ({_rows(model)}, {hidden}) × ({hidden}, {width * hidden}) matmul",
        lambda: compiled(a, b).block_until_ready(),
        0.0,
    )


def _rows(model: RegimeModel) -> int:
    batch, length = model.shape
    return 3 * length * batch


@dataclass(frozen=True)
class RegimeTiming:
    """One implementation's median step in one group of a regime, with its recurrent FLOPs."""

    regime: str
    group: str
    name: str
    seconds: float
    compile_s: float
    memory_bytes: int | None
    flops: float

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9


def regime_records(timings: list[RegimeTiming]) -> list[dict[str, str | float | None]]:
    """One record per timing: its step, the step over the first of its group's, its recurrent
    GFLOP/s and its share of the group's roofline."""
    records = []
    for key in dict.fromkeys((t.regime, t.group) for t in timings):
        group = [t for t in timings if (t.regime, t.group) == key]
        roofline = next((t.gflops for t in group if t.name.startswith("roofline")), None)
        records += [
            {
                "regime": t.regime,
                "group": t.group,
                "implementation": t.name,
                "ms/step": _whole_if_large(t.seconds * 1e3),
                "vs first": t.seconds / group[0].seconds,
                "recurrent GFLOP/s": t.gflops,
                "of the roofline": f"{t.gflops / roofline:.0%}" if roofline else "–",
                "compile s": None if t.name.startswith("roofline") else t.compile_s,
                "MiB": None if t.memory_bytes is None else t.memory_bytes / 2**20,
            }
            for t in group
        ]
    return records


TORCH_THREADS = (1, 2)


def regime_groups(regime: Regime) -> list[tuple[str, list[Step | None], float]]:
    """gru, lstm and mgu against Flax's cells and PyTorch's (each thread setting), with the
    roofline of the group's model and its recurrent FLOPs."""
    groups = []
    for cell in ("gru", "lstm", "mgu"):
        ours_cell = "mgu_flax" if cell == "mgu" else cell
        torch_steps = (
            [regime_torch(regime, cell, n) for n in TORCH_THREADS] if cell != "mgu" else []
        )
        model = regime_model(regime, ours_cell)
        steps = [regime_ours(regime, ours_cell), regime_flax(regime, cell), *torch_steps]
        groups.append((cell, [*steps, roofline(model)], recurrent_flops(model)))
    return groups


def compare_regime(regime: Regime, rounds: int) -> list[RegimeTiming]:
    """Each design against its anchors and the roofline, one interleaved timing per group."""
    timings = []
    for group, steps, flops in regime_groups(regime):
        steps = [s for s in steps if s is not None]
        medians = time_interleaved(steps, rounds)
        timings += [
            RegimeTiming(
                regime.name, group, s.name, medians[s.name], s.compile_s, s.memory_bytes, flops
            )
            for s in steps
        ]
    return timings


def regime_seed_scaling(
    regime: Regime, cell: str, seed_counts: list[int], rounds: int
) -> dict[int, float]:
    """Throughput of S seeds vmapped in one step over S single-seed steps, in the regime."""
    single = regime_ours(regime, cell)
    populations = {s: regime_ours(regime, cell, s) for s in seed_counts if s > 1}
    medians = time_interleaved([single, *populations.values()], rounds)
    speed_ups = {1: 1.0}
    for seeds, step in populations.items():
        speed_ups[seeds] = seeds * medians[single.name] / medians[step.name]
    return speed_ups


LOOP_CHUNK = 10


def training_loop_step(
    regime: Regime, cell: str, seeds: int, values: Sequence[Mapping[str, float]] = ()
) -> Step:
    """The step ``gru-research train`` runs (batch sampling inside the step, the optimiser,
    the freeze of diverged seeds, per-step metrics): its compiled chunk of ``LOOP_CHUNK``
    steps, timed per step; with ``values``, of the group that trains them all with the seeds."""
    from gru_research.train import FIRST_STEP, abstract_state, build_program

    every = {"log_every": LOOP_CHUNK, "eval_every": LOOP_CHUNK, "checkpoint_every": LOOP_CHUNK}
    config = dataclasses.replace(regime.config(cell, seeds), **every)
    task = regime_task(config)
    program = build_program(config, task, config.model_config(task), values)
    state = program.init(seed_keys(config.seed_list))
    start = time.perf_counter()
    chunk = program.train_chunk.lower(
        abstract_state(program, config.seed_list), task.data, FIRST_STEP
    )
    compiled = chunk.compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], task.data, jnp.int32(0))
        jax.block_until_ready(metrics)

    name = f"gru-research train's step ({cell}, {how_many(seeds, 'seed')}"
    name += f", {len(values)} values vmapped)" if values else ")"
    return Step(name, run, compile_s / LOOP_CHUNK, compiled_bytes(compiled))


GRID_LRS = (3e-4, 1e-3, 3e-3, 1e-2)


@dataclass(frozen=True)
class GridTiming:
    """A group of V learning rates × S seeds in one program against one single-seed run's
    step, each timed per step; compile seconds apart."""

    values: int
    seeds: int
    group_s: float
    single_s: float
    group_compile_s: float
    single_compile_s: float

    @property
    def speed_up(self) -> float:
        """The group's throughput over its V·S runs trained one after another."""
        return self.values * self.seeds * self.single_s / self.group_s


def grid_speed(regime: Regime, cell: str, seeds: int, rounds: int) -> GridTiming:
    """``GRID_LRS`` × ``seeds`` seeds in one training-loop program against the training loop of
    one seed at one rate, timed interleaved in the steady state."""
    values = [{"lr": lr} for lr in GRID_LRS]
    group = training_loop_step(regime, cell, seeds, values)
    single = training_loop_step(regime, cell, 1)
    medians = time_interleaved([group, single], rounds)
    return GridTiming(
        len(values),
        seeds,
        medians[group.name] / LOOP_CHUNK,
        medians[single.name] / LOOP_CHUNK,
        group.compile_s * LOOP_CHUNK,
        single.compile_s * LOOP_CHUNK,
    )


def loop_overhead(regime: Regime, cell: str, seeds: int, rounds: int) -> tuple[float, float]:
    """Seconds per step of the training loop's program and of the bench step of the same model
    and seeds, timed interleaved."""
    loop = training_loop_step(regime, cell, seeds)
    bench = regime_ours(regime, cell, seeds)
    medians = time_interleaved([loop, bench], rounds)
    return medians[loop.name] / LOOP_CHUNK, medians[bench.name]
