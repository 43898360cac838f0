"""Running a layer over a whole sequence: sequential ``lax.scan`` or parallel associative scan.

``run_layer`` hoists the input projection of the whole sequence into one matmul, then scans
time-major over the recurrent part only (docs/design.md §3). Designs that read the previous
state run :func:`state_reading_scan`: one fused (H, G·H) matmul per step, and a custom
gradient that forms the recurrent kernel's gradient after the loop as one matmul
(docs/design.md §4). Designs that never read the previous state are a linear recurrence
h_t = a_t ⊙ h_{t−1} + b_t, which either scan can run:

* ``"sequential"``: ``lax.scan`` over (a_t, b_t), or over the full step for the other designs;
* ``"parallel"``: ``lax.associative_scan``, in linear space, or in log space for a positive
  candidate (minGRU, minLSTM). There a, b > 0 but the state may have any sign (a learned or a
  carried-in one), and h_t is linear in the state s_t set at the latest restart r_t ≤ t (the
  carried-in state before any restart, the initial state after one)::

      h_t = h_t(0) + P_t ⊙ s_t,    log P_t = Σ_{k = r_t}^{t} log a_k,

  with h_t(0) the log-space scan from a zero state, combine
  (A1, B1) ∘ (A2, B2) = (A1 + A2, logaddexp(B1 + A2, B2)) (which handles log a = −∞), and
  log P_t a segmented cumulative sum;
* ``"auto"``: parallel only where it was measured to pay, off the CPU (on a 2-core CPU the
  associative scan ran at 0.3–0.5× ``lax.scan`` at T = 4096).

Two hooks read a layer's internals for analysis: ``carry_offsets``, added to the carry after
every step, so that the gradient with respect to zero offsets is dL/dcarry_t at every t in one
backward pass; and ``trace``, every step's gate values and carry (:class:`LayerTrace`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from gru_research.cells import (
    Carry,
    ExponentialCarry,
    Params,
    fused_recurrent_kernel,
    hidden_state,
    initial_carry,
    input_projection,
    inputs_over_time,
    join_carry,
    kernel_gradient,
    layer_sizes,
    log_recurrence_coefficients,
    loop_parameters,
    output_from_states,
    read_state,
    recurrence_coefficients,
    recurrent_update,
    split_carry,
    state_matmul,
    state_matmul_transposed,
    transposed_kernel,
)
from gru_research.config import SCAN_KINDS
from gru_research.gates import GateDesign

Array = jax.Array
ScanKind = Literal["auto", "sequential", "parallel"]


class LayerTrace(NamedTuple):
    """What a layer computed at every step, as batch-major (B, T, H) leaves.

    * ``gates``: every gate of the design by name (z, r or i, f, o), the value the step used:
      Fixed (broadcast to its constant), Tied and Coupled resolved, minLSTM's i, f normalised.
      Steps past a sequence's length are computed and discarded; their gates mean nothing.
    * ``carries``: the carry after every step (held through padding), carry-shaped.
    """

    gates: dict[str, Array]
    carries: Carry


def resolve_scan(design: GateDesign, scan: ScanKind) -> Literal["sequential", "parallel"]:
    """The scan a design runs with: ``auto`` goes parallel only off the CPU."""
    if scan not in SCAN_KINDS:
        raise ValueError(f"unknown scan {scan!r}; valid scans: {', '.join(SCAN_KINDS)}")
    if scan == "parallel" and design.parallel_scan is None:
        raise ValueError(
            f"design {design.name!r} reads its previous state: only the sequential scan runs it"
        )
    if scan == "auto":
        parallel = design.parallel_scan is not None and jax.default_backend() != "cpu"
        return "parallel" if parallel else "sequential"
    return scan


def linear_scan_sequential(a: Array, b: Array, h0: Array) -> Array:
    """h_t = a_t h_{t−1} + b_t by ``lax.scan`` over the leading (time) axis; all h_t."""

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    return jax.lax.scan(step, h0, (a, b))[1]


def linear_scan_parallel(a: Array, b: Array, h0: Array) -> Array:
    """The same recurrence by ``lax.associative_scan`` in linear space."""
    b = b.at[0].add(a[0] * h0)

    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    return jax.lax.associative_scan(combine, (a, b))[1]


def log_scan_parallel(log_a: Array, log_b: Array) -> Array:
    """h_t = a_t h_{t−1} + b_t from h_{−1} = 0 for a, b ≥ 0, scanned over (log a, log b)."""

    def combine(left, right):
        return left[0] + right[0], jnp.logaddexp(left[1] + right[0], right[1])

    return jnp.exp(jax.lax.associative_scan(combine, (log_a, log_b))[1])


def segmented_cumsum(values: Array, starts: Array) -> Array:
    """Σ_{k = r_t}^{t} values_k over the leading axis, r_t the latest start ≤ t (0 if none)."""

    def combine(left, right):
        return left[0] | right[0], jnp.where(right[0], right[1], left[1] + right[1])

    return jax.lax.associative_scan(combine, (jnp.broadcast_to(starts, values.shape), values))[1]


def linear_states(
    a: Array,
    b: Array,
    state0: Array,
    fresh: Array,
    valid: Array,
    restart: Array,
    parallel: bool,
) -> Array:
    """All h_t of h_t = a_t h_{t−1} + b_t from h_{−1} = ``state0``, time-major (T, B, H).

    The state restarts to ``fresh`` before a ``restart`` step (a = 0, b ← b + a ⊙ fresh) and is
    held through padding (a = 1, b = 0); ``valid`` and ``restart`` are of :func:`step_masks`.
    """
    b = jnp.where(restart, b + a * fresh, b)
    a = jnp.where(restart, 0.0, a)
    a, b = jnp.where(valid, a, 1.0), jnp.where(valid, b, 0.0)
    run = linear_scan_parallel if parallel else linear_scan_sequential
    return run(a, b, state0)


def log_space_states(
    log_a: Array, log_b: Array, state0: Array, fresh: Array, valid: Array, restart: Array
) -> Array:
    """:func:`linear_states` by the log-space parallel scan, for a, b > 0 and any real state.

    h_t = h_t(0) + P_t ⊙ s_t: h_t(0) from a zero state (restarts to zero: log a = −∞), P_t the
    product of a since the latest restart (inclusive), s_t ``state0`` before any restart and
    ``fresh`` after one. Padding steps have log a = 0 and log b = −∞ (a = 1, b = 0).
    """
    restart = restart & valid
    log_a = jnp.where(valid, log_a, 0.0)
    from_zero = log_scan_parallel(
        jnp.where(restart, -jnp.inf, log_a), jnp.where(valid, log_b, -jnp.inf)
    )
    decay = jnp.exp(segmented_cumsum(log_a, restart))
    start = jnp.where(jnp.cumsum(restart, axis=0) > 0, fresh, state0)
    return from_zero + decay * start


def step_masks(
    batch: int, length: int, seq_lengths: Array | None, resets: Array | None
) -> tuple[Array, Array]:
    """Time-major (T, B, 1) masks: which steps are real, and where the state restarts."""
    steps = jnp.arange(length)[:, None]
    valid = jnp.ones((length, batch), bool) if seq_lengths is None else steps < seq_lengths
    restart = jnp.zeros((length, batch), bool) if resets is None else jnp.swapaxes(resets, 0, 1)
    return valid[..., None], restart.astype(bool)[..., None]


def _where(mask: Array, new, old):
    return jax.tree.map(lambda n, o: jnp.where(mask, n, o), new, old)


def run_layer(
    params: Params,
    design: GateDesign,
    xs: Array,
    carry: Carry | None = None,
    *,
    scan: ScanKind = "auto",
    seq_lengths: Array | None = None,
    resets: Array | None = None,
    h_mask: Array | None = None,
    compute_dtype=None,
    remat: bool = False,
    carry_offsets: Carry | None = None,
    trace: bool = False,
) -> tuple[Array, Carry] | tuple[Array, Carry, LayerTrace]:
    """Run one layer over batch-major inputs ``xs`` (B, T, I); returns (outputs (B, T, H), carry).

    * ``carry``: h (GRU family), (c, h) (LSTM family) or (c, n, m, h) (exponential gating)
      to start from, of any sign; the learned
      initial state (``learn_initial_state``) or zeros when omitted. The returned carry is the
      one after each sequence's last real step.
    * ``seq_lengths`` (B,): right-padded sequences; outputs at padded steps are zero and the
      state is held through them (in the parallel scan: a = 1, b = 0 there).
    * ``resets`` (B, T) booleans: the state restarts (to the initial state) before that step,
      as at the start of a packed document or an episode (in the parallel scan: a zeroed
      decay, a = 0). Without a ``carry``, step 0 counts as a restart for the RG-LRU, whose
      input multiplier is 1 there (recurrentgemma's segment position 0).
    * ``h_mask`` (B, H): variational recurrent dropout, one mask for the whole sequence.
    * ``compute_dtype``: e.g. ``jnp.bfloat16`` for the matmuls, accumulated in float32; the
      state and the element-wise gate arithmetic stay float32.
    * ``remat``: keep only the state per step for the backward pass and recompute the rest
      (:func:`state_reading_scan`; the linear-recurrence designs keep their (a, b) anyway).
    * ``carry_offsets``: a carry-shaped tree of (B, T, H) arrays added to the carry after every
      step, carry_t ← step(carry_{t−1}, x_t) + offset_t (y_t = h_t includes the h offset);
      ignored at padded steps. With zeros, ``jax.grad`` with respect to them is dL/dcarry_t
      for every t. In a linear recurrence the state offset adds to b_t, which may then be
      negative: the log-space designs scan in linear space.
    * ``trace``: also return a :class:`LayerTrace` of every step (a plain ``lax.scan``).

    A design with an input window or a short convolution carries ``(state, inputs)``, its last
    inputs beside the state (:func:`~gru_research.cells.inputs_over_time`); offsets and the
    trace are the state's.
    """
    batch, length = xs.shape[:2]
    if carry is None and design.update == "rg_lru":  # a fresh start is a restart at step 0
        first = jnp.zeros((batch, length), bool).at[:, 0].set(True)
        resets = first if resets is None else resets | first
    fresh_state, fresh_history = split_carry(design, initial_carry(params, design, (batch,)))
    state, history = (fresh_state, fresh_history) if carry is None else split_carry(design, carry)
    if design.gating == "exponential":  # a plain (c, n, m, h) tuple given by the caller
        state = ExponentialCarry(*state)
    if design.input_history:
        xs, history = inputs_over_time(params, design, xs, history, resets, seq_lengths)
    out = _run_state(
        params, design, xs, state, fresh_state, resolve_scan(design, scan),
        seq_lengths, resets, h_mask, compute_dtype, remat, carry_offsets, trace,
    )  # fmt: skip
    return (out[0], join_carry(design, out[1], history), *out[2:])


def _run_state(
    params, design, xs, carry, fresh, kind, seq_lengths, resets, h_mask, compute_dtype, remat,
    carry_offsets, trace,
):  # fmt: skip
    """:func:`run_layer` on the inputs the gates read, from the recurrent state ``carry``."""
    batch, length = xs.shape[:2]
    valid, restart = step_masks(batch, length, seq_lengths, resets)
    offsets = None if carry_offsets is None else jax.tree.map(_swap_time, carry_offsets)
    xs = jnp.swapaxes(xs, 0, 1)  # time-major: one transpose of x, not one per gate of W x
    if design.reads_state or trace:
        project = design.reads_state and not trace and projects_in_loop(params)
        out = state_reading_scan(
            params,
            design,
            carry,
            fresh,
            xs if project else input_projection(params, design, xs, compute_dtype),
            None if seq_lengths is None else valid,
            None if resets is None else restart,
            h_mask,
            compute_dtype,
            remat,
            offsets,
            trace,
            project,
        )
        if not trace:
            return _swap_time(out[0]), out[1]
        ys, last, steps = out
        return _swap_time(ys), last, jax.tree.map(_swap_time, steps)
    pre = input_projection(params, design, xs, compute_dtype)

    lstm = design.family == "lstm"
    state0, fresh_state = (carry[0], fresh[0]) if lstm else (carry, fresh)
    state_offset = h_offset = None
    if offsets is not None:
        state_offset, h_offset = offsets if lstm else (offsets, None)
    if kind == "parallel" and design.parallel_scan == "log" and offsets is None:
        log_a, log_b = log_recurrence_coefficients(design, pre)
        states = log_space_states(log_a, log_b, state0, fresh_state, valid, restart)
    else:
        a, b = recurrence_coefficients(design, pre, params, restart)
        b = b if state_offset is None else b + state_offset
        states = linear_states(a, b, state0, fresh_state, valid, restart, kind == "parallel")
    if h_offset is None:
        ys = output_from_states(design, states, pre)
    else:  # h_t = o_t ⊙ ψ(c_t) of the step's own c_t, then the offsets are added to both
        ys = output_from_states(design, states - state_offset, pre) + h_offset
    last = length - 1 if seq_lengths is None else jnp.maximum(seq_lengths - 1, 0)
    take_last = lambda v: v[last, jnp.arange(batch)] if seq_lengths is not None else v[-1]  # noqa: E731
    if seq_lengths is not None:  # a sequence of length 0 keeps the carry it was given
        empty = (seq_lengths == 0)[:, None]
        final_state = jnp.where(empty, state0, take_last(states))
        final_h = jnp.where(empty, carry[1], take_last(ys)) if lstm else final_state
    else:
        final_state, final_h = states[-1], ys[-1]
    ys = jnp.where(valid, ys, 0.0)
    return _swap_time(ys), ((final_state, final_h) if lstm else final_state)


def projects_in_loop(params: Params) -> bool:
    """Whether a state-reading layer computes W x_t + b inside its time loop rather than
    hoisted over the whole sequence: for inputs at most a quarter as wide as the state, where
    the per-step matmul adds at most a quarter to the recurrent one.

    On XLA's CPU backend a step that reads a time slice of a hoisted (T, B, G·H) array runs
    its gate arithmetic about 2× slower than one that reads the output of a matmul (measured
    at B = 50, H = 128: docs/design.md §4), so a narrow input is cheaper to project per step.
    """
    inputs, hidden = layer_sizes(params)
    return 0 < 4 * inputs <= hidden


def _swap_time(v: Array) -> Array:
    """(B, T, ...) ↔ (T, B, ...)."""
    return jnp.swapaxes(v, 0, 1)


def state_reading_scan(
    params: Params,
    design: GateDesign,
    carry: Carry,
    fresh: Carry,
    pre: dict[str, Array] | Array,
    valid: Array | None = None,
    restart: Array | None = None,
    h_mask: Array | None = None,
    compute_dtype=None,
    remat: bool = False,
    offsets: Carry | None = None,
    trace: bool = False,
    project: bool = False,
) -> tuple[Array, Carry] | tuple[Array, Carry, LayerTrace]:
    """The time loop of a design that reads its state, over time-major ``pre`` (T, B, ·).

    Forward, one ``lax.scan`` whose step is one fused matmul h U (B, H) × (H, G·H) and the
    element-wise update; with ``project``, ``pre`` is the raw input x (T, B, I) and each step
    computes its own W x_t + b (:func:`projects_in_loop`). Backward (a ``jax.custom_vjp``, as
    cuDNN does it): the gradient of U is formed after the loop as *one* (H, T·B) × (T·B, G·H)
    matmul instead of T small ones accumulated in it, while the small W and b of a projection
    inside the loop accumulate their gradients there (docs/design.md §4). Equal to JAX's own
    gradient of the plain scan (tests/test_fast_paths.py). ``valid`` and ``restart`` are the
    (T, B, 1) masks of :func:`step_masks`, None when there are none; ``offsets`` (time-major)
    are inputs of the loop like ``pre``, so the custom backward differentiates them too.
    ``trace`` runs the plain scan (JAX's own gradient) and also returns a time-major
    :class:`LayerTrace`; it runs any design (one that does not read h has a fused kernel of
    width 0).
    """
    others = loop_parameters(params, design)
    projection = {"W": params["W"], "b": params["b"]} if project else None
    consts = {"params": others, "fresh": fresh, "h_mask": h_mask, "projection": projection}
    as_float = lambda mask: None if mask is None else mask.astype(jnp.float32)  # noqa: E731
    xs = (pre, as_float(valid), as_float(restart), offsets)

    def restarted(consts, c, restart_t):
        return c if restart_t is None else _where(restart_t > 0, consts["fresh"], c)

    def read(consts, c, x):
        return read_state(design, restarted(consts, c, x[2]), consts["h_mask"])

    def pre_of(consts, x):
        """W x_t + b of this step: projected here, or read from the hoisted projection."""
        if consts["projection"] is None:
            return x[0]
        return input_projection(consts["projection"], design, x[0], compute_dtype)

    def step(consts, c, hp, pre_t, x):
        _, valid_t, restart_t, offset_t = x
        c_new, gates = recurrent_update(
            consts["params"],
            design,
            restarted(consts, c, restart_t),
            pre_t,
            hp,
            consts["h_mask"],
            compute_dtype,
            restart_t,
        )
        if offset_t is not None:
            c_new = jax.tree.map(jnp.add, c_new, offset_t)
        y = hidden_state(design, c_new)
        if valid_t is not None:
            c_new, y = _where(valid_t > 0, c_new, c), jnp.where(valid_t > 0, y, 0.0)
        if not trace:
            return c_new, y
        full = {n: jnp.broadcast_to(jnp.asarray(g, y.dtype), y.shape) for n, g in gates.items()}
        return c_new, (y, full, c_new)

    plain_read = h_mask is None and restart is None
    loop = Loop(
        pre_of, step, read, compute_dtype, partial(hidden_state, design) if plain_read else None
    )
    kernel = fused_recurrent_kernel(params, design)
    if trace:
        (last, (ys, gates, carries)), _ = _plain_scan(
            loop, kernel, consts, carry, xs, lambda c, hp: None
        )
        return ys, last, LayerTrace(gates, carries)
    last, ys = _fused_kernel_grad_scan(loop, remat, kernel, consts, carry, xs)
    return ys, last


class Loop(NamedTuple):
    """The functions of a state-reading layer's time loop (static: they close over the design).

    * ``pre_of(consts, x)``: the step's input pre-activations W x_t + b;
    * ``step(consts, c, hp, pre, x)``: the new carry and the output, given hp = h U;
    * ``read(consts, c, x)``: the h the recurrent matmul reads (restarts and dropout applied);
    * ``plain_read(c)``: the same h from the carry alone, where no restart or dropout applies
      (None otherwise), so the backward pass reads it from the stored carries.
    """

    pre_of: Callable
    step: Callable
    read: Callable
    compute_dtype: Any
    plain_read: Callable | None = None


def _plain_scan(loop: Loop, kernel, consts, carry, xs, keep):
    """The forward loop; ``keep(c, hp)`` picks what each step stores besides its output."""

    def body(c, x):
        hp = state_matmul(loop.read(consts, c, x), kernel, loop.compute_dtype)
        new, y = loop.step(consts, c, hp, loop.pre_of(consts, x), x)
        return new, (y, keep(c, hp))

    last, (ys, kept) = jax.lax.scan(body, carry, xs)
    return (last, ys), kept


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_kernel_grad_scan(loop, remat, kernel, consts, carry, xs):
    return _plain_scan(loop, kernel, consts, carry, xs, lambda c, hp: None)[0]


def _fused_kernel_grad_forward(loop, remat, kernel, consts, carry, xs):
    keep = (lambda c, hp: (c, None)) if remat else (lambda c, hp: (c, hp))
    out, (carries, hps) = _plain_scan(loop, kernel, consts, carry, xs, keep)
    return out, (kernel, consts, carries, hps, xs)


def _fused_kernel_grad_backward(loop, remat, residuals, cotangents):
    """The backward loop: each step's ``jax.vjp`` (its forward recomputed from the kept state
    and h U, or h U too under remat), collecting the gradient with respect to h U; that of U
    is formed after the loop as one matmul over all steps. The gradients of the other
    constants (W and b when each step projects its own input) accumulate in the loop."""
    kernel, consts, carries, hps, xs = residuals
    d_last, d_ys = cotangents
    add = partial(jax.tree.map, lambda *vs: sum(vs))
    kernel_t = transposed_kernel(kernel)  # once, not in every step
    dtype = loop.compute_dtype

    def update(consts, c, hp, x):
        return loop.step(consts, c, hp, loop.pre_of(consts, x), x)

    def body(acc, inputs):
        d_carry, d_consts = acc
        c, hp, x, d_y = inputs
        if hp is None:
            hp = state_matmul(loop.read(consts, c, x), kernel, dtype)
        _, update_vjp = jax.vjp(update, consts, c, hp, x)
        d_consts_step, d_c_step, d_hp, d_x_step = update_vjp((d_carry, d_y))
        h_read, read_vjp = jax.vjp(loop.read, consts, c, x)
        d_h_read = state_matmul_transposed(d_hp, kernel_t, dtype).astype(h_read.dtype)
        d_consts_read, d_c_read, d_x_read = read_vjp(d_h_read)
        acc = (add(d_c_step, d_c_read), add(d_consts, d_consts_step, d_consts_read))
        kept_read = None if loop.plain_read else h_read
        return acc, (add(d_x_step, d_x_read), d_hp, kept_read)

    zeros = jax.tree.map(jnp.zeros_like, consts)
    (d_carry, d_consts), (d_xs, d_hps, h_reads) = jax.lax.scan(
        body, (d_last, zeros), (carries, hps, xs, d_ys), reverse=True
    )
    if loop.plain_read:
        h_reads = loop.plain_read(carries)
    return kernel_gradient(h_reads, d_hps, kernel, dtype), d_consts, d_carry, d_xs


_fused_kernel_grad_scan.defvjp(_fused_kernel_grad_forward, _fused_kernel_grad_backward)
