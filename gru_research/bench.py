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

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gru_research.model import ModelConfig, apply_model, init_model, init_population, seed_keys


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


def bench_model(cfg: BenchConfig, cell: str, scan: str = "auto", **options: Any) -> ModelConfig:
    """The model every implementation builds for ``cfg``: embedding, layers, readout."""
    return ModelConfig(
        cell=cell,
        vocab_size=cfg.vocab,
        embed_size=cfg.embed,
        hidden_size=cfg.hidden,
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
        f"{jax.default_backend()} backend, jax {jax.__version__}, flax {_version('flax')}, "
        f"torch {_version('torch')}, Python {platform.python_version()}"
    )


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


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


def timing_rows(timings: list[Timing]) -> list[str]:
    """Markdown rows; ``vs first`` is the step time relative to the first row of the group."""
    rows, first = [], {}
    for t in timings:
        reference = first.setdefault((t.config, t.group), t.seconds)
        memory = "–" if t.memory_bytes is None else f"{t.memory_bytes / 2**20:.1f}"
        rows.append(
            f"| {t.config} | {t.group} | {t.name} | {t.tokens / t.seconds:,.0f} "
            f"| {t.seconds * 1e3:.2f} | {t.seconds / reference:.2f} | {t.compile_s:.2f} "
            f"| {memory} |"
        )
    return rows


def seed_scaling(cfg: BenchConfig, seed_counts: list[int], rounds: int) -> dict[int, float]:
    """Speed-up of S seeds vmapped in one step over S single-seed steps, timed interleaved."""
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


def length_scaling(lengths: list[int], rounds: int) -> dict[str, dict[int, float]]:
    """Seconds per step against T at B = 8, H = 128 (the long configuration's shapes)."""
    curves: dict[str, dict[int, float]] = {name: {} for name in LENGTH_CURVES}
    for length in lengths:
        cfg = BenchConfig(f"T={length}", batch=8, length=length, embed=128, hidden=128)
        steps = {name: make(cfg) for name, make in LENGTH_CURVES.items()}
        steps = {name: step for name, step in steps.items() if step is not None}
        medians = time_interleaved(list(steps.values()), rounds, warmup=1)
        for name, step in steps.items():
            curves[name][length] = medians[step.name]
    return {name: curve for name, curve in curves.items() if curve}


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


def profile(cfg: BenchConfig, rounds: int) -> list[str]:
    """Where a gru step's time goes, ours against Flax's, timed interleaved (markdown rows)."""
    config = ModelConfig(
        cell="gru",
        vocab_size=cfg.vocab,
        embed_size=cfg.embed,
        hidden_size=cfg.hidden,
        output_size=cfg.vocab,
    )
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
    steps = []
    for name, (loss_fn, params) in implementations.items():
        for phase, run in _phases(name, loss_fn, params, tokens).items():
            steps.append(Step(f"{name}: {phase}", run, 0.0))
    for step in steps:
        step.run()
    medians = time_interleaved(steps, rounds)
    rows = []
    for name in implementations:
        f, fb, whole = (
            medians[f"{name}: {p}"] for p in ("forward", "forward + backward", "whole step")
        )
        rows.append(
            f"| {cfg.name} | {name} | {f * 1e3:.1f} | {(fb - f) * 1e3:.1f} "
            f"| {(whole - fb) * 1e3:.1f} | {whole * 1e3:.1f} |"
        )
    return rows


def remat_memory(length: int = 10_000) -> dict[str, float]:
    """Memory of a gru step (B = 8, H = 128) at T = ``length``, remat off and on, and the
    remat step's time (it is run, not only compiled)."""
    cfg = BenchConfig(f"T={length}", batch=8, length=length, embed=128, hidden=128)
    plain, remat = ours(cfg, "gru"), ours(cfg, "gru", remat=True)
    remat.run()
    start = time.perf_counter()
    remat.run()
    return {
        "plain_bytes": plain.memory_bytes or 0,
        "remat_bytes": remat.memory_bytes or 0,
        "remat_step_s": time.perf_counter() - start,
    }


def _ratio(timings: list[Timing], where: tuple[str, str], faster: str, slower: str):
    """How many times the ``faster`` step's throughput is the ``slower`` one's, both timed in
    the group ``where`` = (config, group); None when either was not measured."""
    seconds = {t.name: t.seconds for t in timings if (t.config, t.group) == where}
    if faster not in seconds or slower not in seconds:
        return None
    return seconds[slower] / seconds[faster]


def _target(text: str, ratio: float | None, goal: float, unit: str = "x") -> str:
    if ratio is None:
        return f"| {text} | not measured here | ≥ {goal}{unit} | – |"
    return (
        f"| {text} | {ratio:.2f}{unit} | ≥ {goal}{unit} | {'met' if ratio >= goal else 'not met'} |"
    )


