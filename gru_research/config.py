"""A run's configuration: :class:`TrainConfig`, every option with its help beside it.

This module imports no JAX, so ``gru-research --help`` and the option checks are instant; the
task, the design and the model a config describes are built on demand
(:meth:`TrainConfig.task_config`, :meth:`TrainConfig.design`, :meth:`TrainConfig.model_config`).
The command line (:mod:`gru_research.cli`) makes one option per field from the field's
``help`` and ``choices`` metadata, and a sweep file's parameters are these fields' names. Every
field is checked on construction against its type hint, its choices or its ``domain`` (a
numeric field's valid values), whoever builds the config: one line naming the field and what it
takes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gru_research.gates import PRESETS, GateDesign, get_design

if TYPE_CHECKING:
    from gru_research.model import ModelConfig
    from gru_research.tasks import Task, TaskConfig

TASKS = ("copy", "adding", "selective_copy", "lm", "parity", "mod_sum", "cycle_nav", "music")
STATE_TRACKING = ("parity", "mod_sum", "cycle_nav")
ANSWERS = ("last", "every")
MUSIC_DATASETS = ("jsb", "nottingham", "musedata", "piano_midi")
SCAN_KINDS = ("auto", "sequential", "parallel")
PRECISIONS = ("float32", "bfloat16")
BLOCKS = ("plain", "residual")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
RECURRENT_INITS = ("orthogonal", "identity", "lecun_normal")
SCHEDULES = ("constant", "cosine", "epoch_decay")
BIDIRECTIONAL = ("concat", "sum")
TASK_SEQ_LEN = {"copy": 20, "adding": 50, "selective_copy": 64, "lm": 64}  # small defaults
TASK_SEQ_LEN |= dict.fromkeys(STATE_TRACKING, 40)  # the longest training length
PROVENANCE_FIELDS = ("data_dir", "tfds_data_dir", "tfds_manual_dir")
"""Where the data was found: recorded, but not part of a run's identity (moving the data never
blocks a resume, and tables do not split on it)."""


@dataclass(frozen=True)
class Domain:
    """The values a numeric option may take: ``words`` for the error line, ``contains`` to test."""

    words: str
    contains: Callable[[float], bool]


POSITIVE_INT = Domain("a positive integer", lambda v: v >= 1)
NON_NEGATIVE_INT = Domain("an integer >= 0", lambda v: v >= 0)
POSITIVE = Domain("a finite number > 0", lambda v: 0 < v < math.inf)
NON_NEGATIVE = Domain("a finite number >= 0", lambda v: 0 <= v < math.inf)
FINITE = Domain("a finite number", lambda v: -math.inf < v < math.inf)
PROBABILITY = Domain("in [0, 1)", lambda v: 0 <= v < 1)  # a dropout rate
OPEN_UNIT = Domain("in (0, 1)", lambda v: 0 < v < 1)
DECAY_FACTOR = Domain("in (0, 1]", lambda v: 0 < v <= 1)
CHRONO_T_MAX = Domain("a finite number > 2", lambda v: 2 < v < math.inf)
CLIP = Domain("a finite number > 0 (0: off)", lambda v: 0 < v < math.inf)
OFF_AT_ZERO = ("clip_norm", "clip_value")
"""Options where 0 means off (None), from the command line, a sweep file or Python alike."""
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
VMAPPABLE = (
    "lr",
    "weight_decay",
    "rms_decay",
    "clip_value",
    "clip_norm",
    "lr_decay",
    "dropout",
    "recurrent_dropout",
    "gate_bias",
    "init_scale",
    "chrono_t_max",
)
"""Fields whose values can train in one program, vmapped beside the seeds: numbers that enter
the initialisation, the optimiser or the dropout and change no shape or branch
(docs/design.md §5.5)."""


def option(
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
    domain: Domain | None = None,
) -> Any:
    """A config field with its command-line help (and valid choices or domain) beside it."""
    return field(default=default, metadata={"help": help, "choices": choices, "domain": domain})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; the run folder's ``config.json`` holds it as a dict."""

    task: str = option("copy", "the task", TASKS)
    cell: str = option("gru", "the gate design (see `gru-research designs`)", tuple(PRESETS))
    seed: int = option(
        0, "first seed; seeds SEED .. SEED+SEEDS-1 train at once, vmapped", domain=NON_NEGATIVE_INT
    )
    seeds: int = option(1, "how many seeds", domain=POSITIVE_INT)
    steps: int = option(
        1000, "training steps (with --epochs: set from the corpus)", domain=POSITIVE_INT
    )
    seq_len: int | None = option(
        None,
        "copy/adding: T; selective_copy: L; lm: window length; parity/mod_sum/cycle_nav: the "
        "longest training length (default: per task)",
        domain=POSITIVE_INT,
    )
    num_tokens: int = option(16, "selective_copy: tokens to recall (K)", domain=POSITIVE_INT)
    modulus: int = option(
        5,
        "mod_sum: the modulus m; cycle_nav: the cycle's length",
        domain=Domain("an integer >= 2", lambda v: v >= 2),
    )
    answer: str = option(
        "last",
        "parity/mod_sum/cycle_nav: answer at each sequence's last step or every step",
        ANSWERS,
    )
    hidden: int = option(64, "hidden size H of every recurrent layer", domain=POSITIVE_INT)
    param_budget: int | None = option(
        None,
        "size every design to the largest hidden size within this many parameters",
        domain=POSITIVE_INT,
    )
    size_like: str | None = option(
        None,
        "size the design to the largest hidden size within the parameters of this design at "
        "--hidden (Arjovsky et al.'s copy: every design at the LSTM 40's count)",
        tuple(PRESETS),
    )
    one_hot: bool = option(
        False, "token tasks: tokens enter the gates one-hot, no embedding (the uRNN code's copy)"
    )
    layers: int = option(1, "recurrent layers", domain=POSITIVE_INT)
    block: str = option("plain", "plain stack or the residual block of Feng et al. (2024)", BLOCKS)
    scan: str = option("auto", "auto picks the parallel scan only off the CPU", SCAN_KINDS)
    bidirectional: str | None = option(
        None, "a forward and a reversed layer, concatenated or summed", BIDIRECTIONAL
    )
    dropout: float = option(
        0.0,
        "dropout on every layer's input and the output (Zaremba et al., 2014)",
        domain=PROBABILITY,
    )
    recurrent_dropout: float = option(
        0.0,
        "variational dropout on h, one mask per sequence (Gal & Ghahramani, 2016)",
        domain=PROBABILITY,
    )
    gate_bias: float | None = option(
        None, "constant bias of the gate that keeps the old state (LSTM f, GRU z)", domain=FINITE
    )
    chrono_t_max: float | None = option(
        None,
        "chrono initialisation with this T_max (Tallec & Ollivier, 2018)",
        domain=CHRONO_T_MAX,
    )
    recurrent_init: str | None = option(
        None, "recurrent kernels (default: the design's, orthogonal)", RECURRENT_INITS
    )
    learn_initial_state: bool = option(False, "learn h_0 (and c_0)")
    stateful: bool = option(
        False, "lm: B contiguous streams, windows in order, the carry crossing windows (TBPTT)"
    )
    epochs: int | None = option(
        None,
        "stateful lm: train this many epochs (sets steps; evaluates every epoch)",
        domain=POSITIVE_INT,
    )
    lr_decay: float = option(
        1.0,
        "epoch_decay schedule: the factor applied each epoch after lr_decay_after",
        domain=DECAY_FACTOR,
    )
    lr_decay_after: int = option(
        0, "epoch_decay schedule: epochs at the full learning rate", domain=NON_NEGATIVE_INT
    )
    init_scale: float | None = option(
        None,
        "every parameter from U[-a, a] (the PTB protocol of Zaremba et al., 2014)",
        domain=POSITIVE,
    )
    loss_sum_over_time: bool = option(
        False, "train on the loss summed over the T steps (the PTB lr-1 convention)"
    )
    precision: str = option(
        "float32", "bfloat16: matmuls in bfloat16, accumulated in float32", PRECISIONS
    )
    remat: bool = option(
        False, "recompute each step's activations in the backward pass (long sequences)"
    )
    batch_size: int = option(32, "sequences per training step (per seed)", domain=POSITIVE_INT)
    optimizer: str = option(
        "adam",
        "rmsprop is the Arjovsky et al. (2016) protocol (pair with --clip-value 1)",
        OPTIMIZERS,
    )
    lr: float = option(
        1e-3, "learning rate (the peak, with a warm-up or a schedule)", domain=POSITIVE
    )
    weight_decay: float = option(0.0, "adamw: decoupled weight decay", domain=NON_NEGATIVE)
    rms_decay: float = option(
        0.9, "rmsprop: decay of the squared-gradient average", domain=OPEN_UNIT
    )
    schedule: str = option(
        "constant",
        "learning-rate schedule after the warm-up (epoch_decay: needs --epochs)",
        SCHEDULES,
    )
    warmup_steps: int = option(
        0, "linear warm-up from 0 to lr over this many steps", domain=NON_NEGATIVE_INT
    )
    clip_norm: float | None = option(1.0, "global-norm clipping (0: off)", domain=CLIP)
    clip_value: float | None = option(None, "element-wise clipping (0: off)", domain=CLIP)
    log_every: int = option(
        50, "log the mean training metrics every this many steps", domain=POSITIVE_INT
    )
    eval_every: int = option(
        250, "evaluate on the validation split every this many steps", domain=POSITIVE_INT
    )
    eval_batches: int = option(
        4, "synthetic tasks: batches drawn per evaluation", domain=POSITIVE_INT
    )
    checkpoint_every: int = option(
        500, "save a checkpoint every this many steps", domain=POSITIVE_INT
    )
    corpus: str = option(
        "tiny_shakespeare",
        "lm: a TFDS text dataset (default: the shipped tiny_shakespeare, offline), or ptb "
        "(words) or ptb_char (characters) from the data root",
    )
    dataset: str = option(
        "jsb",
        "music: JSB Chorales (shipped), or Nottingham, MuseData, Piano-midi from the data root",
        MUSIC_DATASETS,
    )
    text_file: str | None = option(None, "lm: a plain text file instead of TFDS")
    tfds_data_dir: str | None = option(None, "lm: where TFDS prepares data")
    tfds_manual_dir: str | None = option(None, "lm: the TFDS manual directory")
    data_dir: str | None = option(
        None,
        "the data root, one sub-folder per dataset (ptb/: Mikolov's ptb.*.txt files), or a "
        "dataset's own folder (default: $GRU_RESEARCH_DATA)",
    )
    data_checks: bool = option(
        True, "ptb, music: check the files' sizes and sha256 sums (--data-checks=false: off)"
    )

    def __post_init__(self) -> None:
        """Every field against its type, its choices or its domain, then the fields together:
        one line naming the field and what it takes."""
        for f in dataclasses.fields(self):
            check_type(f.name, getattr(self, f.name), field_types()[f.name])
        if self.seq_len is None and self.task in TASK_SEQ_LEN:
            object.__setattr__(self, "seq_len", TASK_SEQ_LEN[self.task])
        for name in OFF_AT_ZERO:
            if getattr(self, name) == 0:
                object.__setattr__(self, name, None)
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), f.metadata)
        if self.epochs is None and self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps must be below steps ({self.steps}), got {self.warmup_steps}"
            )
        if self.size_like is not None and self.param_budget is not None:
            raise ValueError("give param_budget or size_like, not both")
        if self.stateful and self.task != "lm":
            raise ValueError("stateful training (carried state across windows) needs --task lm")
        if self.epochs is not None and not self.stateful:
            raise ValueError("--epochs takes a positive count and needs --stateful (task lm)")
        if self.schedule == "epoch_decay" and self.epochs is None:
            raise ValueError("the epoch_decay schedule needs --epochs (stateful lm)")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))

    def identity(self) -> dict:
        """The fields that make a run what it is: all but where the data was found."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in PROVENANCE_FIELDS}

    def task_config(self) -> TaskConfig:
        from gru_research.tasks import TaskConfig

        return TaskConfig(
            name=self.task,
            seq_len=self.seq_len,
            num_tokens=self.num_tokens,
            modulus=self.modulus,
            answer=self.answer,
            corpus=self.corpus,
            dataset=self.dataset,
            text_file=self.text_file,
            tfds_data_dir=self.tfds_data_dir,
            tfds_manual_dir=self.tfds_manual_dir,
            data_dir=self.data_dir,
            data_checks=self.data_checks,
            eval_batches=self.eval_batches,
        )

    def design(self) -> GateDesign:
        """The preset with this run's initialisation options applied (docs/design.md §2)."""
        design = get_design(self.cell)
        options = {
            "chrono_t_max": self.chrono_t_max,
            "learn_initial_state": self.learn_initial_state or None,
            "recurrent_init": self.recurrent_init,
        }
        design = dataclasses.replace(design, **{k: v for k, v in options.items() if v})
        from_length = design.diagonal_bound_from_length or design.chrono_from_length
        if from_length and self.seq_len is None:
            raise ValueError(f"{self.cell} sets its initialisation from --seq-len; give one")
        if design.diagonal_bound_from_length and design.diagonal_bound is None:
            design = dataclasses.replace(design, diagonal_bound=2.0 ** (1.0 / self.seq_len))
        if design.chrono_from_length and design.chrono_t_max is None:
            design = dataclasses.replace(design, chrono_t_max=float(self.seq_len))
        if self.gate_bias is not None and design.chrono_gate is not None:
            gate, sign = design.chrono_gate  # where z writes, a keeping bias B is −B on z
            source = dataclasses.replace(design.gate(gate), bias_init=sign * self.gate_bias)
            design = dataclasses.replace(
                design, gates=tuple((n, source if n == gate else s) for n, s in design.gates)
            )
        return design

    def model_config(self, task: Task) -> ModelConfig:
        """The model; with ``param_budget``, the largest hidden size within that budget; with
        ``size_like``, within the parameter count of that design at ``hidden``."""
        from gru_research.model import ModelConfig, model_param_count

        def config(hidden: int, design: GateDesign | None = None) -> ModelConfig:
            return ModelConfig(
                cell=design or self.design(),
                input_size=task.input_size,
                vocab_size=task.vocab_size,
                hidden_size=hidden,
                output_size=task.output_size,
                num_layers=self.layers,
                block=self.block,
                scan=self.scan,
                bidirectional=self.bidirectional,
                dropout=self.dropout,
                recurrent_dropout=self.recurrent_dropout,
                precision=self.precision,
                remat=self.remat,
                one_hot=self.one_hot,
            )

        budget = self.param_budget
        if self.size_like is not None:
            anchor = dataclasses.replace(self, cell=self.size_like, size_like=None).design()
            budget = model_param_count(config(self.hidden, anchor))
        if budget is None:
            return config(self.hidden)
        low, high = 1, 4096  # the count grows with the hidden size: bisect
        if model_param_count(config(low)) > budget:
            raise ValueError(f"param_budget {budget} is below the smallest model")
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if model_param_count(config(mid)) <= budget else (low, mid - 1)
        return config(low)


