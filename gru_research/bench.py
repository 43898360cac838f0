"""Training-step throughput against what a user would otherwise pick, measured in one process.

Every implementation runs the same full training step — embedding, recurrent layers, readout,
cross-entropy, backward pass, Adam update — on the same shapes. After compiling (timed once),
the implementations are timed *interleaved*, one step each per round, and each reports the
median of its rounds: absolute times drift up to 3× on shared machines, ratios in one process
do not. Anchors: Flax ``nn.RNN`` over ``GRUCell`` / ``OptimizedLSTMCell`` / ``MGUCell``, and
PyTorch ``nn.GRU`` / ``nn.LSTM`` when torch is installed (the ``bench`` extra).

Memory: on the CPU, JAX has no device memory statistics; we report the compiled step's
``memory_analysis()`` (temporaries plus arguments), which is what the step itself needs.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gru_research.model import ModelConfig, apply_model, init_population, seed_keys


@dataclass(frozen=True)
class BenchConfig:
    name: str
    batch: int
    length: int
    embed: int
    hidden: int
    vocab: int = 64
    layers: int = 1


CONFIGS = {
    "small": BenchConfig("small", batch=32, length=100, embed=64, hidden=128),
    "medium": BenchConfig("medium", batch=64, length=200, embed=128, hidden=256),
    "long": BenchConfig("long", batch=8, length=4096, embed=128, hidden=128),
}


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


def _jax_step(name: str, loss_fn, params, tokens) -> Step:
    """Jit one Adam step of ``loss_fn(params, inputs, targets)``; time its compilation."""
    optimizer = optax.adam(1e-3)

    def step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    inputs, targets = jnp.asarray(tokens[..., :-1]), jnp.asarray(tokens[..., 1:])
    opt_state = optimizer.init(params)
    start = time.perf_counter()
    compiled = (
        jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, inputs, targets).compile()
    )
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    memory_bytes = (
        None if memory is None else int(memory.temp_size_in_bytes + memory.argument_size_in_bytes)
    )
    state = {"params": params, "opt": opt_state}

    def run():
        state["params"], state["opt"], loss = compiled(
            state["params"], state["opt"], inputs, targets
        )
        loss.block_until_ready()

    return Step(name, run, compile_s, memory_bytes)


def ours(cfg: BenchConfig, cell: str, seeds: int = 1, scan: str = "auto") -> Step:
    """gru-research's model; with ``seeds`` > 1, that many models trained by one vmapped step."""
    config = ModelConfig(
        cell=cell,
        vocab_size=cfg.vocab,
        hidden_size=cfg.hidden,
        output_size=cfg.vocab,
        num_layers=cfg.layers,
        scan=scan,
    )
    params = init_population(seed_keys(range(seeds)), config)

    def loss_one(p, inputs, targets):
        return _cross_entropy(apply_model(p, config, inputs)[0], targets)

    def loss(p, inputs, targets):
        return jnp.sum(jax.vmap(loss_one, in_axes=(0, None, None))(p, inputs, targets))

    label = f"gru-research {cell}" + (f" ({scan} scan)" if scan != "auto" else "")
    label += f" ×{seeds} seeds vmapped" if seeds > 1 else ""
    return _jax_step(label, loss, params, _tokens(cfg))


class FlaxModel(nn.Module):
    cell: Callable
    cfg: BenchConfig

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.cfg.vocab, self.cfg.embed)(tokens)
        for _ in range(self.cfg.layers):
            x = nn.RNN(self.cell(features=self.cfg.hidden))(x)
        return nn.Dense(self.cfg.vocab)(x)


FLAX_CELLS = {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell, "mgu": nn.MGUCell}


def flax_anchor(cfg: BenchConfig, cell: str) -> Step:
    model = FlaxModel(FLAX_CELLS[cell], cfg)
    tokens = _tokens(cfg)
    params = model.init(jax.random.key(0), jnp.asarray(tokens[:, :-1]))

    def loss(p, inputs, targets):
        return _cross_entropy(model.apply(p, inputs), targets)

    return _jax_step(f"flax nn.RNN({FLAX_CELLS[cell].__name__})", loss, params, tokens)


