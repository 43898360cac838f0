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
    input_projection,
    layer_sizes,
    log_recurrence_coefficients,
    output_from_states,
    recurrence_coefficients,
    recurrent_step,
    zero_carry,
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
    positive = h0 > 0
    log_h0 = jnp.where(positive, jnp.log(jnp.where(positive, h0, 1.0)), -jnp.inf)
    log_b = log_b.at[0].set(jnp.logaddexp(log_a[0] + log_h0, log_b[0]))

    def combine(left, right):
        return left[0] + right[0], jnp.logaddexp(left[1] + right[0], right[1])

    return jnp.exp(jax.lax.associative_scan(combine, (log_a, log_b))[1])


def run_layer(
    params: Params,
    design: GateDesign,
    xs: Array,
    carry: Carry | None = None,
    *,
    scan: ScanKind = "auto",
) -> tuple[Array, Carry]:
    """Run one layer over batch-major inputs ``xs`` (B, T, I); returns (outputs (B, T, H), carry).

    ``carry`` is h (GRU family) or (c, h) (LSTM family), zeros when omitted; the returned carry
    is the one after the last step.
    """
    _, hidden = layer_sizes(params)
    if carry is None:
        carry = zero_carry(design, xs.shape[:1], hidden)
    pre = _time_major(input_projection(params, design, xs))
    if resolve_scan(design, scan) == "sequential" and design.reads_state:

        def step(c, pre_t):
            return recurrent_step(params, design, c, pre_t)

        carry, ys = jax.lax.scan(step, carry, pre)
        return jnp.swapaxes(ys, 0, 1), carry

    state0 = carry[0] if design.family == "lstm" else carry
    if resolve_scan(design, scan) == "sequential":
        states = linear_scan_sequential(*recurrence_coefficients(design, pre), state0)
    elif design.parallel_scan == "log":
        states = log_scan_parallel(*log_recurrence_coefficients(design, pre), state0)
    else:
        states = linear_scan_parallel(*recurrence_coefficients(design, pre), state0)
    ys = output_from_states(design, states, pre)
    carry = (states[-1], ys[-1]) if design.family == "lstm" else states[-1]
    return jnp.swapaxes(ys, 0, 1), carry
