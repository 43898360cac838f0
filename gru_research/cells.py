"""The cell math of both families, driven by a :class:`~gru_research.gates.GateDesign`.

A layer's parameters are a plain pytree::

    {"W": {gate: (I, H)},   input kernels of the gates and candidate fed by x
     "U": {gate: (H, H)},   recurrent kernels of those fed by h
     "b": {gate: (H,)},     input-side biases (one per gate, as Flax)
     "c_h": (H,)}           the candidate's recurrent bias, reset-after GRUs only

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
from typing import Any

import jax
import jax.numpy as jnp

from gru_research.gates import Fixed, Gate, GateDesign, Tied

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
}


# ---------------------------------------------------------------------------------------------
# parameters


def _recurrent_kernel(design: GateDesign, key: Array, hidden_size: int) -> Array:
    if design.recurrent_init == "identity":
        return jnp.eye(hidden_size)
    if design.recurrent_init == "orthogonal":
        return jax.nn.initializers.orthogonal()(key, (hidden_size, hidden_size))
    return jax.nn.initializers.lecun_normal()(key, (hidden_size, hidden_size))


def input_fed(design: GateDesign) -> tuple[str, ...]:
    """The gates and candidate fed by x, in the order of the fused input kernel."""
    gates = tuple(n for n, s in design.learned_gates if s.x)
    return gates + ((design.candidate_name,) if design.candidate.x else ())


def state_fed(design: GateDesign) -> tuple[str, ...]:
    """The gates and candidate whose U h is part of the one fused recurrent matmul per step.

    A candidate that resets *before* its matmul needs r first, so it gets a second matmul.
    """
    gates = tuple(n for n, s in design.learned_gates if s.h)
    fused_candidate = design.candidate.h and not (
        design.family == "gru" and design.reset == "before"
    )
    return gates + ((design.candidate_name,) if fused_candidate else ())


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
    with_h = tuple(n for n, s in design.learned_gates if s.h) + (
        (cand,) if design.candidate.h else ()
    )
    keys = jax.random.split(key, len(with_x) + len(with_h))
    lecun = jax.nn.initializers.lecun_normal()
    params: Params = {
        "W": {n: lecun(k, (input_size, hidden_size)) for n, k in zip(with_x, keys, strict=False)},
        "U": {
            n: _recurrent_kernel(design, k, hidden_size)
            for n, k in zip(with_h, keys[len(with_x) :], strict=True)
        },
        "b": {n: jnp.full((hidden_size,), s.bias_init) for n, s in design.learned_gates if s.bias},
    }
    params["b"][cand] = jnp.zeros((hidden_size,))
    if design.has_recurrent_bias:
        params["c_h"] = jnp.zeros((hidden_size,))
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
    pre = _fused_matmul(x, params["W"], input_fed(design), compute_dtype)
    for name, bias in params["b"].items():
        pre[name] = (
            pre[name] + bias if name in pre else jnp.broadcast_to(bias, x.shape[:-1] + bias.shape)
        )
    return pre


# ---------------------------------------------------------------------------------------------
# gates


def _resolve(design: GateDesign, learned: Mapping, fixed: Callable, complement: Callable) -> dict:
    """Every gate from the learned ones: Fixed, Tied and Coupled gates resolved.

    ``fixed`` maps a constant to the gate's representation, ``complement`` a gate to 1 − gate.
    """

    def value(name: str):
        source = design.gate(name)
        if isinstance(source, Gate):
            return learned[name]
        if isinstance(source, Fixed):
            return fixed(source.value)
        if isinstance(source, Tied):
            return value(source.gate)
        return complement(value(source.gate))

    return {name: value(name) for name, _ in design.gates}


def _gate_pre(pre: Mapping[str, Array], hp: Mapping[str, Array], name: str) -> Array | float:
    return pre.get(name, 0.0) + hp.get(name, 0.0)


def gate_values(design: GateDesign, pre: Mapping[str, Array], hp: Mapping = {}) -> dict:
    """The value of every gate at a step: σ(W x + U h + b) of the learned ones, the fixed,
    tied and coupled ones resolved, and minLSTM's (``normalise``) i, f replaced by
    i / (i + f), f / (i + f). A fixed gate is its constant (a float)."""
    learned = {n: jax.nn.sigmoid(_gate_pre(pre, hp, n)) for n, _ in design.learned_gates}
    gates = _resolve(design, learned, lambda v: v, lambda g: 1.0 - g)
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
    return _resolve(design, learned, _log_pair, lambda pair: pair[::-1])


# ---------------------------------------------------------------------------------------------
# one recurrent step (designs that read the state)


def hidden_state(design: GateDesign, carry: Carry) -> Array:
    """The h of a carry: the carry itself (GRU family), or the second of (c, h) (LSTM)."""
    return carry[1] if design.family == "lstm" else carry


def fused_recurrent_kernel(params: Params, design: GateDesign) -> Array:
    """[U_1 | U_2 | ...] of :func:`state_fed`: the (H, G·H) kernel of the one matmul per step."""
    names = state_fed(design)
    if not names:  # only a reset-before candidate reads h: its matmul is in the update
        _, hidden = layer_sizes(params)
        return jnp.zeros((hidden, 0))
    return jnp.concatenate([params["U"][n] for n in names], axis=1)


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
    hp = matmul(
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
) -> tuple[Carry, dict]:
    """The rest of a step once the fused recurrent matmul ``hp`` = h U (B, G·H) is known: the
    new carry, and the :func:`gate_values` the step used.

    Reads only the non-fused parameters (``c_h``, and ``U[candidate]`` of a reset-before GRU),
    which is what lets :func:`gru_research.scan.state_reading_scan` form the gradient of the
    fused kernel outside the time loop.

    LSTM family: c' = f ⊙ c + i ⊙ φ(v_g), h' = o ⊙ ψ(c'). GRU family: h̃ = φ(v_h), with r
    applied before or after U_h; h' = (1 − z) ⊙ h̃ + z ⊙ h (``keep``) or
    (1 − z) ⊙ h + z ⊙ h̃ (``write``). Designs that do not read h run it too (``hp`` of width 0).
    """
    h = hidden_state(design, carry)
    hp = split_gates(hp, state_fed(design))
    gates = gate_values(design, pre, hp)
    cand = design.candidate_name
    phi = ACTIVATIONS[design.candidate.activation]
    if design.family == "lstm":
        c, _ = carry
        c_new = gates["f"] * c + gates["i"] * phi(_gate_pre(pre, hp, cand))
        return (c_new, gates["o"] * _output_activation(design, c_new)), gates

    z, r = gates["z"], gates["r"]
    v = pre.get(cand, 0.0)
    if design.candidate.h and design.reset == "before":
        v = v + matmul(r * read_state(design, carry, h_mask), params["U"][cand], compute_dtype)
    elif design.candidate.h:
        v = v + r * (hp[cand] + params.get("c_h", 0.0))
    h_tilde = phi(v)
    h_new = (1.0 - z) * h_tilde + z * h if design.update == "keep" else (1.0 - z) * h + z * h_tilde
    return h_new, gates


def _output_activation(design: GateDesign, c: Array) -> Array:
    return jnp.tanh(c) if design.output_activation == "tanh" else c


# ---------------------------------------------------------------------------------------------
# the linear recurrence h_t = a_t ⊙ h_{t−1} + b_t (designs that do not read the state)


def recurrence_coefficients(design: GateDesign, pre: Mapping[str, Array]) -> tuple[Array, Array]:
    """(a, b) of h_t = a_t h_{t−1} + b_t (the cell c_t for the LSTM family), linear space."""
    gates = gate_values(design, pre)
    candidate = ACTIVATIONS[design.candidate.activation](pre[design.candidate_name])
    if design.family == "lstm":
        return _full(gates["f"], candidate), gates["i"] * candidate
    z = gates["z"]
    keep, write = (z, 1.0 - z) if design.update == "keep" else (1.0 - z, z)
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
    return gate_values(design, pre)["o"] * _output_activation(design, states)


# ---------------------------------------------------------------------------------------------
# the Flax cell contract


def zero_carry(design: GateDesign, batch_shape: tuple[int, ...], hidden_size: int) -> Carry:
    h = jnp.zeros(batch_shape + (hidden_size,))
    return (h, h) if design.family == "lstm" else h


def initial_carry(params: Params, design: GateDesign, batch_shape: tuple[int, ...]) -> Carry:
    """The state a fresh sequence starts from: the learned h_0 (and c_0), else zeros."""
    _, hidden = layer_sizes(params)
    if "h0" not in params:
        return zero_carry(design, batch_shape, hidden)
    h = jnp.broadcast_to(params["h0"], batch_shape + (hidden,))
    return (jnp.broadcast_to(params["c0"], h.shape), h) if design.family == "lstm" else h


def cell_apply(params: Params, design: GateDesign, carry: Carry, x: Array) -> tuple[Carry, Array]:
    """``(carry, x_t) -> (carry, y_t)`` for one step on raw inputs (the Flax cell contract)."""
    return step_from_projection(params, design, carry, input_projection(params, design, x))


def step_from_projection(
    params: Params, design: GateDesign, carry: Carry, pre: Mapping[str, Array]
) -> tuple[Carry, Array]:
    """One step of any design from its hoisted input pre-activations ``pre`` (no scan)."""
    if design.reads_state:
        return recurrent_step(params, design, carry, pre)
    a, b = recurrence_coefficients(design, pre)
    if design.family == "lstm":
        c = a * carry[0] + b
        h = output_from_states(design, c, pre)
        return (c, h), h
    h = a * carry + b
    return h, h