def targets(
    timings: list[Timing], speed_ups: dict, memory: dict | None, compile_2_layers: float
) -> list[str]:
    """The issue's targets, each with its measured ratio (issue 8)."""
    rows = []
    for config in ("small", "medium"):
        for group, slower, goal in [
            ("gru", "flax nn.RNN(GRUCell)", 1.5),
            ("gru", "torch nn.GRU", 2.0),
            ("lstm", "torch nn.LSTM", 1.0),
            ("lstm", "flax nn.RNN(OptimizedLSTMCell)", 1.5),
        ]:
            faster = f"gru-research {group}"
            ratio = _ratio(timings, (config, group), faster, slower)
            rows.append(_target(f"{config}: {faster} vs {slower}", ratio, goal))
    if 8 in speed_ups:
        rows.append(_target("8 seeds vmapped vs 8 single-seed steps (CPU)", speed_ups[8], 1.2))
    long = ("long", "min_gru")
    rows.append(
        _target(
            "long (T = 4096): min_gru (auto) vs gru",
            _ratio(timings, long, "gru-research min_gru", "gru-research gru"),
            3.0,
        )
    )
    by_name = {t.name: t.seconds for t in timings if (t.config, t.group) == long}
    scans = [by_name.get(f"gru-research min_gru ({k} scan)") for k in ("sequential", "parallel")]
    if None not in scans and "gru-research min_gru" in by_name:
        slack = by_name["gru-research min_gru"] / min(scans)
        met = "met" if slack <= 1.05 else "not met"
        rows.append(
            f"| long: auto scan vs the better explicit scan | {slack:.2f}x the better one's time "
            f"| ≤ 1.05x | {met} |"
        )
    if memory is not None:
        gib = memory["remat_bytes"] / 2**30
        rows.append(
            f"| T = 10,000, B = 8, H = 128, remat: step memory | {gib:.2f} GiB (remat off: "
            f"{memory['plain_bytes'] / 2**30:.2f} GiB; step {memory['remat_step_s']:.1f} s) "
            f"| ≤ 4 GiB | {'met' if gib <= 4 else 'not met'} |"
        )
    rows.append(
        f"| compile time, 2-layer gru model (small) | {compile_2_layers:.1f} s | < 10 s "
        f"| {'met' if compile_2_layers < 10 else 'not met'} |"
    )
    for text in [
        "8 seeds vmapped vs sequential on a GPU (≥ 5x)",
        "GPU: parallel vs sequential scan for min_gru (≥ 3x)",
        "GPU: auto scan within 5% of the better scan",
    ]:
        rows.append(f"| {text} | not measured: no GPU was lent to this task | – | – |")
    return rows


