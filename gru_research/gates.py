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
  ``reset="after"``:  h̃ = φ(W_h x + b_h + r ⊙ (U_h h + c_h))   (cuDNN, Flax, PyTorch)
  ``reset="before"``: h̃ = φ(W_h x + U_h (r ⊙ h) + b_h)          (Cho et al., 2014)
  ``c_h`` exists only for a learned reset gate applied after the matmul.
* ``"lstm"``: carry ``(c, h)``; gates ``i``, ``f``, ``o``; candidate ``g``;
  c' = f ⊙ c + i ⊙ g, h' = o ⊙ ψ(c') (Hochreiter & Schmidhuber, 1997; Gers et al., 2000).
  ``normalise=True`` replaces f, i by f/(f + i), i/(f + i) (Feng et al., 2024, minLSTM).

Candidate activations φ: ``tanh``, ``identity``, ``relu`` and ``g``, Feng et al.'s positive
map g(v) = v + 0.5 for v ≥ 0, σ(v) otherwise. A design none of whose gates nor candidate reads
``h`` is a linear recurrence h_t = a_t ⊙ h_{t−1} + b_t, which the parallel scan can run.

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
Activation = Literal["tanh", "identity", "relu", "g"]

GATE_NAMES: dict[str, tuple[str, ...]] = {"gru": ("z", "r"), "lstm": ("i", "f", "o")}
CANDIDATE_NAME: dict[str, str] = {"gru": "h", "lstm": "g"}


@dataclass(frozen=True)
class Gate:
    """A learned gate σ(W x + U h + b) fed by any subset of the input, the state and a bias.

    A gate fed by the bias alone is a learned vector σ(b) (Dey & Salem, 2017, GRU3).
    """

    x: bool = True
    h: bool = True
    bias: bool = True
    bias_init: float = 0.0


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
    """One minus another gate (the coupled input-forget gate, CIFG: i = 1 − f)."""

    gate: str


GateSource = Gate | Fixed | Tied | Coupled


@dataclass(frozen=True)
class Candidate:
    """The candidate φ(W x + U h + b); see the module docstring for where the reset applies."""

    x: bool = True
    h: bool = True
    activation: Activation = "tanh"


@dataclass(frozen=True)
class GateDesign:
    """One point of the gate-design space. See the module docstring for the equations."""

    name: str
    family: Family
    gates: tuple[tuple[str, GateSource], ...]
    candidate: Candidate = field(default_factory=Candidate)
    update: Literal["keep", "write"] = "keep"
    reset: Literal["after", "before"] = "after"
    normalise: bool = False
    output_activation: Literal["tanh", "identity"] = "tanh"
    recurrent_init: Literal["orthogonal", "identity", "lecun_normal"] = "orthogonal"
    chrono_t_max: float | None = None
    learn_initial_state: bool = False
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
        if not isinstance(self.gate("z"), Gate):
            return None
        return ("z", 1) if self.update == "keep" else ("z", -1)

    def gate(self, name: str) -> GateSource:
        return dict(self.gates)[name]

    @property
    def learned_gates(self) -> tuple[tuple[str, Gate], ...]:
        return tuple((n, s) for n, s in self.gates if isinstance(s, Gate))

    @property
    def candidate_name(self) -> str:
        return CANDIDATE_NAME[self.family]

    @property
    def has_recurrent_bias(self) -> bool:
        """Whether the candidate has the recurrent bias c_h of the reset-after form."""
        if self.family != "gru" or self.reset != "after" or not self.candidate.h:
            return False
        return not isinstance(self.gate("r"), Fixed)

    @property
    def reads_state(self) -> bool:
        """Whether any gate or the candidate depends on the previous state."""
        return self.candidate.h or any(s.h for _, s in self.learned_gates)

    @property
    def parallel_scan(self) -> Literal["log", "linear"] | None:
        """How the associative scan runs this design, or None when it cannot.

        A positive candidate (φ = g) and sigmoid gates give positive coefficients, so the scan
        works in log space as the authors' code does (Feng et al., 2024); otherwise in linear
        space.
        """
        if self.reads_state:
            return None
        return "log" if self.candidate.activation == "g" else "linear"


def _gru(name: str, paper: str, z: GateSource, r: GateSource, **kw) -> GateDesign:
    return GateDesign(name=name, family="gru", gates=(("z", z), ("r", r)), paper=paper, **kw)


def _lstm(name: str, paper: str, i: GateSource, f: GateSource, o: GateSource, **kw) -> GateDesign:
    return GateDesign(
        name=name, family="lstm", gates=(("i", i), ("f", f), ("o", o)), paper=paper, **kw
    )


_LSTM = "Hochreiter & Schmidhuber, 1997; forget gate: Gers et al., 2000"
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
            "min_gru_linear",
            "Feng et al., 2024, eq. 3 (no g, linear-space scan)",
            Gate(h=False),
            Fixed(1.0),
            candidate=Candidate(h=False, activation="identity"),
            update="write",
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
            "Greff et al., 2017 (NIG)",
            Fixed(1.0),
            Gate(bias_init=1.0),
            Gate(),
        ),
        _lstm("lstm_no_forget_gate", "Greff et al., 2017 (NFG)", Gate(), Fixed(1.0), Gate()),
        _lstm(
            "lstm_no_output_gate",
            "Greff et al., 2017 (NOG)",
            Gate(),
            Gate(bias_init=1.0),
            Fixed(1.0),
        ),
        _lstm(
            "lstm_cifg",
            "Greff et al., 2017 (CIFG: i = 1 − f)",
            Coupled("f"),
            Gate(bias_init=1.0),
            Gate(),
        ),
        _lstm(
            "lstm_forget_bias_0", "Jozefowicz et al., 2015 (forget bias 0)", Gate(), Gate(), Gate()
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