@cache
def field_types() -> dict[str, Any]:
    """Each TrainConfig field's type hint (``int``, ``float | None``, ...)."""
    return typing.get_type_hints(TrainConfig)


def check_type(name: str, value: Any, hint: Any) -> None:
    """One line naming the field and its type unless ``value`` has type ``hint``: a bool is not
    an integer, an integer is a number, and None only where the hint allows it."""
    kinds = typing.get_args(hint) or (hint,)
    optional = type(None) in kinds
    if value is None and optional:
        return
    base = next(k for k in kinds if k is not type(None))
    if isinstance(value, bool):
        fits = base is bool
    elif base is float:
        fits = isinstance(value, numbers.Real)
    elif base is int:
        fits = isinstance(value, numbers.Integral)
    else:
        fits = isinstance(value, base)
    if not fits:
        kind = TYPE_WORDS[base] + (" or null" if optional else "")
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def check_value(name: str, value: Any, metadata: typing.Mapping[str, Any]) -> None:
    """One line naming the valid choices, or the domain, of a field whose value is outside."""
    if value is None:
        return
    choices, domain = metadata.get("choices"), metadata.get("domain")
    if choices and value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid {name} values: {', '.join(choices)}")
    if domain is not None and not domain.contains(value):
        raise ValueError(f"{name} must be {domain.words}, got {value!r}")


