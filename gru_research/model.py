"""The model: embed → gated RNN layers → readout, as a params pytree and as Flax modules.

Two stacks (``ModelConfig.block``):

* ``"plain"``: recurrent layers fed one into the next, as in the classic papers;
* ``"residual"``: the block of Feng et al.'s code (BorealisAI/minRNNs ``models/model.py``):
  x ← x + RNN(RMSNorm(x)); x ← x + FF(RMSNorm(x)) per layer, then RMSNorm before the readout.

The functional form (:func:`init_model`, :func:`apply_model`) is a pure function of a params
pytree, so it works directly under ``jax.jit``, ``jax.grad`` and ``jax.vmap``.
:func:`init_population` and :func:`over_seeds` put a leading seed axis on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gru_research.cells import Carry, Params, cell_apply, init_layer, initial_carry, zero_carry
from gru_research.config import PRECISIONS
from gru_research.gates import GateDesign, get_design
from gru_research.scan import LayerTrace, ScanKind, resolve_scan, run_layer

Array = jax.Array


@dataclass(frozen=True)
class ModelConfig:
    """A whole model. ``vocab_size`` set: token inputs through an embedding of width
    ``embed_size`` (default ``hidden_size``), or with ``one_hot`` as one-hot vectors straight
    into the gates (the uRNN code's copy models); unset: ``input_size`` real-valued features
    per step. ``precision="bfloat16"`` runs the matmuls in bfloat16 with float32 accumulation
    (state and gate arithmetic stay float32); ``remat`` recomputes each step's activations in
    the backward pass instead of storing them (long sequences)."""

    cell: str | GateDesign = "gru"
    input_size: int = 1
    hidden_size: int = 128
    output_size: int = 1
    num_layers: int = 1
    vocab_size: int | None = None
    block: Literal["plain", "residual"] = "plain"
    ff_mult: int = 4
    scan: ScanKind = "auto"
    bidirectional: Literal["concat", "sum"] | None = None
    dropout: float = 0.0
    recurrent_dropout: float = 0.0
    embed_size: int | None = None
    precision: Literal["float32", "bfloat16"] = "float32"
    remat: bool = False
    one_hot: bool = False

    def __post_init__(self) -> None:
        get_design(self.cell)
        resolve_scan(self.design, self.scan)
        if self.bidirectional not in (None, "concat", "sum"):
            raise ValueError(
                f"unknown bidirectional {self.bidirectional!r}; valid: concat, sum (or none)"
            )
        if self.bidirectional == "concat" and self.block == "residual":
            raise ValueError("the residual block keeps its width: use bidirectional 'sum'")
        for name in ("dropout", "recurrent_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("input_size", "hidden_size", "output_size", "num_layers", "ff_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}"
            )
        if self.embed_size is not None and (self.embed_size < 1 or self.block == "residual"):
            raise ValueError("embed_size must be positive, and the residual block keeps width H")
        if self.one_hot and (not self.vocab_size or self.embed_size or self.block == "residual"):
            raise ValueError("one_hot needs token inputs (a vocabulary), no embed_size, plain")
        if self.block not in ("plain", "residual"):
            raise ValueError(f"unknown block {self.block!r}; valid blocks: plain, residual")

    @property
    def design(self) -> GateDesign:
        return get_design(self.cell)

    @property
    def layer_width(self) -> int:
        """Width of a layer's output: 2H for concatenated directions."""
        return 2 * self.hidden_size if self.bidirectional == "concat" else self.hidden_size

    @property
    def feature_size(self) -> int:
        """Width of what the first layer (plain) or the input projection (residual) reads."""
        if not self.vocab_size:
            return self.input_size
        return self.vocab_size if self.one_hot else self.embed_size or self.hidden_size

    @property
    def compute_dtype(self):
        return None if self.precision == "float32" else jnp.bfloat16


def _dense(key: Array, fan_in: int, fan_out: int) -> Params:
    return {
        "w": jax.nn.initializers.lecun_normal()(key, (fan_in, fan_out)),
        "b": jnp.zeros((fan_out,)),
    }


def _apply_dense(p: Params, x: Array) -> Array:
    return x @ p["w"] + p["b"]


def rms_norm(scale: Array, x: Array, eps: float = 1e-6) -> Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def init_model(key: Array, config: ModelConfig, hyper: Mapping[str, Any] | None = None) -> Params:
    """Parameters of the whole model for one seed (``hyper``: a vmapped group's traced
    ``gate_bias`` or ``chrono_t_max``, :func:`gru_research.cells.init_layer`)."""
    hyper = hyper or {}
    H = config.hidden_size
    k_embed, k_in, k_out, *k_layers = jax.random.split(key, 3 + config.num_layers)
    params: Params = {}
    if config.vocab_size and not config.one_hot:
        params["embed"] = jax.random.normal(k_embed, (config.vocab_size, config.feature_size))
    if config.block == "plain":
        sizes = [config.feature_size] + [config.layer_width] * (config.num_layers - 1)
        params["layers"] = [
            _init_recurrent(k, config, n, hyper) for k, n in zip(k_layers, sizes, strict=True)
        ]
    else:
        if not config.vocab_size:
            params["in_proj"] = _dense(k_in, config.input_size, H)
        params["blocks"] = []
        for k in k_layers:
            k_rnn, k_ff1, k_ff2 = jax.random.split(k, 3)
            params["blocks"].append(
                {
                    "norm_rnn": jnp.ones((H,)),
                    "rnn": _init_recurrent(k_rnn, config, H, hyper),
                    "norm_ff": jnp.ones((H,)),
                    "ff_in": _dense(k_ff1, H, config.ff_mult * H),
                    "ff_out": _dense(k_ff2, config.ff_mult * H, H),
                }
            )
        params["norm_out"] = jnp.ones((H,))
    width = config.layer_width if config.block == "plain" else H
    params["readout"] = _dense(k_out, width, config.output_size)
    if config.design.forget_lower_bound:  # Γ, as the HGRN code initialises it
        params["lower_bounds"] = jnp.ones((config.num_layers, H))
    return params


def layer_lower_bounds(logits: Array) -> Array:
    """γ (L, H) from Γ (L, H): γ_l = Σ_{k ≤ l} softmax(Γ)_k − softmax(Γ)_1, the softmax over
    the layers, so γ_1 = 0 and the bound rises with depth (Qin et al., 2023, HGRN)."""
    weights = jax.nn.softmax(logits, axis=0)
    return jnp.cumsum(weights, axis=0) - weights[0]


def _init_recurrent(
    key: Array, config: ModelConfig, input_size: int, hyper: Mapping[str, Any]
) -> Params:
    """One recurrent layer, or a forward and a backward one for a bidirectional layer."""
    if not config.bidirectional:
        return init_layer(key, config.design, input_size, config.hidden_size, hyper)
    k_fwd, k_bwd = jax.random.split(key)
    return {
        "forward": init_layer(k_fwd, config.design, input_size, config.hidden_size, hyper),
        "backward": init_layer(k_bwd, config.design, input_size, config.hidden_size, hyper),
    }


def reverse_sequences(xs: Array, seq_lengths: Array | None = None) -> Array:
    """Reverse each sequence of a right-padded batch (B, T, ...) within its own length."""
    if seq_lengths is None:
        return xs[:, ::-1]
    steps = jnp.arange(xs.shape[1])[None, :]
    lengths = seq_lengths[:, None]
    index = jnp.where(steps < lengths, lengths - 1 - steps, steps)
    return jnp.take_along_axis(xs, index.reshape(index.shape + (1,) * (xs.ndim - 2)), axis=1)


def _off(key: Array | None, rate: float | Array) -> bool:
    """No dropout: no key (evaluation), or a rate that is the number 0 (a traced rate, as of
    vmapped values, always draws its mask; at 0 that mask is all ones, exactly)."""
    return key is None or (isinstance(rate, int | float) and rate == 0.0)


def dropout(key: Array | None, rate: float | Array, x: Array) -> Array:
    """Inverted dropout; the identity without a key (evaluation) or at rate 0."""
    if _off(key, rate):
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def recurrent_dropout_mask(key: Array | None, rate: float | Array, batch: int, hidden: int):
    """Variational dropout (Gal & Ghahramani, 2016): one (B, H) mask for all time steps."""
    if _off(key, rate):
        return None
    return jax.random.bernoulli(key, 1.0 - rate, (batch, hidden)) / (1.0 - rate)


def _run_recurrent(
    params: Params,
    config: ModelConfig,
    x: Array,
    carry,
    seq_lengths: Array | None,
    resets: Array | None,
    mask_key: Array | None,
    carry_offsets: Carry | None = None,
    trace: bool = False,
    recurrent_rate: float | Array = 0.0,
    lower_bound: Array | None = None,
):
    """A layer (or both directions of a bidirectional one) over a batch: (ys, carry), and its
    :class:`~gru_research.scan.LayerTrace` with ``trace``; ``lower_bound`` is the layer's
    forget-gate bound γ_l (HGRN), the same in both directions."""
    design, batch = config.design, x.shape[0]

    def run(p, xs, c, key, carry_offsets=None):
        mask = recurrent_dropout_mask(key, recurrent_rate, batch, config.hidden_size)
        return run_layer(
            p if lower_bound is None else p | {"lower_bound": lower_bound},
            design,
            xs,
            c,
            scan=config.scan,
            seq_lengths=seq_lengths,
            resets=resets,
            h_mask=mask,
            compute_dtype=config.compute_dtype,
            remat=config.remat,
            carry_offsets=carry_offsets,
            trace=trace,
        )

    if not config.bidirectional:
        return run(params, x, carry, mask_key, carry_offsets)
    if carry_offsets is not None or trace:
        raise ValueError("carry_offsets and trace are not defined for bidirectional layers")
    if resets is not None:
        raise ValueError("resets are not defined for bidirectional layers")
    keys = (None, None) if mask_key is None else jax.random.split(mask_key)
    carry = (None, None) if carry is None else carry
    ys_fwd, c_fwd = run(params["forward"], x, carry[0], keys[0])
    ys_bwd, c_bwd = run(params["backward"], reverse_sequences(x, seq_lengths), carry[1], keys[1])
    ys_bwd = reverse_sequences(ys_bwd, seq_lengths)
    ys = (
        ys_fwd + ys_bwd
        if config.bidirectional == "sum"
        else jnp.concatenate([ys_fwd, ys_bwd], axis=-1)
    )
    return ys, (c_fwd, c_bwd)


def apply_model(
    params: Params,
    config: ModelConfig,
    inputs: Array,
    carries: Sequence[Carry] | None = None,
    *,
    seq_lengths: Array | None = None,
    resets: Array | None = None,
    dropout_key: Array | None = None,
    carry_offsets: Sequence[Carry | None] | None = None,
    trace: bool = False,
    dropout_rates: Mapping[str, float | Array] | None = None,
) -> tuple[Array, list[Carry]] | tuple[Array, list[Carry], list[LayerTrace]]:
    """Outputs (B, T, output_size) and the last carry of every layer.

    ``inputs`` are token ids (B, T) when the config has a vocabulary, else features (B, T, I).
    ``carries`` (one per layer) start the layers; the initial state when omitted.
    ``seq_lengths`` and ``resets`` are passed to every layer (see :func:`run_layer`).
    ``dropout_key`` turns dropout on (training): dropout on every layer's input and on the
    output (Zaremba et al., 2014) and variational recurrent dropout (Gal & Ghahramani, 2016),
    each from its own stream of the key; without it the model is deterministic.
    ``carry_offsets`` (one per layer, None for none) are added to each layer's carry after
    every step and ``trace`` returns one :class:`~gru_research.scan.LayerTrace` per layer as a
    third value (see :func:`run_layer`); bidirectional layers take neither.
    ``dropout_rates`` (``dropout``, ``recurrent_dropout``) replace the config's rates, as the
    traced values of a group of vmapped values do.
    """
    rates = {"dropout": config.dropout, "recurrent_dropout": config.recurrent_dropout}
    rates |= dropout_rates or {}
    x = embed_inputs(params, config, inputs)
    carries = list(carries) if carries is not None else [None] * config.num_layers
    offsets = list(carry_offsets) if carry_offsets is not None else [None] * config.num_layers

    def keys(layer: int):
        if dropout_key is None:
            return None, None
        layer_key = jax.random.fold_in(dropout_key, layer)
        return jax.random.fold_in(layer_key, 0), jax.random.fold_in(layer_key, 1)

    bounds = layer_lower_bounds(params["lower_bounds"]) if "lower_bounds" in params else None

    def recurrent(i: int, layer: Params, x: Array, carry, mask_key):
        return _run_recurrent(
            layer, config, x, carry, seq_lengths, resets, mask_key, offsets[i], trace,
            rates["recurrent_dropout"], None if bounds is None else bounds[i],
        )  # fmt: skip

    new_carries, traces = [], []
    if config.block == "plain":
        for i, (layer, carry) in enumerate(zip(params["layers"], carries, strict=True)):
            input_key, mask_key = keys(i)
            x = dropout(input_key, rates["dropout"], x)
            x, carry, *layer_trace = recurrent(i, layer, x, carry, mask_key)
            new_carries.append(carry)
            traces += layer_trace
    else:
        if "in_proj" in params:
            x = _apply_dense(params["in_proj"], x)
        for i, (block, carry) in enumerate(zip(params["blocks"], carries, strict=True)):
            input_key, mask_key = keys(i)
            h = dropout(input_key, rates["dropout"], rms_norm(block["norm_rnn"], x))
            y, carry, *layer_trace = recurrent(i, block["rnn"], h, carry, mask_key)
            x = x + y
            ff = jax.nn.gelu(_apply_dense(block["ff_in"], rms_norm(block["norm_ff"], x)))
            x = x + _apply_dense(block["ff_out"], ff)
            new_carries.append(carry)
            traces += layer_trace
        x = rms_norm(params["norm_out"], x)
    x = dropout(keys(config.num_layers)[0], rates["dropout"], x)
    outputs = _apply_dense(params["readout"], x)
    return (outputs, new_carries, traces) if trace else (outputs, new_carries)


def embed_inputs(params: Params, config: ModelConfig, inputs: Array) -> Array:
    """What the first layer reads: embedded or one-hot tokens, or the features themselves."""
    if not config.vocab_size:
        return inputs
    if config.one_hot:
        return jax.nn.one_hot(inputs, config.vocab_size)
    return params["embed"][inputs]


def initial_carries(params: Params, config: ModelConfig, batch: int) -> list[Carry]:
    """The carry every layer starts a fresh sequence from (learned or zeros)."""
    layers = params["layers"] if config.block == "plain" else [b["rnn"] for b in params["blocks"]]

    def start(layer: Params) -> Carry:
        return initial_carry(layer, config.design, (batch,))

    if config.bidirectional:
        return [(start(p["forward"]), start(p["backward"])) for p in layers]
    return [start(p) for p in layers]


def count_params(params: Params) -> int:
    return sum(int(v.size) for v in jax.tree.leaves(params))


def design_param_count(design: str | GateDesign, input_size: int, hidden_size: int) -> int:
    """Parameters of one recurrent layer of a design (no parameters are materialised)."""
    shapes = jax.eval_shape(
        lambda k: init_layer(k, get_design(design), input_size, hidden_size), jax.random.key(0)
    )
    return count_params(shapes)


def model_param_count(config: ModelConfig) -> int:
    """Parameters of a whole model for one seed (no parameters are materialised)."""
    return count_params(jax.eval_shape(lambda k: init_model(k, config), jax.random.key(0)))


# ---------------------------------------------------------------------------------------------
# seeds


def seed_keys(seeds: Sequence[int]) -> Array:
    """Seed s uses ``jax.random.key(s)``, whatever the population (docs/design.md §5.1)."""
    return jnp.stack([jax.random.key(s) for s in seeds])


def seed_sharding(num_seeds: int) -> jax.sharding.NamedSharding | None:
    """The seed axis split over the local devices: a 1-D ``Mesh`` named ``seeds`` over the
    largest number of devices that divides ``num_seeds``; None on a single device."""
    devices = jax.local_devices()
    used = max(d for d in range(1, len(devices) + 1) if num_seeds % d == 0)
    if used == 1:
        return None
    mesh = jax.sharding.Mesh(np.array(devices[:used]), ("seeds",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seeds"))


def shard_over_seeds(population):
    """Put a population (leading seed axis on every leaf) on the devices of
    :func:`seed_sharding`; ``jax.jit`` then runs each device's seeds on that device."""
    num_seeds = jax.tree.leaves(population)[0].shape[0]
    sharding = seed_sharding(num_seeds)
    return population if sharding is None else jax.device_put(population, sharding)


def init_population(keys: Array, config: ModelConfig) -> Params:
    """S independent parameter sets from S keys, stacked on a leading seed axis.

    Seeds are initialised one after another (``lax.map``), not vmapped: a vmapped orthogonal
    initialiser is a *batched* LAPACK QR, which XLA's CPU runtime runs on its own worker
    pool and which was seen to deadlock that pool on a 2-core machine. The values are the same.
    """
    return jax.lax.map(lambda k: init_model(k, config), keys)


def over_seeds(fn: Callable, *, shared_data: bool = False) -> Callable:
    """``jax.jit(jax.vmap(fn))`` for ``fn(params, data)`` over the leading seed axis.

    With ``shared_data`` every seed sees the same data; otherwise data has a seed axis too.
    """
    return jax.jit(jax.vmap(fn, in_axes=(0, None if shared_data else 0)))


# ---------------------------------------------------------------------------------------------
# Flax modules


class GatedRNN(nn.Module):
    """The whole model as a Flax module: ``GatedRNN(config).init(key, inputs)``."""

    config: ModelConfig

    @nn.compact
    def __call__(self, inputs: Array, carries: Sequence[Carry] | None = None):
        params = self.param("model", init_model, self.config)
        return apply_model(params, self.config, inputs, carries)


class RecurrentLayer(nn.Module):
    """One recurrent layer over a sequence (B, T, I) → ((B, T, H), carry)."""

    cell: str | GateDesign
    hidden_size: int
    scan: ScanKind = "auto"

    @nn.compact
    def __call__(
        self,
        xs: Array,
        carry: Carry | None = None,
        *,
        carry_offsets: Carry | None = None,
        trace: bool = False,
    ):
        """((B, T, H), carry), and a :class:`~gru_research.scan.LayerTrace` with ``trace``."""
        design = get_design(self.cell)
        params = self.param("layer", init_layer, design, xs.shape[-1], self.hidden_size)
        return run_layer(
            params, design, xs, carry, scan=self.scan, carry_offsets=carry_offsets, trace=trace
        )


class GatedCell(nn.RNNCellBase):
    """One step ``(carry, x_t) -> (carry, y_t)`` of any design, usable inside ``nn.RNN``."""

    cell: str | GateDesign
    hidden_size: int

    @nn.compact
    def __call__(self, carry: Carry, x: Array):
        design = get_design(self.cell)
        params = self.param("layer", init_layer, design, x.shape[-1], self.hidden_size)
        return cell_apply(params, design, carry, x)

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> Carry:
        design, batch_shape = get_design(self.cell), tuple(input_shape[:-1])
        return zero_carry(design, batch_shape, self.hidden_size, input_shape[-1])

    @property
    def num_feature_axes(self) -> int:
        return 1
