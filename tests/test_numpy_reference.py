"""Every preset against a plain-NumPy reference written from the equations of DESIGN.md §2.

The references below are independent of ``gru_research.cells``: they read the parameter tree
(``W``, ``U``, ``b``, ``c_h``; see the ``cells`` docstring) and apply each preset's documented
equations step by step in float64. Every parameter leaf a preset has must be read by its
reference, so a parameter the package creates but the equations do not use is caught too.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from presets import CLASSIC, unit_unless_new

from gru_research.cells import init_layer
from gru_research.gates import PRESETS, GateDesign
from gru_research.scan import run_layer

B, T, I, H = 3, 50, 5, 8  # H divisible by sLSTM's 4 heads
REL_TOL = 1e-5

Array = np.ndarray
Carry = Array | tuple[Array, Array]

GRU_FAMILY = {
    "rnn_tanh",
    "gru",
    "gru_reset_before",
    "gru_no_reset",
    "mgu",
    "mgu_flax",
    "min_gru",
    "min_gru_linear",
    "min_gru_signed",
    "rg_lru",
    "gru1",
    "gru2",
    "gru3",
    "indrnn",
}
LSTM_FAMILY = {
    "lstm",
    "min_lstm",
    "lstm_no_input_gate",
    "lstm_no_forget_gate",
    "lstm_no_output_gate",
    "lstm_cifg",
    "lstm_forget_bias_0",
    "lstm_peephole",
    "lstm_peephole_nig",
    "lstm_peephole_nfg",
    "lstm_peephole_nog",
    "lstm_peephole_niaf",
    "lstm_peephole_noaf",
    "lstm_peephole_cifg",
    "janet",
    "sru",
    "qrnn",
    "hgrn",
    "slstm",
}
POSITIVE_CARRY = {"min_gru", "min_lstm"}  # log-space scans need h_0 >= 0
WINDOWED = {"qrnn"}  # a window of two inputs: the carry is ((c, h), x_{t-1} (B, 1, I))


def sigmoid(v: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-v))


def g_pos(v: Array) -> Array:
    """Feng et al.'s positive candidate map: v + 0.5 for v >= 0, sigmoid(v) otherwise."""
    return np.where(v >= 0, v + 0.5, sigmoid(np.minimum(v, 0.0)))


class Ref:
    """Float64 view of a parameter tree that records which leaves the reference reads."""

    def __init__(self, params: dict) -> None:
        self.p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        self.used: set[tuple[str, ...]] = set()

    def W(self, k: str, x: Array) -> Array:
        self.used.add(("W", k))
        return x @ self.p["W"][k]

    def W_window(self, k: str, x_prev: Array, x: Array) -> Array:
        """W¹ x_{t−1} + W² x_t of a two-tap input window: W's rows for x_{t−1}, then x_t."""
        self.used.add(("W", k))
        return x_prev @ self.p["W"][k][:I] + x @ self.p["W"][k][I:]

    def U(self, k: str, h: Array) -> Array:
        self.used.add(("U", k))
        return h @ self.p["U"][k]

    def R(self, k: str, h: Array) -> Array:
        """A block-diagonal recurrence: head j of h times its own block R_j."""
        self.used.add(("R", k))
        blocks = self.p["R"][k]
        heads = h.reshape(h.shape[0], blocks.shape[0], blocks.shape[1])
        return np.einsum("bjd,jde->bje", heads, blocks).reshape(h.shape)

    def u(self, k: str) -> Array:
        """A diagonal recurrent weight, as a vector multiplying h elementwise."""
        self.used.add(("u", k))
        return self.p["u"][k]

    def peep(self, k: str, c: Array) -> Array:
        """A peephole: a vector multiplying the cell c elementwise."""
        self.used.add(("p", k))
        return self.p["p"][k] * c

    def b(self, k: str) -> Array:
        self.used.add(("b", k))
        return self.p["b"][k]

    def c_h(self) -> Array:
        self.used.add(("c_h",))
        return self.p["c_h"]

    def lower_bound(self) -> Array:
        """HGRN's forget-gate lower bound γ of this layer."""
        self.used.add(("lower_bound",))
        return self.p["lower_bound"]

    def decay(self) -> Array:
        """RG-LRU's Λ, sigmoid(Λ) the decay at a recurrence gate of 1/8."""
        self.used.add(("decay",))
        return self.p["decay"]


