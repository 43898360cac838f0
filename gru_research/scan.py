"""Running a layer over a whole sequence: sequential ``lax.scan`` or parallel associative scan.

``run_layer`` hoists the input projection of the whole sequence into one matmul, then scans
time-major over the recurrent part only (DESIGN.md §2). Designs that read the previous state
run :func:`state_reading_scan`: one fused (H, G·H) matmul per step, and a custom gradient
that forms the recurrent kernel's gradient after the loop as one matmul. Designs that never
read the previous state are a linear recurrence h_t = a_t ⊙ h_{t−1} + b_t, which either scan
can run:

* ``"sequential"``: ``lax.scan`` over (a_t, b_t), or over the full step for the other designs;
* ``"parallel"``: ``lax.associative_scan``, in log space for a positive candidate (minGRU,
  minLSTM), with h_0 folded into the first b and the combine
  (A1, B1) ∘ (A2, B2) = (A1 + A2, logaddexp(B1 + A2, B2)), which handles log a = −∞; in linear
  space otherwise;
* ``"auto"``: parallel only where it was measured to pay, off the CPU (on this 2-core CPU the
  associative scan ran at 0.3–0.5× ``lax.scan`` at T = 4096).

In log space h_0 must be ≥ 0 (the authors' default is h_0 = 0).
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp

from gru_research.cells import (
    Carry,
    Params,
    fused_recurrent_kernel,
    initial_carry,
    input_projection,
    log_recurrence_coefficients,
    matmul,
    output_from_states,
    read_state,
    recurrence_coefficients,
    recurrent_update,
)
from gru_research.gates import GateDesign

Array = jax.Array
ScanKind = Literal["auto", "sequential", "parallel"]
SCAN_KINDS: tuple[str, ...] = ("auto", "sequential", "parallel")


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


def log_scan_parallel(log_a: Array, log_b: Array, h0: Array) -> Array:
    """h_t = a_t h_{t−1} + b_t for positive a, b, h0 ≥ 0, scanned over (log a, log b)."""
    log_b = log_b.at[0].set(jnp.logaddexp(log_a[0] + _log_nonnegative(h0), log_b[0]))

    def combine(left, right):
        return left[0] + right[0], jnp.logaddexp(left[1] + right[0], right[1])

    return jnp.exp(jax.lax.associative_scan(combine, (log_a, log_b))[1])


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
) -> tuple[Array, Carry]:
    """Run one layer over batch-major inputs ``xs`` (B, T, I); returns (outputs (B, T, H), carry).

    * ``carry``: h (GRU family) or (c, h) (LSTM family) to start from; the learned initial
      state (``learn_initial_state``) or zeros when omitted. The returned carry is the one
      after each sequence's last real step.
    * ``seq_lengths`` (B,): right-padded sequences; outputs at padded steps are zero and the
      state is held through them (in the parallel scan: a = 1, b = 0 there).
    * ``resets`` (B, T) booleans: the state restarts (to the initial state) before that step,
      as at the start of a packed document or an episode (in the parallel scan: a zeroed
      decay, a = 0).
    * ``h_mask`` (B, H): variational recurrent dropout, one mask for the whole sequence.
    * ``compute_dtype``: e.g. ``jnp.bfloat16`` for the matmuls, accumulated in float32; the
      state and the element-wise gate arithmetic stay float32.
    * ``remat``: keep only the state per step for the backward pass and recompute the rest
      (:func:`state_reading_scan`; the linear-recurrence designs keep their (a, b) anyway).
    """
    kind = resolve_scan(design, scan)
    batch, length = xs.shape[:2]
    fresh = initial_carry(params, design, (batch,))
    carry = fresh if carry is None else carry
    # time-major before the projection: one transpose of x, not one per gate of W x
    pre = input_projection(params, design, jnp.swapaxes(xs, 0, 1), compute_dtype)
    valid, restart = step_masks(batch, length, seq_lengths, resets)
    if design.reads_state:
        ys, carry = state_reading_scan(
            params,
            design,
            carry,
            fresh,
            pre,
            None if seq_lengths is None else valid,
            None if resets is None else restart,
            h_mask,
            compute_dtype,
            remat,
        )
        return jnp.swapaxes(ys, 0, 1), carry

    lstm = design.family == "lstm"
    state0, fresh_state = (carry[0], fresh[0]) if lstm else (carry, fresh)
    if kind == "parallel" and design.parallel_scan == "log":
        log_a, log_b = log_recurrence_coefficients(design, pre)
        log_fresh = _log_nonnegative(fresh_state)
        log_b = jnp.where(restart, jnp.logaddexp(log_b, log_a + log_fresh), log_b)
        log_a = jnp.where(restart, -jnp.inf, log_a)
        log_a, log_b = jnp.where(valid, log_a, 0.0), jnp.where(valid, log_b, -jnp.inf)
        states = log_scan_parallel(log_a, log_b, state0)
    else:
        a, b = recurrence_coefficients(design, pre)
        b = jnp.where(restart, b + a * fresh_state, b)
        a = jnp.where(restart, 0.0, a)
        a, b = jnp.where(valid, a, 1.0), jnp.where(valid, b, 0.0)
        run = linear_scan_sequential if kind == "sequential" else linear_scan_parallel
        states = run(a, b, state0)
    ys = output_from_states(design, states, pre)
    last = length - 1 if seq_lengths is None else jnp.maximum(seq_lengths - 1, 0)
    take_last = lambda v: v[last, jnp.arange(batch)] if seq_lengths is not None else v[-1]  # noqa: E731
    if seq_lengths is not None:  # a sequence of length 0 keeps the carry it was given
        empty = (seq_lengths == 0)[:, None]
        final_state = jnp.where(empty, state0, take_last(states))
        final_h = jnp.where(empty, carry[1], take_last(ys)) if lstm else final_state
    else:
        final_state, final_h = states[-1], ys[-1]
    ys = jnp.where(valid, ys, 0.0)
    return jnp.swapaxes(ys, 0, 1), ((final_state, final_h) if lstm else final_state)


def state_reading_scan(
    params: Params,
    design: GateDesign,
    carry: Carry,
    fresh: Carry,
    pre: dict[str, Array],
    valid: Array | None = None,
    restart: Array | None = None,
    h_mask: Array | None = None,
    compute_dtype=None,
    remat: bool = False,
) -> tuple[Array, Carry]:
    """The time loop of a design that reads its state, over time-major ``pre`` (T, B, ·).

    Forward, one ``lax.scan`` whose step is one fused matmul h U (B, H) × (H, G·H) and the
    element-wise update. Backward (a ``jax.custom_vjp``, as cuDNN does it): a reverse scan
    collects each step's gradient with respect to h U, and the gradient of U is formed after
    it as *one* (H, T·B) × (T·B, G·H) matmul instead of T small ones accumulated in the loop.
    Equal to JAX's own gradient of the plain scan (tests/test_speed.py). ``valid`` and
    ``restart`` are the (T, B, 1) masks of :func:`step_masks`, None when there are none.
    """
    others = {"U": {}}
    if design.family == "gru" and design.candidate.h and design.reset == "before":
        others["U"][design.candidate_name] = params["U"][design.candidate_name]
    if "c_h" in params:
        others["c_h"] = params["c_h"]
    consts = {"params": others, "fresh": fresh, "h_mask": h_mask}
    as_float = lambda mask: None if mask is None else mask.astype(jnp.float32)  # noqa: E731
    xs = (pre, as_float(valid), as_float(restart))

    def restarted(consts, c, restart_t):
        return c if restart_t is None else _where(restart_t > 0, consts["fresh"], c)

    def read(consts, c, x):
        return read_state(design, restarted(consts, c, x[2]), consts["h_mask"])

    def step(consts, c, hp, x):
        pre_t, valid_t, restart_t = x
        c_new, y = recurrent_update(
            consts["params"],
            design,
            restarted(consts, c, restart_t),
            pre_t,
            hp,
            consts["h_mask"],
            compute_dtype,
        )
        if valid_t is None:
            return c_new, y
        return _where(valid_t > 0, c_new, c), jnp.where(valid_t > 0, y, 0.0)

    kernel = fused_recurrent_kernel(params, design)
    last, ys = _fused_kernel_grad_scan(step, read, compute_dtype, remat, kernel, consts, carry, xs)
    return ys, last


def _plain_scan(step, read, compute_dtype, kernel, consts, carry, xs, keep):
    """The forward loop; ``keep(c, hp)`` picks what each step stores besides its output."""

    def body(c, x):
        hp = matmul(read(consts, c, x), kernel, compute_dtype)
        new, y = step(consts, c, hp, x)
        return new, (y, keep(c, hp))

    last, (ys, kept) = jax.lax.scan(body, carry, xs)
    return (last, ys), kept


@partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _fused_kernel_grad_scan(step, read, compute_dtype, remat, kernel, consts, carry, xs):
    return _plain_scan(step, read, compute_dtype, kernel, consts, carry, xs, lambda c, hp: None)[0]


def _fused_kernel_grad_forward(step, read, compute_dtype, remat, kernel, consts, carry, xs):
    keep = (lambda c, hp: (c, None)) if remat else (lambda c, hp: (c, hp))
    out, (carries, hps) = _plain_scan(step, read, compute_dtype, kernel, consts, carry, xs, keep)
    return out, (kernel, consts, carries, hps, xs)


def _fused_kernel_grad_backward(step, read, compute_dtype, remat, residuals, cotangents):
    kernel, consts, carries, hps, xs = residuals
    d_last, d_ys = cotangents
    add = partial(jax.tree.map, lambda *vs: sum(vs))

    def body(acc, inputs):
        d_carry, d_consts = acc
        c, hp, x, d_y = inputs
        if hp is None:
            hp = matmul(read(consts, c, x), kernel, compute_dtype)
        _, step_vjp = jax.vjp(step, consts, c, hp, x)
        d_consts_step, d_c_step, d_hp, d_x_step = step_vjp((d_carry, d_y))
        h_read, read_vjp = jax.vjp(read, consts, c, x)
        d_h_read = matmul(d_hp, kernel.T, compute_dtype).astype(h_read.dtype)
        d_consts_read, d_c_read, d_x_read = read_vjp(d_h_read)
        acc = (add(d_c_step, d_c_read), add(d_consts, d_consts_step, d_consts_read))
        return acc, (add(d_x_step, d_x_read), d_hp, h_read)

    zeros = jax.tree.map(jnp.zeros_like, consts)
    (d_carry, d_consts), (d_xs, d_hps, h_reads) = jax.lax.scan(
        body, (d_last, zeros), (carries, hps, xs, d_ys), reverse=True
    )
    d_kernel = matmul(
        h_reads.reshape(-1, h_reads.shape[-1]).T, d_hps.reshape(-1, d_hps.shape[-1]), compute_dtype
    ).astype(kernel.dtype)
    return d_kernel, d_consts, d_carry, d_xs


_fused_kernel_grad_scan.defvjp(_fused_kernel_grad_forward, _fused_kernel_grad_backward)


def _log_nonnegative(v: Array) -> Array:
    positive = v > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, v, 1.0)), -jnp.inf)