def vmap_problem(config: TrainConfig, name: str) -> str | None:
    """Why ``name`` cannot be vmapped in runs like ``config`` (one that differs from it only in
    the vmapped values), or None: not a vmappable field, or one this config does not read."""
    if name not in VMAPPABLE:
        return f"{name!r} cannot be vmapped; vmappable: {', '.join(VMAPPABLE)}"
    reader = {
        "weight_decay": (config.optimizer == "adamw", "--optimizer adamw"),
        "rms_decay": (config.optimizer == "rmsprop", "--optimizer rmsprop"),
        "clip_value": (config.clip_value is not None, "element-wise clipping on in every value"),
        "clip_norm": (config.clip_norm is not None, "global-norm clipping on in every value"),
        "lr_decay": (config.schedule == "epoch_decay", "--schedule epoch_decay"),
    }
    keeping = "a design with a gate that keeps the state (LSTM f, GRU z)"
    design_reader = {
        "gate_bias": (get_design(config.cell).chrono_gate is not None, keeping),
        "chrono_t_max": (get_design(config.cell).chrono_gate is not None, keeping),
    }
    reads, needs = reader.get(name, (True, ""))
    if not reads:
        return f"{name!r} is not read by this run's optimiser: it needs {needs}"
    reads, needs = design_reader.get(name, (True, ""))
    if not reads:
        return f"{name!r} is not read by the {config.cell} design: it needs {needs}"
    return None