def leaf_names(params: dict) -> set[tuple[str, ...]]:
    names: set[tuple[str, ...]] = set()
    for group, leaves in params.items():
        if isinstance(leaves, dict):
            names |= {(group, k) for k in leaves}
        else:
            names.add((group,))
    return names


def gru_family_step(name: str, p: Ref, x: Array, h: Array) -> Array:
    """One step of a GRU-family preset, h' from (x, h), as written in DESIGN.md §2."""
    if name == "rnn_tanh":
        return np.tanh(p.W("h", x) + p.b("h") + p.U("h", h))

    if name == "indrnn":  # Li et al., 2018: h' = ReLU(W x + u ⊙ h + b)
        return np.maximum(p.W("h", x) + p.u("h") * h + p.b("h"), 0.0)

    if name in ("min_gru", "min_gru_linear"):
        z = sigmoid(p.W("z", x) + p.b("z"))
        v = p.W("h", x) + p.b("h")
        cand = g_pos(v) if name == "min_gru" else v
        return (1 - z) * h + z * cand  # "write"

    if name == "rg_lru":  # De et al., 2024: log a = -8 r softplus(-Λ), input scaled √(1 - a²)
        r = sigmoid(p.W("r", x) + p.b("r"))
        i = sigmoid(p.W("z", x) + p.b("z"))
        a = np.exp(-8.0 * r * np.log1p(np.exp(-p.decay())))
        return a * h + np.sqrt(1 - a**2) * (i * (p.W("h", x) + p.b("h")))

    if name == "min_gru_signed":  # Grazzi et al., 2024: a = 1 - 2z in [-1, 1]
        z = sigmoid(p.W("z", x) + p.b("z"))
        return (1 - 2 * z) * h + z * g_pos(p.W("h", x) + p.b("h"))

    if name == "mgu":  # Zhou et al., 2016: f resets h before the matmul and writes h~
        f = sigmoid(p.W("z", x) + p.U("z", h) + p.b("z"))
        cand = np.tanh(p.W("h", x) + p.U("h", f * h) + p.b("h"))
        return (1 - f) * h + f * cand

    if name == "mgu_flax":  # Flax MGUCell: reset after the matmul, keep update
        f = sigmoid(p.W("z", x) + p.U("z", h) + p.b("z"))
        cand = np.tanh(p.W("h", x) + p.b("h") + f * (p.U("h", h) + p.c_h()))
        return (1 - f) * cand + f * h

    if name == "gru_no_reset":
        z = sigmoid(p.W("z", x) + p.U("z", h) + p.b("z"))
        cand = np.tanh(p.W("h", x) + p.U("h", h) + p.b("h"))
        return (1 - z) * cand + z * h

    if name in ("gru", "gru_reset_before"):
        z = sigmoid(p.W("z", x) + p.U("z", h) + p.b("z"))
        r = sigmoid(p.W("r", x) + p.U("r", h) + p.b("r"))
    elif name == "gru1":  # Dey & Salem: gates from U h + b
        z = sigmoid(p.U("z", h) + p.b("z"))
        r = sigmoid(p.U("r", h) + p.b("r"))
    elif name == "gru2":  # gates from U h alone
        z = sigmoid(p.U("z", h))
        r = sigmoid(p.U("r", h))
    elif name == "gru3":  # gates from the bias alone
        z = sigmoid(p.b("z")) * np.ones_like(h)
        r = sigmoid(p.b("r")) * np.ones_like(h)
    else:
        raise KeyError(name)

    if name == "gru_reset_before":
        cand = np.tanh(p.W("h", x) + p.U("h", r * h) + p.b("h"))
    else:
        cand = np.tanh(p.W("h", x) + p.b("h") + r * (p.U("h", h) + p.c_h()))
    return (1 - z) * cand + z * h