def torch_anchor(cfg: BenchConfig, cell: str) -> Step | None:
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    rnn_class = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    embed = torch.nn.Embedding(cfg.vocab, cfg.embed)
    rnn = rnn_class(cfg.embed, cfg.hidden, num_layers=cfg.layers, batch_first=True)
    readout = torch.nn.Linear(cfg.hidden, cfg.vocab)
    modules = torch.nn.ModuleList([embed, rnn, readout])
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-3)
    tokens = torch.as_tensor(_tokens(cfg))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def run():
        optimizer.zero_grad()
        logits = readout(rnn(embed(inputs))[0])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab), targets.reshape(-1))
        loss.backward()
        optimizer.step()

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


def machine() -> str:
    import os

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.default_backend()} backend, jax {jax.__version__}, Python "
        f"{platform.python_version()}"
    )


def compare(cfg: BenchConfig, rounds: int) -> list[str]:
    """Markdown rows: each design against its anchors, in one interleaved timing."""
    groups = [
        ("gru", [ours(cfg, "gru"), flax_anchor(cfg, "gru"), torch_anchor(cfg, "gru")]),
        ("lstm", [ours(cfg, "lstm"), flax_anchor(cfg, "lstm"), torch_anchor(cfg, "lstm")]),
        ("mgu", [ours(cfg, "mgu_flax"), flax_anchor(cfg, "mgu")]),
        (
            "min_gru",
            [
                ours(cfg, "min_gru", scan="sequential"),
                ours(cfg, "min_gru", scan="parallel"),
                ours(cfg, "min_gru"),
            ],
        ),
    ]
    rows = []
    for group, steps in groups:
        steps = [s for s in steps if s is not None]
        medians = time_interleaved(steps, rounds)
        reference = medians[steps[0].name]
        for step in steps:
            seconds = medians[step.name]
            memory = "–" if step.memory_bytes is None else f"{step.memory_bytes / 2**20:.1f}"
            rows.append(
                f"| {cfg.name} | {group} | {step.name} | {cfg.batch * cfg.length / seconds:,.0f} "
                f"| {seconds * 1e3:.2f} | {reference and seconds / reference:.2f} "
                f"| {step.compile_s:.2f} | {memory} |"
            )
    return rows


def seed_scaling(cfg: BenchConfig, seeds: int, rounds: int) -> str:
    """S seeds vmapped in one step against S single-seed steps, timed interleaved."""
    single, population = ours(cfg, "gru"), ours(cfg, "gru", seeds=seeds)
    medians = time_interleaved([single, population], rounds)
    ratio = seeds * medians[single.name] / medians[population.name]
    return (
        f"| {cfg.name} | gru | {seeds} | {medians[population.name] * 1e3:.1f} | "
        f"{seeds * medians[single.name] * 1e3:.1f} | {ratio:.2f} |"
    )


def report(config_names: list[str], rounds: int, seeds: int, command: str) -> str:
    from gru_research.tracking import git_commit

    lines = [
        "# Training-step benchmarks",
        "",
        f"- command: `{command}`",
        f"- commit: `{git_commit()}`; machine: {machine()}",
        "- one full training step (embedding, recurrent layer, readout, cross-entropy, backward,"
        " Adam); median of "
        f"{rounds} interleaved rounds after warm-up; `vs first` is the step time relative to the "
        "first row of its group (lower is faster); memory: the compiled step's temporaries plus"
        " arguments (JAX only)",
        "",
        "| config | group | implementation | tokens/s | ms/step | vs first | compile s | MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in config_names:
        lines += compare(CONFIGS[name], rounds)
    lines += [
        "",
        f"## {seeds} seeds vmapped vs {seeds} single-seed steps",
        "",
        "| config | design | seeds | vmapped ms | sequential ms | speed-up |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [seed_scaling(CONFIGS[name], seeds, rounds) for name in config_names if name != "long"]
    return "\n".join(lines) + "\n"