def check_values(
    config: TrainConfig, values: typing.Sequence[typing.Mapping]
) -> tuple[dict[str, float], ...]:
    """A group's values: each a mapping of the same vmappable fields to numbers, every value's
    config valid; one line naming what is wrong."""
    values = tuple(dict(v) for v in values)
    if not values:
        return values
    fields = list(values[0])
    if not fields or any(list(v) != fields for v in values):
        raise ValueError(f"every vmapped value must set the same fields, got {list(values)}")
    for name in fields:
        if (problem := vmap_problem(config, name)) is not None:
            raise ValueError(problem)
    for v in values:
        dataclasses.replace(config, **v)  # each value's config checked like any other
    if len({tuple(v.values()) for v in values}) < len(values):
        raise ValueError(f"the vmapped values repeat one another: {list(values)}")
    return values


def value_name(value: typing.Mapping[str, float]) -> str:
    """'lr=0.001,dropout=0.1': a value's folder name, as a sweep names its points."""
    return ",".join(f"{k}={v}" for k, v in value.items()).replace("/", "_")


def value_grid(vmap: typing.Mapping[str, typing.Sequence[float]]) -> list[dict[str, float]]:
    """Every combination of the vmapped fields' values, the first field outermost (none for
    no field)."""
    names = list(vmap)
    if not names:
        return []
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*vmap.values())]


def parse_vmap(options: typing.Sequence[str]) -> dict[str, list[float]]:
    """``--vmap lr=1e-3,3e-3`` options as {field: values}; one line for a malformed one."""
    vmap: dict[str, list[float]] = {}
    for text in options:
        name, _, values = text.partition("=")
        try:
            numbers_ = [float(v) for v in values.split(",")] if values else []
        except ValueError:
            numbers_ = []
        if not name or not numbers_ or name in vmap:
            raise ValueError(f"--vmap takes FIELD=V1,V2,... once per field (numbers), got {text!r}")
        vmap[name.replace("-", "_")] = numbers_
    return vmap


def from_saved(saved: dict) -> TrainConfig:
    """The TrainConfig of a saved dict (fields added since it was saved take their defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names})


def read_run_file(run_dir: str | Path) -> dict:
    """A run folder's ``config.json``, checked to hold a run config."""
    from gru_research.tracking import read_json

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no run folder at {run_dir} (config.json missing)")
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("run"), dict):
        raise ValueError(f"{path} holds no run config (no 'run' mapping)")
    return saved


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig of a run folder's ``config.json``."""
    return from_saved(read_run_file(run_dir)["run"])
