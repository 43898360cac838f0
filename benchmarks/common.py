"""What the benchmark scripts share: one-line usage errors, their argument types, and speed
targets with their verdicts."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from gru_research.bench import BenchConfig, named_configs
from gru_research.reporting import bold, verdict
from gru_research.tracking import write_atomic


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (and the valid choices)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """An argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes a positive integer, got {text!r}")
    return value


def positive_ints(text: str) -> list[int]:
    """An argparse type: comma-separated positive integers."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"takes comma-separated positive integers, got {text!r}")
    return values


def configs(text: str) -> list[BenchConfig]:
    """An argparse type: comma-separated names of the harness's configurations."""
    try:
        return named_configs(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def joined(values: list) -> str:
    """The comma-separated form an option takes, to write a report's command."""
    return ",".join(getattr(v, "name", str(v)) for v in values)


def readable(value: float | None) -> float | int | None:
    """A whole number from 1,000 up, so that a table prints 1,134 rather than 1.13e+03."""
    return round(value) if value is not None and abs(value) >= 1000 else value


@dataclass(frozen=True)
class Target:
    """A goal for one measured number: at least ``goal`` (at most, with ``at_most``); measured
    only on the JAX ``backend`` when one is given."""

    text: str
    goal: float
    unit: str = "×"
    at_most: bool = False
    backend: str | None = None
    roofline_share: float | None = None  # met too at this share of the roofline's GFLOP/s
    why: str = ""  # what limits the measured number, printed when the target is not met

    def met_by(self, value: float, share: float | None = None) -> bool:
        if self.roofline_share is not None and share is not None and share >= self.roofline_share:
            return True
        return value <= self.goal if self.at_most else value >= self.goal

    def goal_text(self) -> str:
        text = f"{'≤' if self.at_most else '≥'} {self.goal:g}{self.unit}"
        if self.roofline_share is not None:
            text += f" or ≥ {self.roofline_share:.0%} of the roofline"
        return text


@dataclass(frozen=True)
class Reading:
    """A target's measured value with a note, or None with the reason it was not measured."""

    value: float | None
    note: str = ""
    roofline_share: float | None = None  # the measured GFLOP/s over the roofline's


def target_row(target: Target, reading: Reading, backend: str) -> dict[str, str]:
    """One row of the targets table; a target of another backend reads as not measured."""
    if target.backend not in (None, backend):
        measured, outcome = f"not measured on this backend ({backend})", "not measured"
    elif reading.value is None:
        measured, outcome = reading.note, "not measured"
    else:
        notes = [reading.note] if reading.note else []
        if reading.roofline_share is not None:
            notes.insert(0, f"{reading.roofline_share:.0%} of the roofline")
        note = f" ({'; '.join(notes)})" if notes else ""
        measured = f"{reading.value:.2f}{target.unit}{note}"
        outcome = verdict(target.met_by(reading.value, reading.roofline_share))
    return {
        "target": target.text,
        "goal": target.goal_text(),
        "measured": measured,
        "verdict": bold(outcome),
    }


def shortfalls(pairs: list[tuple[Target, Reading]], backend: str) -> list[dict[str, str]]:
    """Every measured target that is not met: by how much (the factor the measured number
    would still need) and what limits it."""
    rows = []
    for target, reading in pairs:
        if target.backend not in (None, backend) or reading.value is None:
            continue
        if target.met_by(reading.value, reading.roofline_share) or reading.value <= 0:
            continue
        factor = reading.value / target.goal if target.at_most else target.goal / reading.value
        rows.append(
            {
                "target": target.text,
                "short by": f"{factor:.2f}×",
                "why": target.why or "see the tables below",
            }
        )
    return rows


def publish(path: Path, text: str) -> int:
    """Write a report atomically and print it; a script's exit status (0)."""
    write_atomic(path, text)
    print(text, end="")
    return 0