def slstm_step(p: Ref, x: Array, carry: tuple[Array, ...]) -> tuple[Array, ...]:
    """Beck et al., 2024, sLSTM: exponential input gate, sigmoid forget gate in log space,
    stabiliser m and normaliser n; every pre-activation reads h through 4 heads."""
    c, n, m, h = carry
    i_pre, f_pre, o_pre, z_pre = (p.W(k, x) + p.R(k, h) + p.b(k) for k in ("i", "f", "o", "g"))
    log_f = -np.log1p(np.exp(-f_pre))
    m_new = np.maximum(i_pre, log_f + m)
    i, f = np.exp(i_pre - m_new), np.exp(log_f + m - m_new)
    c_new, n_new = f * c + i * np.tanh(z_pre), f * n + i
    return c_new, n_new, m_new, sigmoid(o_pre) * c_new / n_new


def lstm_family_step(
    name: str, p: Ref, x: Array, carry: tuple[Array, Array]
) -> tuple[Array, Array]:
    """One step of an LSTM-family preset, (c', h') from (x, (c, h)), as in DESIGN.md §2."""
    if name == "slstm":
        return slstm_step(p, x, carry)
    c, h = carry
    if name == "qrnn":  # Bradbury et al., 2016: fo-pooling over a window of 2 (x = (x_{t-1}, x_t))
        z = np.tanh(p.W_window("g", *x) + p.b("g"))
        f = sigmoid(p.W_window("f", *x) + p.b("f"))
        o = sigmoid(p.W_window("o", *x) + p.b("o"))
        c_new = f * c + (1 - f) * z
        return c_new, o * c_new

    if name == "hgrn":  # Qin et al., 2023: f = γ + (1 - γ) σ(W_f x + b_f), silu input
        gamma = p.lower_bound()
        f = gamma + (1 - gamma) * sigmoid(p.W("f", x) + p.b("f"))
        v = p.W("g", x) + p.b("g")
        c_new = f * c + (1 - f) * v * sigmoid(v)
        return c_new, sigmoid(p.W("o", x) + p.b("o")) * c_new

    if name == "min_lstm":  # Feng et al., 2024: x-only gates, normalised, no output gate
        f = sigmoid(p.W("f", x) + p.b("f"))
        i = sigmoid(p.W("i", x) + p.b("i"))
        cand = g_pos(p.W("g", x) + p.b("g"))
        f, i = f / (f + i), i / (f + i)
        c_new = f * c + i * cand
        return c_new, c_new

    if name == "sru":  # Lei et al., 2018: gates from x and c_{t-1}, highway output
        f = sigmoid(p.W("f", x) + p.peep("f", c) + p.b("f"))
        r = sigmoid(p.W("o", x) + p.peep("o", c) + p.b("o"))
        c_new = f * c + (1 - f) * p.W("g", x)
        x_hat = x if x.shape[-1] == h.shape[-1] else p.W("skip", x)
        return c_new, r * c_new + (1 - r) * np.sqrt(3.0) * x_hat

    if name == "janet":  # van der Westhuizen & Lasenby, 2018: i = 1 - sigmoid(s - 1)
        s = p.W("f", x) + p.U("f", h) + p.b("f")
        c_new = sigmoid(s) * c + (1 - sigmoid(s - 1.0)) * np.tanh(
            p.W("g", x) + p.U("g", h) + p.b("g")
        )
        return c_new, c_new

    if name.startswith("lstm_peephole"):  # Greff et al., 2017: i, f see c_{t-1}, o sees c_t
        variant = name.removeprefix("lstm_peephole").lstrip("_")

        def peeping(k: str, cell: Array) -> Array:
            return sigmoid(p.W(k, x) + p.U(k, h) + p.peep(k, cell) + p.b(k))

        one = np.ones_like(h)
        f = one if variant == "nfg" else peeping("f", c)
        i = {"nig": one, "cifg": 1 - f}.get(variant)
        i = peeping("i", c) if i is None else i
        g = p.W("g", x) + p.U("g", h) + p.b("g")
        c_new = f * c + i * (g if variant == "niaf" else np.tanh(g))
        o = one if variant == "nog" else peeping("o", c_new)
        return c_new, o * (c_new if variant == "noaf" else np.tanh(c_new))

    def gate(k: str) -> Array:
        return sigmoid(p.W(k, x) + p.U(k, h) + p.b(k))

    one = np.ones_like(h)
    f = one if name == "lstm_no_forget_gate" else gate("f")
    if name == "lstm_no_input_gate":
        i = one
    elif name == "lstm_cifg":
        i = 1 - f
    else:
        i = gate("i")
    o = one if name == "lstm_no_output_gate" else gate("o")
    g = np.tanh(p.W("g", x) + p.U("g", h) + p.b("g"))
    c_new = f * c + i * g
    return c_new, o * np.tanh(c_new)


