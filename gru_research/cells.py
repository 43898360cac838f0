"""The cell math of both families, driven by a :class:`~gru_research.gates.GateDesign`.

A layer's parameters are a plain pytree::

    {"W": {gate: (I, H)},   input kernels of the gates and candidate fed by x
     "U": {gate: (H, H)},   recurrent kernels of those fed by h in full
     "u": {gate: (H,)},     diagonal recurrent weights (u ⊙ h) of those fed by h diagonally
     "R": {gate: (k, H/k, H/k)}  block-diagonal recurrent kernels of those fed by k heads
     "b": {gate: (H,)},     input-side biases (one per gate, as Flax)
     "p": {gate: (H,)},     peephole weights (p ⊙ c), LSTM family
     "c_h": (H,),           the candidate's recurrent bias, reset-after GRUs only
     "decay": (H,),         RG-LRU's Λ, σ(Λ)^8 its slowest decay (De et al., 2024)
     "conv": {"w": (k, I), "b": (I,)},  a short causal convolution's taps, oldest first
     "lower_bound": (H,)}   HGRN's γ_l, given by the model (absent: 0, a first layer)

With an input window of k taps the input kernels are (k·I, H): W reads [x_{t−k+1}, …, x_t].

A highway output (SRU) adds ``W["skip"]`` (I, H) where the input is not as wide as the state.

Gate keys are ``z``, ``r`` and the candidate ``h`` (GRU family) or ``i``, ``f``, ``o`` and the
candidate ``g`` (LSTM family). The fast path never calls a step on raw inputs: it hoists
:func:`input_projection` of the whole sequence out of the time loop, then runs
:func:`recurrent_step` (state-reading designs; :func:`recurrent_update` is the step after its
one fused matmul, and returns the gate values it used) or the linear recurrence of
:func:`recurrence_coefficients` (the rest). :func:`cell_apply` is the Flax-style
``(carry, x) -> (carry, y)`` contract built from the same two pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gru_research.gates import Coupled, Fixed, Gate, GateDesign, Tied

Array = jax.Array
Params = dict
Carry = Array | tuple[Array, Array]


# ---------------------------------------------------------------------------------------------
# activations


def positive_g(v: Array) -> Array:
    """Feng et al. (2024): g(v) = v + 0.5 for v ≥ 0, σ(v) otherwise; keeps h̃ positive."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def log_positive_g(v: Array) -> Array:
    """log g(v), computed without forming g: log(v + 0.5) for v ≥ 0, −softplus(−v) otherwise."""
    return jnp.where(v >= 0, jnp.log(jax.nn.relu(v) + 0.5), -jax.nn.softplus(-v))


ACTIVATIONS = {
    "tanh": jnp.tanh,
    "identity": lambda v: v,
    "relu": jax.nn.relu,
    "g": positive_g,
    "silu": jax.nn.silu,
}


# ---------------------------------------------------------------------------------------------
# parameters


