"""What every report shares: statistics over seeds, markdown and CSV tables, provenance, verdicts.

The sweep reports (:mod:`gru_research.report`), the textbook-claims report
(:mod:`gru_research.claims`) and the benchmark reports (``benchmarks/``) all render through
these few functions, so a number, a table and a verdict read the same everywhere.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

import numpy as np

SIGNIFICANCE = 0.05
Verdict = Literal["held", "not held", "no data", "not measured"]

# ---------------------------------------------------------------------------------------------
# statistics over seeds


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); nan where there are too few values."""
    mean = float(np.mean(values)) if len(values) else math.nan
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return mean, std


def format_mean_std(values: Sequence[float], digits: int = 4) -> str:
    """'0.1234 ± 0.005' over the values given (no ± for a single value)."""
    mean, std = mean_std(values)
    return f"{mean:#.{digits}g}" + (f" ± {std:.2g}" if len(values) > 1 else "")


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Welch's t-test p-value (scipy), or None with fewer than two values on a side."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    return float(p) if math.isfinite(p) else None


def significantly_better(
    a: Sequence[float], b: Sequence[float], higher_is_better: bool
) -> Literal["a", "b", "neither", "too few seeds"]:
    """Which of two samples is better by Welch's test at :data:`SIGNIFICANCE`."""
    p = welch_p(a, b)
    if p is None:
        return "too few seeds"
    if p >= SIGNIFICANCE:
        return "neither"
    return "a" if (np.mean(a) > np.mean(b)) == higher_is_better else "b"


# ---------------------------------------------------------------------------------------------
# verdicts

CURVE_CHECKS = ("by_step", "leaves_baseline")  # read a validation curve, not the final table
PAIRWISE_CHECKS = ("better_than", "close_to", "no_worse_than")  # against another entry
CHECKS = (
    "below", "above", "within_baseline", "below_baseline", *PAIRWISE_CHECKS, *CURVE_CHECKS,
)  # fmt: skip


def verdict(ok: bool | None) -> Verdict:
    """A check's outcome in words: True held, False not held, None no data."""
    return "no data" if ok is None else "held" if ok else "not held"


def bold(text: str) -> str:
    return f"**{text}**"


def claims_table(claims: Sequence[tuple[str, str, str]]) -> list[str]:
    """The "Claims at this scale" section: a row per (claim, verdict, figures)."""
    rows = [{"claim": c, "verdict": bold(v), "figures": f} for c, v, f in claims]
    return ["", "## Claims at this scale", "", markdown_table(rows).rstrip("\n")]


# ---------------------------------------------------------------------------------------------
# tables


def format_number(value) -> str:
    """A table entry: 3 significant digits, whole numbers with separators from 1,000 up, – for
    none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e3 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def how_many(n: int, noun: str) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1: "1 run", "2 runs"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def markdown_table(
    rows: Sequence[Mapping], columns: Sequence[str] | None = None, align: str = "---"
) -> str:
    """A markdown table, one row per mapping; ``columns`` default to every key, in order."""
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + f"{align}|" * len(columns)]
    lines += ["| " + " | ".join(format_number(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """The same rows as CSV, full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(columns or dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# provenance


def machine() -> str:
    """The processor, cores, JAX backend and the versions of the libraries that set speed."""
    import jax

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}, "
        f"flax {_version('flax')}, torch {_version('torch')}, "
        f"Python {platform.python_version()}"
    )


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def report_header(title: str, description: str, command: str, *facts: str) -> list[str]:
    """The lines every report starts with: title, description, then its provenance (the
    command, the commit, the date and the machine, and any further ``facts``)."""
    from gru_research.tracking import git_commit, package_version

    lines = [f"# {title}", ""]
    if description.strip():
        lines += [description.strip(), ""]
    return lines + [
        "## Provenance",
        "",
        f"- command: `{command}`",
        f"- git commit: `{git_commit()}`, package {package_version()}",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {machine()}",
        *(f"- {fact}" for fact in facts),
    ]