def reference_run(name: str, params: dict, xs: Array, carry: Carry) -> tuple[Array, Carry, Ref]:
    """Run the NumPy reference over (B, T, I) inputs; returns (ys (B, T, H), carry, Ref)."""
    p = Ref(params)
    xs = np.asarray(xs, np.float64)
    carry = jax.tree.map(lambda a: np.asarray(a, np.float64), carry)
    if name in WINDOWED:  # the carry holds the previous input beside the state
        carry, prev = carry
    ys = []
    for t in range(xs.shape[1]):
        x = xs[:, t]
        if name in WINDOWED:
            x, prev = (prev[:, 0], x), x[:, None]
        if name in LSTM_FAMILY:
            carry = lstm_family_step(name, p, x, carry)
            ys.append(carry[-1])
        else:
            carry = gru_family_step(name, p, x, carry)
            ys.append(carry)
    return np.stack(ys, axis=1), ((carry, prev) if name in WINDOWED else carry), p


def random_params(design: GateDesign, seed: int) -> dict:
    """The preset's parameter tree with every leaf redrawn, so biases and c_h are nonzero
    (and a layer's HGRN lower bound, which the model gives it, drawn in (0, 1))."""
    params = init_layer(jax.random.PRNGKey(seed), design, I, H)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    new = [jnp.asarray(0.6 * rng.standard_normal(leaf.shape), jnp.float32) for leaf in leaves]
    params = jax.tree.unflatten(tree, new)
    if design.forget_lower_bound:
        params["lower_bound"] = jnp.asarray(rng.uniform(0.0, 1.0, H), jnp.float32)
    return params


def random_carry(name: str, seed: int) -> Carry:
    rng = np.random.default_rng(seed + 1)
    if name in POSITIVE_CARRY:
        h = rng.uniform(0.1, 1.0, (B, H))
    else:
        h = 0.8 * rng.standard_normal((B, H))
    if name == "min_lstm":  # h = c: the state is c, the output is c
        return jnp.asarray(h, jnp.float32), jnp.asarray(h, jnp.float32)
    if name in WINDOWED:
        c = rng.standard_normal((B, H))
        state = jnp.asarray(c, jnp.float32), jnp.asarray(h, jnp.float32)
        return state, jnp.asarray(rng.standard_normal((B, 1, I)), jnp.float32)
    if name == "slstm":  # (c, n > 0, m, h)
        c, n, m = (
            rng.standard_normal((B, H)),
            rng.uniform(0.5, 1.5, (B, H)),
            rng.standard_normal((B, H)),
        )
        return tuple(jnp.asarray(v, jnp.float32) for v in (c, n, m, h))
    if name in LSTM_FAMILY:
        c = rng.standard_normal((B, H))
        return jnp.asarray(c, jnp.float32), jnp.asarray(h, jnp.float32)
    return jnp.asarray(h, jnp.float32)


def comparable(name: str, carry: Carry) -> list:
    """The carry's leaves that any correct implementation shares: for sLSTM c / n and h,
    not its stabiliser m (nor c and n, which m scales)."""
    if name == "slstm":
        c, n, _, h = carry
        return [c / n, h]
    return jax.tree.leaves(carry)


def random_inputs(seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed + 2).standard_normal((B, T, I)), jnp.float32)


def rel_err(got: jax.Array, ref: Array) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