def _recurrent_kernel(design: GateDesign, key: Array, size: int, heads: int = 1) -> Array:
    """An (H, H) kernel, or ``heads`` (H/k, H/k) blocks stacked (heads, H/k, H/k), each block
    drawn as a kernel of its own (an orthogonal block is orthogonal by itself)."""
    if heads > 1:
        keys = jax.random.split(key, heads)
        return jax.vmap(lambda k: _recurrent_kernel(design, k, size // heads))(keys)
    if design.recurrent_init == "identity":
        return jnp.eye(size)
    if design.recurrent_init == "orthogonal":
        return jax.nn.initializers.orthogonal()(key, (size, size))
    return jax.nn.initializers.lecun_normal()(key, (size, size))


def _state_weights(design: GateDesign, name: str, key: Array, hidden_size: int) -> Array:
    """How ``name`` reads h: an (H, H) kernel, a diagonal (H,) drawn from U(0, 1) or
    U(0, ``diagonal_bound``) (ones with identity initialisation), or block-diagonal heads."""
    kind, heads = design.recurrence(name)
    if kind == "diagonal":
        if design.recurrent_init == "identity":
            return jnp.ones((hidden_size,))
        return jax.random.uniform(key, (hidden_size,), maxval=design.diagonal_bound or 1.0)
    if kind == "block" and hidden_size % heads:
        raise ValueError(
            f"design {design.name!r}: {heads} heads need a hidden size divisible by {heads}, "
            f"got {hidden_size}"
        )
    return _recurrent_kernel(design, key, hidden_size, heads)


def input_fed(design: GateDesign) -> tuple[str, ...]:
    """The gates and candidate fed by x, in the order of the fused input kernel."""
    gates = tuple(n for n, s in design.learned_gates if s.x)
    return gates + ((design.candidate_name,) if design.candidate.x else ())


def _fusable(design: GateDesign, kind: str) -> tuple[str, ...]:
    """The readers of h of that kind, but a candidate that resets *before* its matmul (it
    needs r first, so it gets a matmul of its own)."""
    names = design.reading(kind)
    if design.family == "gru" and design.reset == "before":
        return tuple(n for n in names if n != design.candidate_name)
    return names


def fused_heads(design: GateDesign) -> int:
    """1 where the fused recurrent matmul is dense, (H, G·H); k where every gate that reads
    h does so through the same k block-diagonal heads (sLSTM), fused as (k, H/k, G·H/k)."""
    blocks = _fusable(design, "block")
    heads = {design.recurrence(n)[1] for n in blocks}
    return heads.pop() if blocks and not _fusable(design, "full") and len(heads) == 1 else 1


def state_fed(design: GateDesign) -> tuple[str, ...]:
    """The gates and candidate whose reads of h are the one fused recurrent matmul per step:
    the full readers, or the block readers where :func:`fused_heads` fuses them."""
    return _fusable(design, "block" if fused_heads(design) > 1 else "full")


STATE_PARAMETERS = {"full": "U", "diagonal": "u", "block": "R"}


def loop_parameters(params: Params, design: GateDesign) -> Params:
    """The parameters a step reads besides the input projection (W, b), the fused recurrent
    kernel of :func:`state_fed` and the initial state: what the time loop differentiates."""
    fused = set(state_fed(design))
    loop = {k: v for k, v in params.items() if k not in ("W", "b", "U", "R", "h0", "c0")}
    for group in ("U", "R"):
        if unfused := {n: u for n, u in params.get(group, {}).items() if n not in fused}:
            loop[group] = unfused
    return loop


def init_layer(
    key: Array,
    design: GateDesign,
    input_size: int,
    hidden_size: int,
    hyper: Mapping[str, Any] = MappingProxyType({}),
) -> Params:
    """Parameters of one recurrent layer.

    Initialisers as Flax's cells: LeCun-normal input kernels, orthogonal recurrent kernels
    (one per gate), zero biases except a gate's ``bias_init`` (e.g. the LSTM forget bias 1).
    ``hyper`` (traced values of a vmapped group) may set ``gate_bias`` and ``chrono_t_max`` in
    place of the design's.
    """
    cand = design.candidate_name
    with_x = input_fed(design)
    with_h = design.reading("full") + design.reading("diagonal") + design.reading("block")
    keys = jax.random.split(key, len(with_x) + len(with_h))
    lecun = jax.nn.initializers.lecun_normal()
    read_width = input_size * design.input_window  # what W reads: x_t, or the window of taps
    params: Params = {
        "W": {n: lecun(k, (read_width, hidden_size)) for n, k in zip(with_x, keys, strict=False)},
        "U": {},
        "b": {n: jnp.full((hidden_size,), s.bias_init) for n, s in design.learned_gates if s.bias},
    }
    for name, k in zip(with_h, keys[len(with_x) :], strict=True):
        group = STATE_PARAMETERS[design.recurrence(name)[0]]
        params.setdefault(group, {})[name] = _state_weights(design, name, k, hidden_size)
    if design.candidate.bias:
        params["b"][cand] = jnp.zeros((hidden_size,))
    if design.output == "highway" and read_width != hidden_size:
        params["W"]["skip"] = lecun(jax.random.fold_in(key, 2), (read_width, hidden_size))
    if design.short_conv:  # N(0, 1/k) taps, zero bias
        taps = jax.random.normal(jax.random.fold_in(key, 4), (design.short_conv, input_size))
        params["conv"] = {"w": taps / math.sqrt(design.short_conv), "b": jnp.zeros(input_size)}
    if peepholes := design.peepholes("previous") + design.peepholes("current"):
        params["p"] = {n: jnp.zeros((hidden_size,)) for n in peepholes}
    if design.has_recurrent_bias:
        params["c_h"] = jnp.zeros((hidden_size,))
    if design.update == "rg_lru":
        params["decay"] = rg_lru_decay_init(jax.random.fold_in(key, 3), hidden_size)
    if "gate_bias" in hyper and design.chrono_gate is not None:
        gate, sign = design.chrono_gate
        params["b"][gate] = jnp.full((hidden_size,), sign * hyper["gate_bias"])
    t_max = hyper.get("chrono_t_max", design.chrono_t_max)
    if t_max is not None and design.chrono_gate is not None:
        gate, sign = design.chrono_gate
        bias = chrono_bias(jax.random.fold_in(key, 1), t_max, hidden_size)
        params["b"][gate] = sign * bias
        if design.family == "lstm" and isinstance(design.gate("i"), Gate):
            params["b"]["i"] = -bias
    if design.learn_initial_state:
        params["h0"] = jnp.zeros((hidden_size,))
        if design.family == "lstm":
            params["c0"] = jnp.zeros((hidden_size,))
    return params


def bound_diagonal(params: Params, bound: float | None) -> Params:
    """Every diagonal recurrent weight of a parameter tree (any layers, directions or seeds)
    projected onto |u| ≤ ``bound`` (IndRNN's constraint, Li et al., 2018), after each
    optimiser step; the tree itself where there is no bound."""
    if bound is None:
        return params

    def project(path, leaf):
        in_u = any(getattr(k, "key", None) == "u" for k in path)
        return jnp.clip(leaf, -bound, bound) if in_u else leaf

    return jax.tree_util.tree_map_with_path(project, params)


def rg_lru_decay_init(key: Array, hidden_size: int, low: float = 0.9, high: float = 0.999):
    """Λ with a = σ(Λ) and a² uniform on [low², high²] (De et al., 2024)."""
    a = jnp.sqrt(jax.random.uniform(key, (hidden_size,), minval=low**2, maxval=high**2))
    return jnp.log(a) - jnp.log1p(-a)


def chrono_bias(key: Array, t_max: float, hidden_size: int) -> Array:
    """log U[1, T_max − 1] (Tallec & Ollivier, 2018): forget time scales up to T_max."""
    if isinstance(t_max, int | float) and t_max <= 2:
        raise ValueError(f"chrono_t_max must be > 2, got {t_max}")
    return jnp.log(jax.random.uniform(key, (hidden_size,), minval=1.0, maxval=t_max - 1.0))


def layer_sizes(params: Params) -> tuple[int, int]:
    """(input_size, hidden_size) of a layer's parameters."""
    hidden = params["b"][next(iter(params["b"]))].shape[-1]
    inputs = next(iter(params["W"].values())).shape[0] if params["W"] else 0
    return inputs, hidden


# ---------------------------------------------------------------------------------------------
# inputs over time: a dense window or a short causal convolution, the last inputs carried


def split_carry(design: GateDesign, carry: Carry | None) -> tuple[Carry | None, Array | None]:
    """(state, inputs) of a carry: the recurrent state (h, or (c, h)) and, for a design with
    an input history, its last k − 1 inputs (B, k − 1, I); None for what it does not have."""
    if not design.input_history or carry is None:
        return carry, None
    return carry


def join_carry(design: GateDesign, state: Carry, inputs: Array | None) -> Carry:
    """The carry of a state and, for a design with an input history, the inputs it holds."""
    return (state, inputs) if design.input_history else state


def history_input_size(params: Params, design: GateDesign) -> int:
    """The width I of the raw inputs a layer with an input history holds."""
    if "conv" in params:
        return params["conv"]["b"].shape[-1]
    return layer_sizes(params)[0] // design.input_window


def inputs_over_time(
    params: Params,
    design: GateDesign,
    xs: Array,
    history: Array,
    restart: Array | None = None,
    seq_lengths: Array | None = None,
) -> tuple[Array, Array]:
    """(what the gates read at each step, the inputs to carry on) for batch-major ``xs``
    (B, T, I) after the carried ``history`` (B, k − 1, I), oldest first.

    Tap j of step t is x_{t−j}, zero where it lies before the step's last ``restart`` (B, T):
    the window [x_{t−k+1}, …, x_t] (B, T, k·I), or the convolution of the taps oldest first,
    w_1 ⊙ x_{t−k+1} + … + w_k ⊙ x_t + b (B, T, I), as recurrentgemma's ``Conv1D``. The inputs
    carried on are the k − 1 up to each sequence's last real step.
    """
    k, length = design.input_history + 1, xs.shape[1]
    padded = jnp.concatenate([history.astype(xs.dtype), xs], axis=1)  # positions 1 − k … T − 1
    positions = jnp.arange(length)
    if restart is None:
        start = jnp.full(xs.shape[:2], 1 - k)
    else:  # the position of the last restart at or before each step
        start = jax.lax.cummax(jnp.where(restart, positions, 1 - k), axis=1)
    taps = [
        jnp.where((positions - j >= start)[..., None], padded[:, k - 1 - j : k - 1 - j + length], 0)
        for j in range(k)
    ]
    oldest_first = taps[::-1]
    if design.input_window > 1:
        read = jnp.concatenate(oldest_first, axis=-1)
    else:
        weighted = zip(params["conv"]["w"], oldest_first, strict=True)
        read = sum(w_j * tap for w_j, tap in weighted) + params["conv"]["b"]
    ends = jnp.full(xs.shape[:1], length) if seq_lengths is None else seq_lengths
    held = ends[:, None] + jnp.arange(k - 1)  # padded indices of positions end − k + 1 … end − 1
    last_start = jnp.where(
        ends > 0, jnp.take_along_axis(start, jnp.maximum(ends - 1, 0)[:, None], 1)[:, 0], 1 - k
    )
    kept = (held - (k - 1) >= last_start[:, None])[..., None]
    return read, jnp.where(kept, jnp.take_along_axis(padded, held[..., None], axis=1), 0)


# ---------------------------------------------------------------------------------------------
# the input side, hoisted out of the time loop


def matmul(x: Array, kernel: Array, compute_dtype=None) -> Array:
    """x @ kernel, in ``compute_dtype`` (e.g. bfloat16) with a float32 result when given."""
    if compute_dtype is None:
        return x @ kernel
    return jnp.matmul(
        x.astype(compute_dtype), kernel.astype(compute_dtype), preferred_element_type=jnp.float32
    )


def split_gates(fused: Array, names: tuple[str, ...]) -> dict[str, Array]:
    """Split a fused (..., G·H) pre-activation back into its G named (..., H) parts."""
    if not names:
        return {}
    return dict(zip(names, jnp.split(fused, len(names), axis=-1), strict=True))


def _fused_matmul(
    x: Array, kernels: Mapping[str, Array], names: tuple[str, ...], compute_dtype=None
) -> dict:
    """x @ [K_1 | K_2 | ...] in one matmul, split back per name."""
    if not names:
        return {}
    return split_gates(
        matmul(x, jnp.concatenate([kernels[n] for n in names], axis=1), compute_dtype), names
    )


def input_projection(
    params: Params, design: GateDesign, x: Array, compute_dtype=None
) -> dict[str, Array]:
    """W x + b of every gate and the candidate, for any leading shape of x, in one matmul.

    A gate fed by neither x nor a bias is absent from the result (it contributes zero).
    """
    skip = ("skip",) if "skip" in params["W"] else ()
    pre = _fused_matmul(x, params["W"], input_fed(design) + skip, compute_dtype)
    for name, bias in params["b"].items():
        pre[name] = (
            pre[name] + bias if name in pre else jnp.broadcast_to(bias, x.shape[:-1] + bias.shape)
        )
    if design.output == "highway" and not skip:  # x̂ = x where the widths agree
        pre["skip"] = x
    return pre


# ---------------------------------------------------------------------------------------------
# gates


def _resolve(design: GateDesign, learned: Mapping, fixed: Callable, complement: Callable) -> dict:
    """Every gate from the learned ones: Fixed, Tied and Coupled gates resolved.

    ``fixed`` maps a constant to the gate's representation, ``complement`` a Coupled source
    and the gate it couples to the representation of 1 − gate (or of JANET's shifted form).
    """

    def value(name: str):
        source = design.gate(name)
        if isinstance(source, Gate):
            return learned[name]
        if isinstance(source, Fixed):
            return fixed(source.value)
        if isinstance(source, Tied):
            return value(source.gate)
        return complement(source, value(source.gate))

    return {name: value(name) for name, _ in design.gates}


def _gate_pre(pre: Mapping[str, Array], hp: Mapping[str, Array], name: str) -> Array | float:
    return pre.get(name, 0.0) + hp.get(name, 0.0)


def gate_values(
    design: GateDesign, pre: Mapping[str, Array], hp: Mapping = {}, lower_bound=None
) -> dict:
    """The value of every gate at a step: σ(W x + U h + b) of the learned ones (HGRN's forget
    gate γ + (1 − γ) σ(·) above its ``lower_bound`` γ), the fixed, tied and coupled ones
    resolved, and minLSTM's (``normalise``) i, f replaced by i / (i + f), f / (i + f). A fixed
    gate is its constant (a float)."""
    pre_act = {n: _gate_pre(pre, hp, n) for n, _ in design.learned_gates}
    learned = {n: jax.nn.sigmoid(v) for n, v in pre_act.items()}
    if lower_bound is not None:
        learned["f"] = lower_bound + (1.0 - lower_bound) * learned["f"]

    def complement(source: Coupled, g):  # 1 − σ(s − β) = σ(β − s)
        return jax.nn.sigmoid(source.shift - pre_act[source.gate]) if source.shift else 1.0 - g

    gates = _resolve(design, learned, float, complement)  # a fixed gate is its constant
    if design.normalise:
        i, f = gates["i"], gates["f"]
        gates |= {"i": i / (i + f), "f": f / (i + f)}
    return gates


def _log_pair(value: float) -> tuple[float, float]:
    def log(v: float) -> float:
        return math.log(v) if v > 0 else -math.inf

    return log(value), log(1.0 - value)


def log_gate_values(design: GateDesign, pre: Mapping[str, Array]) -> dict:
    """(log g, log(1 − g)) of every gate, stable in float32: log σ(k) = −softplus(−k)."""
    learned = {
        n: (jax.nn.log_sigmoid(pre.get(n, 0.0)), jax.nn.log_sigmoid(-pre.get(n, 0.0)))
        for n, _ in design.learned_gates
    }

    def complement(source: Coupled, pair):
        if not source.shift:
            return pair[::-1]
        shifted = pre.get(source.gate, 0.0) - source.shift
        return jax.nn.log_sigmoid(-shifted), jax.nn.log_sigmoid(shifted)

    return _resolve(design, learned, _log_pair, complement)


# ---------------------------------------------------------------------------------------------
# one recurrent step (designs that read the state)


class ExponentialCarry(NamedTuple):
    """The carry of an exponentially gated LSTM (Beck et al., 2024, sLSTM): the cell, its
    normaliser, the stabiliser of the exponential gates, and the output."""

    c: Array
    n: Array
    m: Array
    h: Array


def hidden_state(design: GateDesign, carry: Carry) -> Array:
    """The h of a carry: the carry itself (GRU family), or the last of (c, h) or (c, n, m, h)
    (LSTM family)."""
    return carry[-1] if design.family == "lstm" else carry


def fused_recurrent_kernel(params: Params, design: GateDesign) -> Array:
    """[U_1 | U_2 | ...] of :func:`state_fed`: the (H, G·H) kernel of the one matmul per step,
    or with k heads each head's [R_1 | R_2 | ...], (k, H/k, G·H/k)."""
    names = state_fed(design)
    if not names:  # only a reset-before candidate reads h: its matmul is in the update
        _, hidden = layer_sizes(params)
        return jnp.zeros((hidden, 0))
    if fused_heads(design) > 1:
        return jnp.concatenate([params["R"][n] for n in names], axis=2)
    return jnp.concatenate([params["U"][n] for n in names], axis=1)


def unfused_readers(design: GateDesign) -> tuple[str, ...]:
    """The gates and candidate that read h diagonally or by blocks outside the fused matmul:
    each reads it in the step itself (a reset-before GRU candidate reads r ⊙ h instead)."""
    fused = set(state_fed(design))
    local = _fusable(design, "diagonal") + _fusable(design, "block")
    return tuple(n for n in local if n not in fused)


def _batched_matmul(a: Array, b: Array, compute_dtype=None) -> Array:
    """a (k, N, ·) @ b (k, ·, ·), head by head, in ``compute_dtype`` with a float32 result."""
    if compute_dtype is None:
        return jnp.matmul(a, b)
    a, b = a.astype(compute_dtype), b.astype(compute_dtype)
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _heads_to_gates(v: Array, gates: int) -> Array:
    """(k, N, G·d) laid out head by head → (N, G·H) gate by gate, H = k·d."""
    heads, rows, width = v.shape
    v = v.reshape(heads, rows, gates, width // gates).transpose(1, 2, 0, 3)
    return v.reshape(rows, gates * heads * (width // gates))


def _gates_to_heads(v: Array, heads: int, gates: int) -> Array:
    """The inverse of :func:`_heads_to_gates`: (N, G·H) → (k, N, G·d)."""
    rows, width = v.shape
    size = width // (gates * heads)
    return v.reshape(rows, gates, heads, size).transpose(2, 0, 1, 3).reshape(heads, rows, -1)


def _head_major(h: Array, heads: int) -> Array:
    """(..., H) → (k, N, H/k), the leading axes flattened to N: the layout of XLA's fast
    batched matmul (an einsum over (N, k, ·) runs at half its speed on CPU)."""
    return jnp.swapaxes(h.reshape(-1, heads, h.shape[-1] // heads), 0, 1)


def state_matmul(h: Array, kernel: Array, compute_dtype=None) -> Array:
    """h (..., H) times a recurrent kernel: dense (H, G·H), or k block-diagonal heads
    (k, H/k, G·H/k), each head of h times its own blocks; (..., G·H), gate by gate."""
    if kernel.ndim == 2:
        return matmul(h, kernel, compute_dtype)
    heads, size, width = kernel.shape
    out = _batched_matmul(_head_major(h, heads), kernel, compute_dtype)
    return _heads_to_gates(out, width // size).reshape(h.shape[:-1] + (-1,))


def transposed_kernel(kernel: Array) -> Array:
    """What :func:`state_matmul_transposed` reads: the kernel's transpose (each head's, for
    blocks), formed once, outside a time loop."""
    return kernel.T if kernel.ndim == 2 else jnp.swapaxes(kernel, 1, 2)


def state_matmul_transposed(d: Array, kernel_t: Array, compute_dtype=None) -> Array:
    """d (..., G·H) times the transpose of the kernel of :func:`state_matmul`, given as
    :func:`transposed_kernel`: (..., H)."""
    if kernel_t.ndim == 2:
        return matmul(d, kernel_t, compute_dtype)
    heads, width, size = kernel_t.shape
    split = _gates_to_heads(d.reshape(-1, d.shape[-1]), heads, width // size)
    out = _batched_matmul(split, kernel_t, compute_dtype)  # (k, N, H/k)
    return jnp.swapaxes(out, 0, 1).reshape(d.shape[:-1] + (heads * size,))


def kernel_gradient(h_reads: Array, d_hps: Array, kernel: Array, compute_dtype=None) -> Array:
    """dL/dkernel = Σ_t h_tᵀ (dL/d(h_t kernel)) over all steps and sequences at once: one
    (H, T·B) × (T·B, G·H) matmul, or one per head for block-diagonal heads."""
    flat = lambda v: v.reshape(math.prod(v.shape[:-1]), v.shape[-1])  # noqa: E731 (G·H may be 0)
    if kernel.ndim == 2:
        return matmul(flat(h_reads).T, flat(d_hps), compute_dtype).astype(kernel.dtype)
    heads, size, width = kernel.shape
    h = jnp.swapaxes(_head_major(h_reads, heads), 1, 2)  # (k, H/k, N)
    d = _gates_to_heads(flat(d_hps), heads, width // size)  # (k, N, G·H/k)
    return _batched_matmul(h, d, compute_dtype).astype(kernel.dtype)


def state_term(
    params: Params, design: GateDesign, name: str, h: Array, compute_dtype=None
) -> Array:
    """How ``name`` reads the state ``h``: h U, u ⊙ h, or h times its block-diagonal kernel."""
    kind, _ = design.recurrence(name)
    if kind == "diagonal":
        return params["u"][name] * h
    return state_matmul(h, params[STATE_PARAMETERS[kind]][name], compute_dtype)


def read_state(design: GateDesign, carry: Carry, h_mask: Array | None = None) -> Array:
    """The h a step's matmuls read: the state, times the variational dropout mask if any."""
    h = hidden_state(design, carry)
    return h if h_mask is None else h * h_mask


def recurrent_step(
    params: Params,
    design: GateDesign,
    carry: Carry,
    pre: Mapping[str, Array],
    h_mask: Array | None = None,
    compute_dtype=None,
) -> tuple[Carry, Array]:
    """One time step given the hoisted input pre-activations ``pre`` of that step.

    The recurrent kernels of every gate that reads h (and of the reset-after candidate) are
    fused into one (H, G·H) matmul. ``h_mask`` is variational recurrent dropout (Gal &
    Ghahramani, 2016): the same mask multiplies h wherever a matmul reads it, at every step.
    """
    hp = state_matmul(
        read_state(design, carry, h_mask), fused_recurrent_kernel(params, design), compute_dtype
    )
    carry, _ = recurrent_update(params, design, carry, pre, hp, h_mask, compute_dtype)
    return carry, hidden_state(design, carry)


def recurrent_update(
    params: Params,
    design: GateDesign,
    carry: Carry,
    pre: Mapping[str, Array],
    hp: Array,
    h_mask: Array | None = None,
    compute_dtype=None,
    restart: Array | None = None,
) -> tuple[Carry, dict]:
    """The rest of a step once the fused recurrent matmul ``hp`` = h U (B, G·H) is known: the
    new carry, and the :func:`gate_values` the step used (``restart`` (B, 1): where the
    carry was just restarted, for the RG-LRU's input multiplier).

    Reads only the parameters of :func:`loop_parameters` (not W, b or the fused kernel), which
    is what lets :func:`gru_research.scan.state_reading_scan` form the gradient of the fused
    kernel outside the time loop.

    LSTM family: c' = f ⊙ c + i ⊙ φ(v_g), h' = o ⊙ ψ(c') (or the highway output), a peephole
    adding p ⊙ c (c_{t−1}, or c' for the output gate) to its gate's pre-activation. GRU family:
    h̃ = φ(v_h), with r applied before or after U_h; h' = a ⊙ h + w ⊙ h̃ with the weights of
    :func:`update_weights`. Designs that do not read h run it too (``hp`` of width 0).
    """
    h = hidden_state(design, carry)
    h_read = read_state(design, carry, h_mask)
    hp = _add_terms(
        split_gates(hp, state_fed(design)),
        {n: state_term(params, design, n, h_read, compute_dtype) for n in unfused_readers(design)},
    )
    cand = design.candidate_name
    phi = ACTIVATIONS[design.candidate.activation]
    if design.gating == "exponential":
        return exponential_update(design, carry, pre, hp)
    if design.family == "lstm":
        c, _ = carry
        hp = _add_terms(hp, {n: params["p"][n] * c for n in design.peepholes("previous")})
        gates = gate_values(design, pre, hp, params.get("lower_bound"))
        c_new = gates["f"] * c + gates["i"] * phi(_gate_pre(pre, hp, cand))
        gates |= {
            n: jax.nn.sigmoid(_gate_pre(pre, hp, n) + params["p"][n] * c_new)
            for n in design.peepholes("current")
        }
        return (c_new, cell_output(design, gates["o"], c_new, pre)), gates

    gates = gate_values(design, pre, hp)
    r = gates["r"]
    v = pre.get(cand, 0.0)
    if design.reads_h(cand) and design.reset == "before":
        v = v + state_term(params, design, cand, r * h_read, compute_dtype)
    elif design.reads_h(cand):
        v = v + r * (hp[cand] + params.get("c_h", 0.0))
    keep, write = update_weights(design, gates, params, restart)
    if design.update == "keep":  # (1 − z) ⊙ h̃ + z ⊙ h in this order: float32 sums as before
        return write * phi(v) + keep * h, gates
    return keep * h + write * phi(v), gates


def exponential_update(
    design: GateDesign, carry: ExponentialCarry, pre: Mapping[str, Array], hp: Mapping
) -> tuple[ExponentialCarry, dict]:
    """sLSTM's stabilised exponential gating (Beck et al., 2024), from the pre-activations
    ĩ, f̃ and those of o and the candidate: m' = max(ĩ, log σ(f̃) + m), i' = exp(ĩ − m'),
    f' = exp(log σ(f̃) + m − m'), c' = f' ⊙ c + i' ⊙ φ(v_g), n' = f' ⊙ n + i',
    h' = o ⊙ ψ(c' / n'). The gates returned are i', f' and o."""
    c, n, m, _ = carry
    i_pre, log_f = _gate_pre(pre, hp, "i"), jax.nn.log_sigmoid(_gate_pre(pre, hp, "f"))
    m_new = jnp.maximum(i_pre, log_f + m)
    i, f = jnp.exp(i_pre - m_new), jnp.exp(log_f + m - m_new)
    c_new = f * c + i * ACTIVATIONS[design.candidate.activation](_gate_pre(pre, hp, "g"))
    n_new = f * n + i
    o = gate_values(design, pre, hp)["o"]
    h = o * _output_activation(design, c_new / n_new)
    return ExponentialCarry(c_new, n_new, m_new, h), {"i": i, "f": f, "o": o}


def update_weights(
    design: GateDesign, gates: Mapping, params: Params, restart: Array | None = None
) -> tuple:
    """(a, w) of the GRU family's h' = a ⊙ h + w ⊙ h̃: (z, 1 − z) where z keeps, (1 − z, z)
    where it writes, (1 − 2z, z) for the signed decay (Grazzi et al., 2024), and the RG-LRU's
    (a, √(1 − a²) ⊙ z) with log a = −8 r ⊙ softplus(−Λ) (De et al., 2024), whose multiplier
    is 1 at a ``restart`` step (as recurrentgemma)."""
    z = gates["z"]
    if design.update == "keep":
        return z, 1.0 - z
    if design.update == "write":
        return 1.0 - z, z
    if design.update == "signed":
        return 1.0 - 2.0 * z, z
    log_a = -8.0 * gates["r"] * jax.nn.softplus(-params["decay"])
    multiplier = jnp.sqrt(1.0 - jnp.exp(2.0 * log_a))
    if restart is not None:
        multiplier = jnp.where(restart > 0, 1.0, multiplier)
    return jnp.exp(log_a), multiplier * z


def _add_terms(terms: dict, more: Mapping[str, Array]) -> dict:
    """Pre-activation terms by name, ``more`` added (a name new to ``terms`` taken as is)."""
    return terms | {n: terms[n] + v if n in terms else v for n, v in more.items()}


def cell_output(design: GateDesign, o: Array | float, c: Array, pre: Mapping[str, Array]):
    """The LSTM family's h from its cell c: o ⊙ ψ(c), or SRU's highway
    o ⊙ ψ(c) + (1 − o) ⊙ √3 · x̂ (Lei et al., 2018; x̂ the input, or W_skip x)."""
    h = o * _output_activation(design, c)
    if design.output == "highway":
        h = h + (1.0 - o) * math.sqrt(3.0) * pre["skip"]
    return h


def _output_activation(design: GateDesign, c: Array) -> Array:
    return jnp.tanh(c) if design.output_activation == "tanh" else c


# ---------------------------------------------------------------------------------------------
# the linear recurrence h_t = a_t ⊙ h_{t−1} + b_t (designs that do not read the state)


def recurrence_coefficients(
    design: GateDesign, pre: Mapping[str, Array], params: Params, restart: Array | None = None
) -> tuple[Array, Array]:
    """(a, b) of h_t = a_t h_{t−1} + b_t (the cell c_t for the LSTM family), linear space;
    ``restart`` marks the steps whose state was restarted (see :func:`update_weights`)."""
    gates = gate_values(design, pre, lower_bound=params.get("lower_bound"))
    candidate = ACTIVATIONS[design.candidate.activation](pre[design.candidate_name])
    if design.family == "lstm":
        return _full(gates["f"], candidate), gates["i"] * candidate
    keep, write = update_weights(design, gates, params, restart)
    return _full(keep, candidate), write * candidate


def log_recurrence_coefficients(
    design: GateDesign, pre: Mapping[str, Array]
) -> tuple[Array, Array]:
    """(log a, log b) for the log-space scan; needs a positive candidate (φ = g).

    minLSTM's normalisation in log space (Feng et al., 2024): d = log i − log f,
    log f' = −softplus(d), log i' = −softplus(−d).
    """
    gates = log_gate_values(design, pre)
    log_candidate = log_positive_g(pre[design.candidate_name])
    if design.family == "lstm":
        log_i, log_f = gates["i"][0], gates["f"][0]
        if design.normalise:
            d = log_i - log_f
            log_f, log_i = -jax.nn.softplus(d), -jax.nn.softplus(-d)
        return _full(log_f, log_candidate), log_i + log_candidate
    log_z, log_1mz = gates["z"]
    log_keep, log_write = (log_z, log_1mz) if design.update == "keep" else (log_1mz, log_z)
    return _full(log_keep, log_candidate), log_write + log_candidate


def _full(a: Array | float, like: Array) -> Array:
    return jnp.broadcast_to(jnp.asarray(a, like.dtype), like.shape)


def output_from_states(design: GateDesign, states: Array, pre: Mapping[str, Array]) -> Array:
    """The layer output from the scanned states: h itself, or o ⊙ ψ(c) for the LSTM family."""
    if design.family == "gru":
        return states
    return cell_output(design, gate_values(design, pre)["o"], states, pre)


# ---------------------------------------------------------------------------------------------
# the Flax cell contract


def zero_carry(
    design: GateDesign, batch_shape: tuple[int, ...], hidden_size: int, input_size: int = 0
) -> Carry:
    """Zeros: h, or (c, h), and the zero inputs of an input history (``input_size`` wide)."""
    h = jnp.zeros(batch_shape + (hidden_size,))
    inputs = jnp.zeros(batch_shape + (design.input_history, input_size))
    if design.gating == "exponential":
        return join_carry(design, ExponentialCarry(h, h, h, h), inputs)
    return join_carry(design, (h, h) if design.family == "lstm" else h, inputs)


def initial_carry(params: Params, design: GateDesign, batch_shape: tuple[int, ...]) -> Carry:
    """The carry a fresh sequence starts from: the learned h_0 (and c_0), else zeros; no
    inputs yet in an input history."""
    _, hidden = layer_sizes(params)
    width = history_input_size(params, design) if design.input_history else 0
    if "h0" not in params:
        return zero_carry(design, batch_shape, hidden, width)
    h = jnp.broadcast_to(params["h0"], batch_shape + (hidden,))
    state = (jnp.broadcast_to(params["c0"], h.shape), h) if design.family == "lstm" else h
    return join_carry(design, state, jnp.zeros(batch_shape + (design.input_history, width)))


def cell_apply(params: Params, design: GateDesign, carry: Carry, x: Array) -> tuple[Carry, Array]:
    """``(carry, x_t) -> (carry, y_t)`` for one step on raw inputs (the Flax cell contract)."""
    state, history = split_carry(design, carry)
    if history is not None:
        read, history = inputs_over_time(params, design, x[..., None, :], history)
        x = read[..., 0, :]
    state, y = step_from_projection(params, design, state, input_projection(params, design, x))
    return join_carry(design, state, history), y


def step_from_projection(
    params: Params, design: GateDesign, carry: Carry, pre: Mapping[str, Array]
) -> tuple[Carry, Array]:
    """One step of any design from its hoisted input pre-activations ``pre`` (no scan)."""
    if design.reads_state:
        return recurrent_step(params, design, carry, pre)
    a, b = recurrence_coefficients(design, pre, params)
    if design.family == "lstm":
        c = a * carry[0] + b
        h = output_from_states(design, c, pre)
        return (c, h), h
    h = a * carry + b
    return h, h
