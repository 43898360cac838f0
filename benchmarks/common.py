"""What the benchmark scripts share: one-line usage errors and their argument types."""

from __future__ import annotations

import argparse

from gru_research.bench import BenchConfig, named_configs


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