def test_references_cover_every_preset() -> None:
    assert set(PRESETS) == GRU_FAMILY | LSTM_FAMILY
    for name in LSTM_FAMILY:
        assert PRESETS[name].family == "lstm"
    for name in GRU_FAMILY:
        assert PRESETS[name].family == "gru"


CASES = [
    pytest.param(
        name,
        scan,
        id=f"{name}-{scan}",
        marks=[pytest.mark.slow] if (name, scan) == ("min_gru", "parallel") else [],
    )
    for name, design in PRESETS.items()
    for scan in ("sequential", "parallel")
    if scan == "sequential" or design.parallel_scan is not None
]


@pytest.mark.parametrize(("name", "scan"), CASES)
def test_preset_matches_numpy_reference(name: str, scan: str) -> None:
    design = PRESETS[name]
    params = random_params(design, seed=7)
    xs, carry0 = random_inputs(7), random_carry(name, 7)

    ys, carry = run_layer(params, design, xs, carry0, scan=scan)
    ref_ys, ref_carry, ref = reference_run(name, params, xs, carry0)

    assert ys.shape == (B, T, H)
    assert ref.used == leaf_names(params), "parameters the equations do not read (or lack)"
    assert rel_err(ys, ref_ys) <= REL_TOL
    for got, want in zip(comparable(name, carry), comparable(name, ref_carry), strict=True):
        assert rel_err(got, want) <= REL_TOL


CASES_FLOAT64 = [  # the presets beyond the classic ones in the slow run (tests/presets.py)
    pytest.param(*case.values, id=case.id, marks=[*case.marks, *unit_unless_new("x").marks])
    if case.values[0] not in CLASSIC
    else case
    for case in CASES
]


@pytest.mark.parametrize(("name", "scan"), CASES_FLOAT64)
def test_preset_matches_numpy_reference_in_float64(name: str, scan: str) -> None:
    """The same comparison with the package in float64: equal to rounding, 1e-10."""
    design = PRESETS[name]
    params, xs, carry0 = random_params(design, seed=8), random_inputs(8), random_carry(name, 8)
    ref_ys, ref_carry, _ = reference_run(name, params, xs, carry0)
    with jax.enable_x64(True):
        as64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
        ys, carry = run_layer(as64(params), design, as64(xs), as64(carry0), scan=scan)
        assert ys.dtype == jnp.float64
        assert rel_err(ys, ref_ys) <= 1e-10
        for got, want in zip(comparable(name, carry), comparable(name, ref_carry), strict=True):
            assert rel_err(got, want) <= 1e-10


def test_zero_initial_carry_is_the_default() -> None:
    for name in ("gru", "min_gru", "lstm"):
        design = PRESETS[name]
        params = random_params(design, seed=3)
        xs = random_inputs(3)
        zero = jax.tree.map(jnp.zeros_like, random_carry(name, 3))
        ys_default, _ = run_layer(params, design, xs, scan="sequential")
        ref_ys, _, _ = reference_run(name, params, xs, zero)
        assert rel_err(ys_default, ref_ys) <= REL_TOL


def test_mgu_is_zhou_not_flax() -> None:
    """google/flax#4608: Flax's MGUCell is not Zhou et al.'s MGU; the package keeps both."""
    params = random_params(PRESETS["mgu"], seed=11)
    flax_params = {**params, "c_h": jnp.zeros((H,), jnp.float32)}  # same weights, c_h = 0
    xs, h0 = random_inputs(11), random_carry("mgu", 11)

    ys_mgu, _ = run_layer(params, PRESETS["mgu"], xs, h0, scan="sequential")
    ys_flax, _ = run_layer(flax_params, PRESETS["mgu_flax"], xs, h0, scan="sequential")
    zhou, _, _ = reference_run("mgu", params, xs, h0)
    flax_math, _, _ = reference_run("mgu_flax", flax_params, xs, h0)

    assert rel_err(ys_mgu, zhou) <= REL_TOL
    assert rel_err(ys_flax, flax_math) <= REL_TOL
    assert rel_err(ys_mgu, flax_math) > 0.05  # genuinely different models
    assert rel_err(ys_flax, zhou) > 0.05