def plot(curves: dict[str, dict[int, float]], speed_ups: dict[int, float], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in curves.items():
        lengths = sorted(curve)
        left.plot(lengths, [curve[t] * 1e3 for t in lengths], marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="ms per step")
    left.set_title("training step vs length (B = 8, H = 128)")
    left.legend(fontsize=7)
    seeds = sorted(speed_ups)
    right.plot(seeds, [speed_ups[s] for s in seeds], marker="o", label="gru-research gru")
    right.axhline(1.0, color="grey", lw=0.8, ls="--")
    right.set(xscale="log", xlabel="seeds S", ylabel="speed-up over S single-seed steps")
    right.set_xticks(seeds, [str(s) for s in seeds])
    right.set_title("seeds vmapped in one step (small config)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(
    config_names: list[str],
    rounds: int,
    seed_counts: list[int],
    lengths: list[int],
    command: str,
    plot_path=None,
    remat_length: int | None = 10_000,
) -> str:
    """The whole benchmark as markdown (and the scaling plot at ``plot_path``)."""
    from gru_research.tracking import git_commit

    started = time.perf_counter()
    timings = [t for name in config_names for t in compare(CONFIGS[name], rounds)]
    speed_ups = seed_scaling(CONFIGS["small"], seed_counts, rounds)
    curves = length_scaling(lengths, max(3, rounds // 2))
    memory = remat_memory(remat_length) if remat_length else None
    compile_2_layers = ours(dataclasses.replace(CONFIGS["small"], layers=2), "gru").compile_s
    phases = [
        row for name in config_names if name != "long" for row in profile(CONFIGS[name], rounds)
    ]
    if plot_path is not None:
        plot(curves, speed_ups, plot_path)
    lines = [
        "# Training-step benchmarks",
        "",
        f"- command: `{command}`",
        f"- commit: `{git_commit()}`; machine: {machine()}",
        "- one full training step (embedding, recurrent layer, readout, cross-entropy, backward,"
        f" Adam); median of {rounds} interleaved rounds after warm-up; `vs first` is the step "
        "time relative to the first row of its group (lower is faster); memory: the compiled "
        "step's temporaries plus arguments (JAX only); wall time of the whole benchmark: "
        f"{(time.perf_counter() - started) / 60:.1f} min",
        "",
        "## Targets (issue 8)",
        "",
        "| target | measured | goal | |",
        "|---|---|---|---|",
        *targets(timings, speed_ups, memory, compile_2_layers),
        "",
        "## Every implementation",
        "",
        "| config | group | implementation | tokens/s | ms/step | vs first | compile s | MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *timing_rows(timings),
        "",
        "## Where the time goes (gru; ms, medians of interleaved rounds)",
        "",
        "| config | implementation | forward | backward | Adam update and rest | whole step |",
        "|---|---|---:|---:|---:|---:|",
        *phases,
        "",
        "## Seeds vmapped (small config, gru)",
        "",
        "| seeds S | speed-up over S single-seed steps |",
        "|---:|---:|",
        *[f"| {s} | {speed_ups[s]:.2f} |" for s in sorted(speed_ups)],
        "",
        "## Step time against sequence length (B = 8, H = 128), ms",
        "",
        "| implementation | " + " | ".join(f"T = {t}" for t in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
        *[
            f"| {name} | " + " | ".join(f"{curve[t] * 1e3:.1f}" for t in lengths) + " |"
            for name, curve in curves.items()
        ],
    ]
    return "\n".join(lines) + "\n"


FENG_LENGTHS = [64, 128, 256, 512, 1024, 2048, 4096]


def speed_claim(lengths: list[int], batch: int, rounds: int) -> list[dict]:
    """Feng et al. (2024), the speed claim (PAPERS.md §5.4): one training step of min_gru on
    the parallel (log-space associative) scan against gru on ``lax.scan``, per length, at a
    fixed batch; min_gru on the sequential scan beside them."""
    rows = []
    for length in lengths:
        cfg = BenchConfig(f"T={length}", batch=batch, length=length, embed=128, hidden=128)
        steps = {
            "gru": ours(cfg, "gru"),
            "min_gru parallel": ours(cfg, "min_gru", scan="parallel"),
            "min_gru sequential": ours(cfg, "min_gru", scan="sequential"),
        }
        medians = time_interleaved(list(steps.values()), rounds, warmup=1)
        rows.append(
            {"length": length}
            | {f"{k} s": medians[s.name] for k, s in steps.items()}
            | {f"{k} bytes": s.memory_bytes or 0 for k, s in steps.items()}
        )
    return rows


def speed_claim_report(rows: list[dict], batch: int, rounds: int, command: str) -> str:
    from gru_research.report import claims_table
    from gru_research.tracking import git_commit

    speed_ups = [r["gru s"] / r["min_gru parallel s"] for r in rows]
    memory = [r["min_gru parallel bytes"] / r["gru bytes"] for r in rows]
    monotone = all(b >= a for a, b in zip(speed_ups, speed_ups[1:], strict=False))
    more_memory = all(m > 1 for m in memory)
    lines = [
        "# feng2024_speed",
        "",
        "Feng et al. (2024), the speed claim: one training step of min_gru on the parallel",
        "(log-space associative) scan against gru on the sequential `lax.scan`, T = "
        f"{rows[0]['length']} … {rows[-1]['length']}, batch {batch}, hidden 128 (PAPERS.md §5.4).",
        "",
        "## Provenance",
        "",
        f"- command: `{command}`",
        f"- git commit: `{git_commit()}`; machine: {machine()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; median of {rounds} "
        "interleaved rounds per length; memory: the compiled step's temporaries plus arguments",
        "",
        "**Scale.** The paper's magnitudes (175× at T = 512, 1,324× at T = 4096, +88% memory) "
        "were measured on a T4 GPU. These are CPU ratios, reported as CPU ratios: on a CPU the "
        "associative scan does more work than the sequential loop and has no idle parallel "
        "units to fill. No GPU was lent to this task, so the GPU check was not run.",
        "",
        "| T | gru ms | min_gru parallel ms | speed-up | min_gru sequential ms | speed-up "
        "| gru MiB | min_gru parallel MiB | memory × gru |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, speed_up, mem in zip(rows, speed_ups, memory, strict=True):
        lines.append(
            f"| {r['length']} | {r['gru s'] * 1e3:.1f} | {r['min_gru parallel s'] * 1e3:.1f} "
            f"| {speed_up:.2f}× | {r['min_gru sequential s'] * 1e3:.1f} "
            f"| {r['gru s'] / r['min_gru sequential s']:.2f}× | {r['gru bytes'] / 2**20:.1f} "
            f"| {r['min_gru parallel bytes'] / 2**20:.1f} | {mem:.2f} |"
        )
    lines += claims_table(
        [
            (
                "the parallel min_gru's speed-up over gru grows monotonically with T",
                "held" if monotone else "not held",
                ", ".join(f"{s:.2f}×" for s in speed_ups),
            ),
            (
                "the parallel path uses more memory than gru",
                "held" if more_memory else "not held",
                ", ".join(f"{m:.2f}×" for m in memory),
            ),
            (
                "the magnitudes (175× at T = 512, 1,324× at T = 4096)",
                "not measured",
                "GPU numbers; no GPU was lent",
            ),
        ]
    )
    return "\n".join(lines) + "\n"
