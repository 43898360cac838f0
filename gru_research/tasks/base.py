"""The task contract shared by every task: its config, its description, and the loss helpers.

A `Task` is a bundle of pure functions plus the data they need. The training loop jit-compiles
`sample` and `metrics` into its step; nothing here holds state.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

DATA_ROOT_VARIABLE = "GRU_RESEARCH_DATA"
"""The environment variable naming the data root when ``--data-dir`` is not given."""

IGNORED_TARGET = -1
"""A target id that `token_cross_entropy` and `token_accuracy` skip (padding of LM eval windows)."""


@dataclass(frozen=True)
class TaskConfig:
    """What a run asks for; `make_task` turns it into a `Task`.

    Attributes:
        name: one of `TASKS`.
        seq_len: copy: the delay T (inputs have length T + 20); adding: the length T;
            selective_copy: L (inputs have length L + K); lm: the window length; parity,
            mod_sum, cycle_nav: the longest training length.
        num_tokens: selective_copy: K, the number of tokens to recall.
        modulus: mod_sum: m; cycle_nav: the cycle's length.
        answer: state tracking: answer at each sequence's "last" step or at "every" step.
        corpus: lm: a TFDS text dataset name (a "text" feature), default tiny_shakespeare;
            or ``ptb`` / ``ptb_char``, Penn Treebank read from ``data_dir``.
        dataset: music: jsb, nottingham, musedata or piano_midi.
        text_file: lm: a plain UTF-8 file instead of TFDS, split 90/5/5 by characters.
        tfds_data_dir: where TFDS prepares data (None: the TFDS default, ~/tensorflow_datasets).
        tfds_manual_dir: the TFDS manual dir; None with tiny_shakespeare: the packaged copy.
        eval_batches: synthetic tasks: how many fresh batches one evaluation draws.
        data_dir: the data root, one sub-folder per dataset (``ptb/``), or a dataset's own
            folder; None: ``$GRU_RESEARCH_DATA`` (:func:`dataset_folder`).
        data_checks: ptb, music: check the files' sizes and sha256 sums (off for test slices).
    """

    name: str = "copy"
    seq_len: int = 100
    num_tokens: int = 16
    modulus: int = 5
    answer: str = "last"
    corpus: str = "tiny_shakespeare"
    dataset: str = "jsb"
    text_file: str | None = None
    tfds_data_dir: str | None = None
    tfds_manual_dir: str | None = None
    eval_batches: int = 4
    data_dir: str | None = None
    data_checks: bool = True


@dataclass(frozen=True)
class LengthBuckets:
    """Training batches drawn from one length bucket at a time, each padded only to its own
    longest sequence.

    Attributes:
        samplers: one `sample(data, key, batch_size)` per bucket, each of its own static shape.
        bucket_of: `bucket_of(step) -> int32`, the bucket of a training step: a function of the
            step alone, the same for every seed, so the compiled step runs one bucket's branch
            (a bucket chosen per seed would run every branch under vmap).
    """

    samplers: tuple[Callable, ...]
    bucket_of: Callable


@dataclass(frozen=True)
class Task:
    """A task as the training loop sees it.

    Attributes:
        name: the task name.
        vocab_size: set when model inputs are token ids (B, T); None for features (B, T, I).
        input_size: the feature size of inputs when `vocab_size` is None (adding: 2).
        output_size: the number of logits per step, or 1 for the adding regression.
        baseline: the memoryless predictor's value of each metric (lm adds "bigram_loss").
        solved_rule: the solved criterion, in words.
        data: a pytree of device arrays that `sample` reads ({} for synthetic tasks).
        sample: `sample(data, key, batch_size) -> (inputs, targets)`; pure and jittable with a
            static `batch_size`.
        metrics: `metrics(outputs, targets) -> dict[str, scalar]`; "loss" is the training
            objective, a mean over the batch.
        is_solved: `is_solved(metrics) -> bool` on evaluation metrics (lm: validation).
        stream_window: lm only: `stream_window(data, window, batch_size) -> (inputs, targets,
            epoch_start)`, the window-th window of B contiguous streams of the training split
            (stateful training with truncated backpropagation through time, Zaremba et al.,
            2014); windows wrap around by epoch, and `epoch_start` flags the first of each.
        windows_per_epoch: lm only: `windows_per_epoch(batch_size)`, the windows of one epoch
            of `stream_window`.
        eval_stream: lm only: `eval_stream(split) -> (inputs, targets)`, the split as one
            stream of contiguous (W, T) windows in order (the last padded), for evaluation that
            carries the state across the whole split.
        eval_data: `eval_data(split, batch_size) -> [(inputs, targets, weight), ...]` for the lm
            (numpy batches covering the whole split); [] for synthetic tasks.
        vocabulary: lm: the token of each id (a character, or a word for ``ptb``; where the
            corpus has no unknown token of its own, the last id is "unknown"); None for
            synthetic tasks.
        data_source: where the data was read (a resolved path, or the TFDS dataset): recorded
            in the run folder as provenance, never part of a run's identity.
        seq_lengths: tasks of right-padded sequences: `seq_lengths(targets) -> (B,)`, each
            sequence's real length, passed to the model; None: every step is real.
        eval_sample: where evaluation draws other batches than training (state tracking: the
            longer lengths), `sample`'s signature; None: `sample`.
        eval_metrics: where evaluation measures more than training (per length bucket),
            `metrics`'s signature; None: `metrics`.
        length_buckets: training batches from one length bucket per step (music), in place of
            `sample`; None: every step calls `sample`.
        derived_metrics: `derived_metrics(means) -> means`, the metrics that are functions of
            a split's means rather than means themselves (perplexity = exp of the mean loss;
            the worst bucket), added after averaging; None: none.
    """

    name: str
    vocab_size: int | None
    input_size: int
    output_size: int
    baseline: dict[str, float]
    solved_rule: str
    data: dict
    sample: Callable
    metrics: Callable
    is_solved: Callable
    eval_data: Callable
    vocabulary: tuple[str, ...] | None = None
    stream_window: Callable | None = None
    windows_per_epoch: Callable | None = None
    eval_stream: Callable | None = None
    data_source: str | None = None
    seq_lengths: Callable | None = None
    eval_sample: Callable | None = None
    eval_metrics: Callable | None = None
    derived_metrics: Callable | None = None
    length_buckets: LengthBuckets | None = None


def no_eval_data(split: str, batch_size: int) -> list:
    """Synthetic tasks have no fixed evaluation set: the trainer draws fresh batches instead."""
    del split, batch_size
    return []


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) of integer `targets` (...,) under `logits` (..., C).

    Targets equal to `IGNORED_TARGET` are left out of the mean.
    """
    valid = targets != IGNORED_TARGET
    safe_targets = jnp.where(valid, targets, 0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_log_probs = jnp.take_along_axis(log_probs, safe_targets[..., None], axis=-1)[..., 0]
    # where(), not a product: a target log-probability of -inf must not turn the sum into nan.
    total = jnp.sum(jnp.where(valid, -target_log_probs, 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1)


def token_accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Fraction of non-ignored positions where the arg-max of `logits` equals the target."""
    valid = targets != IGNORED_TARGET
    hits = (jnp.argmax(logits, axis=-1) == targets) & valid
    return jnp.sum(hits) / jnp.maximum(jnp.sum(valid), 1)


def require_positive_int(field: str, value: object) -> None:
    """Raise a one-line ValueError unless `value` is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")


def dataset_folder(dataset: str, data_dir: str | Path | None, marker: str) -> Path:
    """The folder of ``dataset`` under the data root (docs/design.md §7).

    The root is ``data_dir``, else ``$GRU_RESEARCH_DATA``. A root that holds the ``marker``
    file is the dataset's own folder; otherwise the dataset is its sub-folder ``dataset``.
    """
    root = data_dir if data_dir is not None else os.environ.get(DATA_ROOT_VARIABLE)
    if not root:
        raise ValueError(
            f"{dataset} needs its data: pass --data-dir ROOT (with ROOT/{dataset}/{marker}) or "
            f"set {DATA_ROOT_VARIABLE}=ROOT"
        )
    root = Path(root).expanduser()
    return root if (root / marker).is_file() else root / dataset


def checked_bytes(
    path: Path, size: int, sha256: str, dataset: str, needed: str, checks: bool
) -> bytes:
    """The bytes of one data file, after checking its size and sha256 (with ``checks``); a
    missing or differing file is one error line naming it (``needed``: the dataset's files)."""
    if not path.is_file():
        raise FileNotFoundError(f"{dataset} file missing: {path} (need {needed})")
    data = path.read_bytes()
    if checks and (len(data) != size or hashlib.sha256(data).hexdigest() != sha256):
        raise ValueError(
            f"{dataset} file differs from the standard one: {path} ({len(data):,} bytes, "
            f"expected {size:,} bytes with sha256 {sha256[:12]}…)"
        )
    return data
