"""The gate-design space: every gated RNN of the ablation tables as a *value*, not a class.

A design says, for each gate, which inputs feed it (``W x``, ``U h``, a bias: any subset), or
that the gate is fixed to a constant, tied to another gate, or coupled to one (``1 - g``); how
the candidate is formed; and how the state is updated. The scan (``gru_research.scan``) reads
nothing else, so a new variant is a few lines::

    my_gru = replace(PRESETS["gru"], name="gru_relu", candidate=Candidate(activation="relu"))

Two families share the description (docs/design.md §1):

* ``"gru"``: carry ``h``; gates ``z`` (update) and ``r`` (reset); candidate ``h``.
  ``update="keep"``:  h' = (1 − z) ⊙ h̃ + z ⊙ h   (Cho et al., 2014; PyTorch, Flax)
  ``update="write"``: h' = (1 − z) ⊙ h + z ⊙ h̃   (Zhou et al., 2016; Feng et al., 2024)
  ``update="signed"``: h' = (1 − 2z) ⊙ h + z ⊙ h̃, a decay in [−1, 1] (Grazzi et al., 2024)
  ``update="rg_lru"``: h' = a ⊙ h + √(1 − a²) ⊙ (z ⊙ h̃), log a = −8 r ⊙ softplus(−Λ)
                       (De et al., 2024, RG-LRU: z the input gate, r the recurrence gate, Λ a
                       learned vector with a² drawn on [0.9², 0.999²]; at a reset and at
                       a fresh sequence's first step the multiplier √(1 − a²) is 1, as in
                       recurrentgemma)
  ``reset="after"``:  h̃ = φ(W_h x + b_h + r ⊙ (U_h h + c_h))   (cuDNN, Flax, PyTorch)
  ``reset="before"``: h̃ = φ(W_h x + U_h (r ⊙ h) + b_h)          (Cho et al., 2014)
  ``c_h`` exists only for a learned reset gate applied after the matmul.
* ``"lstm"``: carry ``(c, h)``; gates ``i``, ``f``, ``o``; candidate ``g``;
  c' = f ⊙ c + i ⊙ g, h' = o ⊙ ψ(c') (Hochreiter & Schmidhuber, 1997; Gers et al., 2000).
  ``normalise=True`` replaces f, i by f/(f + i), i/(f + i) (Feng et al., 2024, minLSTM).

Candidate activations φ: ``tanh``, ``identity``, ``relu``, ``silu`` and ``g``, Feng et al.'s
positive map g(v) = v + 0.5 for v ≥ 0, σ(v) otherwise. A design none of whose gates nor
candidate reads ``h`` (or ``c``) is a linear recurrence h_t = a_t ⊙ h_{t−1} + b_t, which the
parallel scan can run.

How a gate or the candidate reads h (:data:`Recurrence`), written R(h) above as U h:

* ``full``: U h, an H × H kernel (the classic designs);
* ``diagonal``: u ⊙ h (Li et al., 2018, IndRNN: h' = ReLU(W x + u ⊙ h + b), with
  |u| ≤ ``diagonal_bound``, 2^(1/T) for training length T, projected after every step);
* ``block:k``: k block-diagonal heads of H/k × H/k (Beck et al., 2024, sLSTM);
* ``none``: no recurrent term.

Further axes of the LSTM family:

* peepholes p ⊙ c in a gate's pre-activation (Gers & Schmidhuber, 2000), reading c_{t−1}
  (``"previous"``) or, for the output gate only, c_t (``"current"``); Greff et al. (2017)'s
  vanilla LSTM: i, f previous, o current;
* a shifted coupling ``Coupled("f", shift=β)``: i = 1 − σ(s_f − β), s_f the forget gate's
  pre-activation (van der Westhuizen & Lasenby, 2018, JANET, β = 1);
* a learned lower bound on the forget gate, f = γ_l + (1 − γ_l) σ(W_f x + b_f), with γ_l
  rising over the L layers of a model: γ = cumsum(softmax(Γ)) − softmax(Γ)_1 over the layers,
  Γ ∈ R^{L×H} learned, so γ_1 = 0 (Qin et al., 2023, HGRN; ``forget_lower_bound``);
* exponential gating with a stabiliser m and a normaliser n in the carry (c, n, m, h)
  (Beck et al., 2024, sLSTM; ``gating="exponential"`` with ``output="normalised"``):
  m' = max(ĩ, log σ(f̃) + m), i' = exp(ĩ − m'), f' = exp(log σ(f̃) + m − m'),
  c' = f' ⊙ c + i' ⊙ φ(v_g), n' = f' ⊙ n + i', h' = o ⊙ ψ(c' / n'), ĩ and f̃ the gates'
  pre-activations; a fresh or restarted carry is all zeros;
* the highway output (Lei et al., 2018, SRU): h' = o ⊙ ψ(c') + (1 − o) ⊙ √3 · x̂, x̂ = x where
  I = H, else W_skip x.

Inputs over time, for any design (what every gate and the candidate read as "x"):

* ``input_window=k``: the dense window [x_{t−k+1}, …, x_t], so W x is W¹x_{t−k+1} + … + W^k x_t
  (Bradbury et al., 2016, QRNN: k = 2);
* ``short_conv=k``: x̂_t = Σ_j w_j ⊙ x_{t−j} + b_conv, a depthwise causal convolution of width
  k before the gates (De et al., 2024, Griffin: k = 4).

The last k − 1 inputs travel in the carry, ``(state, inputs)``, and a reset zeroes them.

Greff et al.'s full gate recurrence (FGR), where every gate also reads the previous step's
gate values, is not in the space: it needs the gate values in the carry.
Matrix-state designs (GLA, mLSTM, HGRN2) and Mamba's N-expanded selective state are not in it
either: their state is a matrix (or N vectors) per channel updated by outer products, where
every point here keeps an H-wide state updated element-wise after at most one matmul with h.

Initialisation options of a design: each gate's constant ``bias_init`` (the LSTM forget bias
1 of Jozefowicz et al., 2015, or 0); ``chrono_t_max`` for chrono initialisation (Tallec &
Ollivier, 2018; see :attr:`GateDesign.chrono_gate`); ``recurrent_init`` orthogonal (as Flax),
identity (Le et al., 2015) or LeCun-normal; ``learn_initial_state`` for a learned h_0 (and
c_0) that starts every sequence and every reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Family = Literal["gru", "lstm"]
Activation = Literal["tanh", "identity", "relu", "g", "silu"]
Recurrence = bool | str
"""How a gate or candidate reads h: ``True`` or ``"full"`` (U h, an H × H kernel), ``"diagonal"``
(u ⊙ h, IndRNN), ``"block:k"`` (k block-diagonal heads, sLSTM), ``False`` or ``"none"``."""
RecurrenceKind = Literal["full", "diagonal", "block", "none"]

GATE_NAMES: dict[str, tuple[str, ...]] = {"gru": ("z", "r"), "lstm": ("i", "f", "o")}
CANDIDATE_NAME: dict[str, str] = {"gru": "h", "lstm": "g"}


def recurrence_kind(h: Recurrence) -> tuple[RecurrenceKind, int]:
    """(kind, heads) of a :data:`Recurrence`; one clear line for anything else."""
    if h is True or h == "full":
        return "full", 1
    if h is False or h == "none":
        return "none", 0
    if h == "diagonal":
        return "diagonal", 0
    heads = h.removeprefix("block:") if isinstance(h, str) else ""
    if isinstance(h, str) and h.startswith("block:") and heads.isdigit() and int(heads) > 0:
        return "block", int(heads)
    raise ValueError(
        f"unknown recurrence {h!r}; valid: full (True), diagonal, block:k (k heads), none (False)"
    )


@dataclass(frozen=True)
class Gate:
    """A learned gate σ(W x + R(h) + b) fed by any subset of the input, the state and a bias,
    R(h) as ``h`` says (:data:`Recurrence`).

    A gate fed by the bias alone is a learned vector σ(b) (Dey & Salem, 2017, GRU3).
    """

    x: bool = True
    h: Recurrence = True
    bias: bool = True
    bias_init: float = 0.0
    peephole: Literal["previous", "current"] | None = None

    def __post_init__(self) -> None:
        recurrence_kind(self.h)
        if self.peephole not in (None, "previous", "current"):
            raise ValueError(f"unknown peephole {self.peephole!r}; valid: previous, current")


@dataclass(frozen=True)
class Fixed:
    """A removed gate, fixed to a constant (an LSTM without forget gate has f ≡ 1)."""

    value: float


@dataclass(frozen=True)
class Tied:
    """The same values as another gate (MGU's single gate both updates and resets)."""

    gate: str


@dataclass(frozen=True)
class Coupled:
    """One minus another gate (the coupled input-forget gate, CIFG: i = 1 − f); with a
    ``shift`` β, one minus that gate at its pre-activation s shifted: 1 − σ(s − β) (JANET,
    van der Westhuizen & Lasenby, 2018, β = 1)."""

    gate: str
    shift: float = 0.0


GateSource = Gate | Fixed | Tied | Coupled


@dataclass(frozen=True)
class Candidate:
    """The candidate φ(W x + U h + b); see the module docstring for where the reset applies."""

    x: bool = True
    h: Recurrence = True
    activation: Activation = "tanh"
    bias: bool = True

    def __post_init__(self) -> None:
        recurrence_kind(self.h)


@dataclass(frozen=True)
class GateDesign:
    """One point of the gate-design space. See the module docstring for the equations."""

    name: str
    family: Family
    gates: tuple[tuple[str, GateSource], ...]
    candidate: Candidate = field(default_factory=Candidate)
    update: Literal["keep", "write", "signed", "rg_lru"] = "keep"
    reset: Literal["after", "before"] = "after"
    normalise: bool = False
    output_activation: Literal["tanh", "identity"] = "tanh"
    output: Literal["gated", "highway", "normalised"] = "gated"
    gating: Literal["sigmoid", "exponential"] = "sigmoid"
    recurrent_init: Literal["orthogonal", "identity", "lecun_normal"] = "orthogonal"
    chrono_t_max: float | None = None
    learn_initial_state: bool = False
    chrono_from_length: bool = False
    diagonal_bound: float | None = None
    diagonal_bound_from_length: bool = False
    input_window: int = 1
    short_conv: int = 0
    forget_lower_bound: bool = False
    paper: str = ""

    def __post_init__(self) -> None:
        names = tuple(name for name, _ in self.gates)
        if set(names) != set(GATE_NAMES[self.family]) or len(names) != len(set(names)):
            raise ValueError(
                f"design {self.name!r}: a {self.family} design names the gates "
                f"{GATE_NAMES[self.family]}, got {names}"
            )
        for name, source in self.gates:
            if isinstance(source, Tied | Coupled):
                target = self.gate(source.gate)
                if not isinstance(target, Gate | Fixed):
                    raise ValueError(f"design {self.name!r}: gate {name} refers to a non-gate")
            if isinstance(source, Coupled) and source.shift and not isinstance(target, Gate):
                raise ValueError(f"design {self.name!r}: shifted gate {name} needs a learned gate")
        peepholes = {n: s.peephole for n, s in self.learned_gates if s.peephole}
        if peepholes and self.family != "lstm":
            raise ValueError(f"design {self.name!r}: peepholes read the LSTM family's cell c")
        if any(where == "current" and n != "o" for n, where in peepholes.items()):
            raise ValueError(
                f"design {self.name!r}: only the output gate may read the current cell c_t"
            )
        if self.output == "highway" and self.family != "lstm":
            raise ValueError(f"design {self.name!r}: the highway output is the LSTM family's")
        if self.input_window < 1 or self.short_conv < 0 or self.short_conv == 1:
            raise ValueError(
                f"design {self.name!r}: input_window is a number of taps >= 1 and short_conv a "
                f"width >= 2 (0: none), got {self.input_window} and {self.short_conv}"
            )
        if (self.gating == "exponential") != (self.output == "normalised") or (
            self.gating == "exponential"
            and (
                self.family != "lstm"
                or not all(isinstance(self.gate(n), Gate) for n in ("i", "f"))
                or self.normalise
                or peepholes
                or self.learn_initial_state
            )
        ):
            raise ValueError(
                f"design {self.name!r}: exponential gating goes with the normalised output and "
                "needs the LSTM family's learned i and f, without peepholes, minLSTM's "
                "normalisation or a learned initial state"
            )
        if self.forget_lower_bound and (
            self.family != "lstm" or not isinstance(self.gate("f"), Gate)
        ):
            raise ValueError(
                f"design {self.name!r}: a forget-gate lower bound needs the LSTM family's "
                "learned forget gate"
            )
        if self.input_window > 1 and self.short_conv:
            raise ValueError(f"design {self.name!r}: choose input_window or short_conv, not both")
        if self.update == "rg_lru" and (
            self.family != "gru"
            or self.reads_h(self.candidate_name)
            or not all(isinstance(self.gate(n), Gate) for n in ("z", "r"))
        ):
            raise ValueError(
                f"design {self.name!r}: the RG-LRU update needs learned z and r gates and a "
                "candidate that does not read h"
            )

    @property
    def chrono_gate(self) -> tuple[str, int] | None:
        """(the learned gate that keeps the old state, the sign its keeping bias takes).

        Chrono initialisation (Tallec & Ollivier, 2018) sets the bias of the gate that *keeps*
        the old state to log U[1, T_max − 1], and ``gate_bias`` sets it to a constant: the
        LSTM's f (and its i to the negative), the GRU's z where z keeps (``update="keep"``,
        sign +1); where z *writes* the candidate (mgu, min_gru) its bias gets the negative
        (sign −1). None where no learned gate keeps the state (docs/design.md §2).
        """
        if self.family == "lstm":
            return ("f", 1) if isinstance(self.gate("f"), Gate) else None
        if not isinstance(self.gate("z"), Gate) or self.update == "rg_lru":
            return None
        return ("z", 1) if self.update == "keep" else ("z", -1)

    @property
    def input_history(self) -> int:
        """How many past inputs the carry holds (k − 1 of a window or a convolution)."""
        return max(self.input_window, self.short_conv, 1) - 1

    def gate(self, name: str) -> GateSource:
        return dict(self.gates)[name]

    def recurrence(self, name: str) -> tuple[RecurrenceKind, int]:
        """(kind, heads) of how the learned gate or the candidate ``name`` reads h."""
        source = self.candidate if name == self.candidate_name else self.gate(name)
        return recurrence_kind(source.h) if isinstance(source, Gate | Candidate) else ("none", 0)

    def reading(self, kind: RecurrenceKind) -> tuple[str, ...]:
        """The learned gates, then the candidate, that read h in that way."""
        names = [n for n, _ in self.learned_gates] + [self.candidate_name]
        return tuple(n for n in names if self.recurrence(n)[0] == kind)

    @property
    def learned_gates(self) -> tuple[tuple[str, Gate], ...]:
        return tuple((n, s) for n, s in self.gates if isinstance(s, Gate))

    @property
    def candidate_name(self) -> str:
        return CANDIDATE_NAME[self.family]

    @property
    def has_recurrent_bias(self) -> bool:
        """Whether the candidate has the recurrent bias c_h of the reset-after form."""
        if self.family != "gru" or self.reset != "after" or not self.reads_h(self.candidate_name):
            return False
        return not isinstance(self.gate("r"), Fixed)

    @property
    def reads_state(self) -> bool:
        """Whether any gate or the candidate depends on the previous state (h, or the cell c
        through a peephole)."""
        names = (*dict(self.learned_gates), self.candidate_name)
        peepholes = self.peepholes("previous") + self.peepholes("current")
        stabilised = self.gating == "exponential"  # m' = max(·): no linear recurrence
        return any(self.reads_h(n) for n in names) or bool(peepholes) or stabilised

    def peepholes(self, where: Literal["previous", "current"]) -> tuple[str, ...]:
        """The learned gates that read c_{t−1} (``previous``) or c_t (``current``)."""
        return tuple(n for n, s in self.learned_gates if s.peephole == where)

    def reads_h(self, name: str) -> bool:
        """Whether the learned gate or the candidate ``name`` reads h at all."""
        return self.recurrence(name)[0] != "none"

    @property
    def parallel_scan(self) -> Literal["log", "linear"] | None:
        """How the associative scan runs this design, or None when it cannot.

        A positive candidate (φ = g) and sigmoid gates give positive coefficients, so the scan
        works in log space as the authors' code does (Feng et al., 2024); otherwise, and for a
        signed decay, in linear space.
        """
        if self.reads_state:
            return None
        positive = self.candidate.activation == "g" and self.update != "signed"
        positive = positive and not self.forget_lower_bound  # its log-space f is not written
        return "log" if positive else "linear"


def _gru(name: str, paper: str, z: GateSource, r: GateSource, **kw) -> GateDesign:
    return GateDesign(name=name, family="gru", gates=(("z", z), ("r", r)), paper=paper, **kw)


def _lstm(name: str, paper: str, i: GateSource, f: GateSource, o: GateSource, **kw) -> GateDesign:
    return GateDesign(
        name=name, family="lstm", gates=(("i", i), ("f", f), ("o", o)), paper=paper, **kw
    )


_LSTM = "Hochreiter & Schmidhuber, 1997; forget gate: Gers et al., 2000"
_GREFF = "Greff et al., 2017, with peepholes (Gers & Schmidhuber, 2000)"
# Greff et al.'s vanilla LSTM: i and f peep at c_{t−1}, o at c_t; forget bias 1 as ``lstm``.
_PEEPHOLE_GATES = (
    Gate(peephole="previous"),
    Gate(bias_init=1.0, peephole="previous"),
    Gate(peephole="current"),
)
_MIN = Candidate(h=False, activation="g")

PRESETS: dict[str, GateDesign] = {
    d.name: d
    for d in [
        _gru("rnn_tanh", "Elman, 1990 (ungated baseline)", Fixed(0.0), Fixed(1.0)),
        _gru("gru", "Cho et al., 2014 (reset after, as cuDNN/Flax/PyTorch)", Gate(), Gate()),
        _gru(
            "gru_reset_before",
            "Cho et al., 2014 (original reset-before form)",
            Gate(),
            Gate(),
            reset="before",
        ),
        _gru(
            "gru_no_reset", "Ravanelli et al., 2018 (without ReLU/batch-norm)", Gate(), Fixed(1.0)
        ),
        _gru(
            "mgu",
            "Zhou et al., 2016 (as written)",
            Gate(),
            Tied("z"),
            reset="before",
            update="write",
        ),
        _gru(
            "mgu_flax",
            "Flax MGUCell (not Zhou's coupling; google/flax#4608)",
            Gate(bias_init=1.0),
            Tied("z"),
        ),
        _gru(
            "min_gru",
            "Feng et al., 2024 (minGRU, with g, log-space scan)",
            Gate(h=False),
            Fixed(1.0),
            candidate=_MIN,
            update="write",
        ),
        _gru(
            "min_gru_signed",
            "Grazzi et al., 2024 (minGRU with a decay 1 − 2z in [−1, 1], linear-space scan)",
            Gate(h=False),
            Fixed(1.0),
            candidate=_MIN,
            update="signed",
        ),
        _gru(
            "rg_lru",
            "De et al., 2024 (RG-LRU, the recurrence of Hawk and Griffin, without its block)",
            Gate(h=False),
            Gate(h=False),
            candidate=Candidate(h=False, activation="identity"),
            update="rg_lru",
        ),
        _gru(
            "min_gru_linear",
            "Feng et al., 2024, eq. 3 (no g, linear-space scan)",
            Gate(h=False),
            Fixed(1.0),
            candidate=Candidate(h=False, activation="identity"),
            update="write",
        ),
        _gru(
            "indrnn",
            "Li et al., 2018 (IndRNN: h' = ReLU(W x + u ⊙ h + b), u within ±2^(1/T))",
            Fixed(0.0),
            Fixed(1.0),
            candidate=Candidate(h="diagonal", activation="relu"),
            diagonal_bound_from_length=True,
        ),
        _gru("gru1", "Dey & Salem, 2017 (gates from U h + b)", Gate(x=False), Gate(x=False)),
        _gru(
            "gru2",
            "Dey & Salem, 2017 (gates from U h)",
            Gate(x=False, bias=False),
            Gate(x=False, bias=False),
        ),
        _gru(
            "gru3",
            "Dey & Salem, 2017 (gates from b)",
            Gate(x=False, h=False),
            Gate(x=False, h=False),
        ),
        _lstm(
            "lstm",
            _LSTM + "; forget bias 1: Jozefowicz et al., 2015",
            Gate(),
            Gate(bias_init=1.0),
            Gate(),
        ),
        _lstm(
            "min_lstm",
            "Feng et al., 2024 (minLSTM, normalised gates, log-space scan)",
            Gate(h=False),
            Gate(h=False),
            Fixed(1.0),
            candidate=_MIN,
            normalise=True,
            output_activation="identity",
        ),
        _lstm(
            "lstm_no_input_gate",
            "after Greff et al., 2017 (NIG), without peepholes",
            Fixed(1.0),
            Gate(bias_init=1.0),
            Gate(),
        ),
        _lstm(
            "lstm_no_forget_gate",
            "after Greff et al., 2017 (NFG), without peepholes",
            Gate(),
            Fixed(1.0),
            Gate(),
        ),
        _lstm(
            "lstm_no_output_gate",
            "after Greff et al., 2017 (NOG), without peepholes",
            Gate(),
            Gate(bias_init=1.0),
            Fixed(1.0),
        ),
        _lstm(
            "lstm_cifg",
            "after Greff et al., 2017 (CIFG: i = 1 − f), without peepholes",
            Coupled("f"),
            Gate(bias_init=1.0),
            Gate(),
        ),
        _lstm(
            "lstm_forget_bias_0", "Jozefowicz et al., 2015 (forget bias 0)", Gate(), Gate(), Gate()
        ),
        _lstm("lstm_peephole", _GREFF + " (V, vanilla)", *_PEEPHOLE_GATES),
        _lstm("lstm_peephole_nig", _GREFF + " (NIG)", Fixed(1.0), *_PEEPHOLE_GATES[1:]),
        _lstm(
            "lstm_peephole_nfg",
            _GREFF + " (NFG)",
            _PEEPHOLE_GATES[0],
            Fixed(1.0),
            _PEEPHOLE_GATES[2],
        ),
        _lstm("lstm_peephole_nog", _GREFF + " (NOG)", *_PEEPHOLE_GATES[:2], Fixed(1.0)),
        _lstm(
            "lstm_peephole_niaf",
            _GREFF + " (NIAF: no input activation)",
            *_PEEPHOLE_GATES,
            candidate=Candidate(activation="identity"),
        ),
        _lstm(
            "lstm_peephole_noaf",
            _GREFF + " (NOAF: no output activation)",
            *_PEEPHOLE_GATES,
            output_activation="identity",
        ),
        _lstm(
            "lstm_peephole_cifg",
            _GREFF + " (CIFG: i = 1 − f)",
            Coupled("f"),
            *_PEEPHOLE_GATES[1:],
        ),
        _lstm(
            "janet",
            "van der Westhuizen & Lasenby, 2018 (JANET: forget gate only, i = 1 − σ(s − 1))",
            Coupled("f", shift=1.0),
            Gate(),
            Fixed(1.0),
            output_activation="identity",
            chrono_from_length=True,
        ),
        _lstm(
            "slstm",
            "Beck et al., 2024 (sLSTM: exponential gates, 4 block-diagonal heads, h = o ⊙ c / n)",
            Gate(h="block:4"),
            Gate(h="block:4", bias_init=1.0),
            Gate(h="block:4"),
            candidate=Candidate(h="block:4"),
            output_activation="identity",
            output="normalised",
            gating="exponential",
        ),
        _lstm(
            "hgrn",
            "Qin et al., 2023 (HGRN, real form: f = γ_l + (1 − γ_l) σ(W x + b), γ_l per layer)",
            Coupled("f"),
            Gate(h=False),
            Gate(h=False),
            candidate=Candidate(h=False, activation="silu"),
            output_activation="identity",
            forget_lower_bound=True,
        ),
        _lstm(
            "qrnn",
            "Bradbury et al., 2016 (QRNN, fo-pooling, window 2; without zoneout)",
            Coupled("f"),
            Gate(h=False),
            Gate(h=False),
            candidate=Candidate(h=False),
            output_activation="identity",
            input_window=2,
        ),
        _lstm(
            "sru",
            "Lei et al., 2018 (SRU: gates from x and c_{t−1}, highway output)",
            Coupled("f"),
            Gate(h=False, peephole="previous"),
            Gate(h=False, peephole="previous"),
            candidate=Candidate(h=False, activation="identity", bias=False),
            output_activation="identity",
            output="highway",
        ),
    ]
}


def get_design(name: str | GateDesign) -> GateDesign:
    """The preset of that name (a GateDesign passes through); one clear line otherwise."""
    if isinstance(name, GateDesign):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown cell {name!r}; valid cells: {', '.join(PRESETS)}")
    return PRESETS[name]


__all__ = [
    "PRESETS",
    "Candidate",
    "Coupled",
    "Fixed",
    "Gate",
    "GateDesign",
    "Tied",
    "get_design",
    "replace",
]
