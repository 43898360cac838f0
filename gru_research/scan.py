"""Running a layer over a whole sequence: sequential ``lax.scan`` or parallel associative scan.

``run_layer`` hoists the input projection of the whole sequence into one matmul, then scans
time-major over the recurrent part only (DESIGN.md §2). Designs that never read the previous
state are a linear recurrence h_t = a_t ⊙ h_{t−1} + b_t, which either scan can run:

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

from typing import Literal

import jax
import jax.numpy as jnp

from gru_research.cells import (
    Carry,
    Params,
    initial_carry,
    input_projection,
    log_recurrence_coefficients,
    output_from_states,
    recurrence_coefficients,
    recurrent_step,
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


def _time_major(tree):
    return jax.tree.map(lambda v: jnp.swapaxes(v, 0, 1), tree)


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
    """
    batch, length = xs.shape[:2]
    fresh = initial_carry(params, design, (batch,))
    carry = fresh if carry is None else carry
    pre = _time_major(input_projection(params, design, xs))
    valid, restart = step_masks(batch, length, seq_lengths, resets)
    if resolve_scan(design, scan) == "sequential" and design.reads_state:

        def step(c, inputs):
            pre_t, valid_t, restart_t = inputs
            c_in = _where(restart_t, fresh, c)
            c_new, y = recurrent_step(params, design, c_in, pre_t, h_mask)
            return _where(valid_t, c_new, c), jnp.where(valid_t, y, 0.0)

        carry, ys = jax.lax.scan(step, carry, (pre, valid, restart))
        return jnp.swapaxes(ys, 0, 1), carry

    lstm = design.family == "lstm"
    state0, fresh_state = (carry[0], fresh[0]) if lstm else (carry, fresh)
    if resolve_scan(design, scan) == "parallel" and design.parallel_scan == "log":
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
        run = (
            linear_scan_sequential
            if resolve_scan(design, scan) == "sequential"
            else (linear_scan_parallel)
        )
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


def _log_nonnegative(v: Array) -> Array:
    positive = v > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, v, 1.0)), -jnp.inf)