def test_mgu_single_step_differs_in_coupling() -> None:
    """One step from the same (x, h): Zhou writes h~ with f, Flax keeps h with f."""
    rng = np.random.default_rng(0)
    params = random_params(PRESETS["mgu"], seed=5)
    x, h = rng.standard_normal((B, I)), rng.standard_normal((B, H))
    p = Ref({**params, "c_h": np.zeros(H)})
    f = sigmoid(p.W("z", x) + p.U("z", h) + p.b("z"))
    zhou = gru_family_step("mgu", p, x, h)
    flax = gru_family_step("mgu_flax", p, x, h)
    # Zhou: h' - h = f (h~_Z - h);  Flax: h' - h = (1 - f)(h~_F - h).
    cand_z = np.tanh(p.W("h", x) + p.U("h", f * h) + p.b("h"))
    cand_f = np.tanh(p.W("h", x) + p.b("h") + f * p.U("h", h))
    np.testing.assert_allclose(zhou - h, f * (cand_z - h), atol=1e-12)
    np.testing.assert_allclose(flax - h, (1 - f) * (cand_f - h), atol=1e-12)
    assert np.max(np.abs(zhou - flax)) > 0.05
    out, _ = run_layer(
        params, PRESETS["mgu"], jnp.asarray(x[:, None], jnp.float32), jnp.asarray(h, jnp.float32)
    )
    assert rel_err(out[:, 0], zhou) <= REL_TOL


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_variants() -> dict[str, GateDesign]:
    """The designs of the README's "a new variant is a few lines" example, run as written."""
    text = README.read_text()
    start = text.index("```python", text.index("A new variant is a few lines"))
    code = text[start + len("```python") : text.index("```", start + 3)]
    namespace: dict = {}
    exec(code, namespace)
    return {v.name: v for v in namespace.values() if isinstance(v, GateDesign)}


def readme_variant_step(name: str, p: Ref, x: Array, carry: Carry) -> Carry:
    """The README variants' equations: a GRU with a ReLU candidate, an LSTM without output
    activation, and a leaky unit whose update gate is the learned vector σ(b_z)."""
    if name == "lstm_noaf":
        c, h = carry
        i, f, o = (sigmoid(p.W(k, x) + p.U(k, h) + p.b(k)) for k in ("i", "f", "o"))
        c_new = f * c + i * np.tanh(p.W("g", x) + p.U("g", h) + p.b("g"))
        return c_new, o * c_new
    h = carry
    if name == "gru_relu":
        z, r = (sigmoid(p.W(k, x) + p.U(k, h) + p.b(k)) for k in ("z", "r"))
        cand = np.maximum(p.W("h", x) + p.b("h") + r * (p.U("h", h) + p.c_h()), 0.0)
    else:  # leaky: z = σ(b_z), no reset
        z = sigmoid(p.b("z")) * np.ones_like(h)
        cand = np.tanh(p.W("h", x) + p.U("h", h) + p.b("h"))
    return (1 - z) * cand + z * h


def test_the_readme_variants_follow_their_equations() -> None:
    variants = readme_variants()
    assert set(variants) == {"gru_relu", "lstm_noaf", "leaky"}
    for name, design in variants.items():
        params = random_params(design, seed=5)
        xs = random_inputs(5)
        carry0 = random_carry("lstm" if design.family == "lstm" else "gru", 5)
        ys, carry = run_layer(params, design, xs, carry0)
        p, carry_ref, ys_ref = Ref(params), jax.tree.map(np.asarray, carry0), []
        for t in range(T):
            carry_ref = readme_variant_step(name, p, np.asarray(xs[:, t], np.float64), carry_ref)
            ys_ref.append(carry_ref[-1] if design.family == "lstm" else carry_ref)
        assert p.used == leaf_names(params), name
        assert rel_err(ys, np.stack(ys_ref, axis=1)) <= REL_TOL, name
        for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(carry_ref), strict=True):
            assert rel_err(got, want) <= REL_TOL, name
