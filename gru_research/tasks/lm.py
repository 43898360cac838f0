"""Language modelling, over characters or, for Penn Treebank's ``ptb``, over words.

Default corpus: TFDS `tiny_shakespeare` (Karpathy's char-rnn `input.txt`, 1,115,394 characters),
whose builder makes a 90/5/5 train/validation/test split, one example per split with a "text"
feature. Any other TFDS dataset with a "text" feature can be named instead (preparing it needs
the network on the user's machine), or a plain UTF-8 text file, split 90/5/5 by characters
exactly as the TFDS tiny_shakespeare builder splits its file.

**Offline tiny_shakespeare.** The package ships the builder's `input.txt`
(`gru_research/data/tiny_shakespeare/`, sha256 86c4e6aa...65ed). With corpus tiny_shakespeare
and no `tfds_manual_dir`, that folder is handed to the builder as
`tfds.download.DownloadConfig(manual_dir=...)`. The builder itself calls
`dl_manager.download(URL)`; TFDS's `DownloadManager` first looks in `manual_dir` for the file
name registered for that URL in the builder's `checksums.tsv` (`input.txt`), checks its size
and sha256 against that registry, and uses it in place of a download. So the real TFDS path
(`tfds.builder(...).download_and_prepare(...)`, then `as_dataset` read through `tfds.as_numpy`)
runs with no network. GCS downloads of prepared data are turned off (`try_download_gcs=False`).

**Vocabulary.** The sorted distinct characters of the training split get ids 0..V-1 (by code
point: for tiny_shakespeare V = 65, "\\n" is 0). Id V is reserved for characters that never
occur in the training split, so `vocab_size = V + 1`; the unknown id is never a training target
and, for tiny_shakespeare, never occurs at all (all 65 characters are in its training split).

**Batches.** Training: random windows of T + 1 characters of the training split, drawn with
`jax.random` inside jit (inputs: the first T, targets: the next T). Evaluation: contiguous,
non-overlapping windows; window i has inputs `s[iT : iT+T]` and targets `s[iT+1 : iT+T+1]`, so
every character of the split but the first is a target exactly once. The last window is padded
(targets `IGNORED_TARGET`, which the metrics leave out), and the last batch is padded with
all-padding windows so every batch has shape (batch_size, T); each batch's weight is its number
of real targets. Each window is scored from a fresh state (context at most T characters).

**Metrics** per token: "loss" (nats), "bits_per_token" and "perplexity" from it, and, where every
token is a character, "bpc" (the same number as bits_per_token, under its usual name).

**Baselines** (numpy, fit on the training split, scored on validation): the add-1 unigram
cross-entropy ("loss", with the other metrics from it) and the add-0.1 bigram cross-entropy
("bigram_loss"), both smoothed over all `vocab_size` ids, the unknown id included. For
tiny_shakespeare: 3.333 and 2.473 nats per character. Solved: validation loss below the bigram's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gru_research.offline import is_local_path, keep_tensorflow_local, keep_tfds_local
from gru_research.tasks.base import IGNORED_TARGET, Task, TaskConfig, token_cross_entropy
from gru_research.tasks.ptb import PTB_CORPORA, ptb_folder, ptb_splits

TINY_SHAKESPEARE = "tiny_shakespeare"
TINY_SHAKESPEARE_FILE = "input.txt"
PACKAGED_TINY_SHAKESPEARE_DIR = Path(__file__).resolve().parent.parent / "data" / TINY_SHAKESPEARE
SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
TEXT_FEATURE = "text"
UNIGRAM_SMOOTHING = 1.0
BIGRAM_SMOOTHING = 0.1


@dataclass(frozen=True)
class TokenCorpus:
    """A corpus as token ids: one int32 array per split, and the training vocabulary."""

    vocabulary: tuple[str, ...]  # id i is vocabulary[i]; id len(vocabulary) is "unknown"
    splits: dict[str, np.ndarray]
    has_unknown_id: bool = True  # False: every id is a vocabulary entry (ptb has its <unk>)
    characters: bool = True  # every token is one character (False: ptb's words)
    source: str | None = None  # where it was read

    @property
    def unknown_id(self) -> int:
        return len(self.vocabulary)

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + self.has_unknown_id


# ---------------------------------------------------------------------------- reading text


def split_90_5_5(text: str) -> dict[str, str]:
    """Split by characters as the TFDS tiny_shakespeare builder does: 90% train, then halves."""
    train_end = int(len(text) * 0.9)
    train_text, rest = text[:train_end], text[train_end:]
    validation_end = int(len(rest) * 0.5)
    return {"train": train_text, "validation": rest[:validation_end], "test": rest[validation_end:]}


def read_text_file_splits(path: str | Path) -> dict[str, str]:
    """A plain UTF-8 text file, split 90/5/5 by characters; a binary file is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lm text file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"lm text file {path} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    if "\x00" in text:
        raise ValueError(f"lm text file {path} is not text (it holds NUL bytes)")
    return split_90_5_5(text)


def default_manual_dir(corpus: str, manual_dir: str | None) -> str | None:
    """The manual dir to give TFDS: the user's, else the packaged copy for tiny_shakespeare."""
    if manual_dir is not None:
        if corpus == TINY_SHAKESPEARE and not (Path(manual_dir) / TINY_SHAKESPEARE_FILE).is_file():
            raise FileNotFoundError(
                f"tfds manual dir has no {TINY_SHAKESPEARE_FILE}: {Path(manual_dir)}"
            )
        return manual_dir
    if corpus == TINY_SHAKESPEARE:
        if not (PACKAGED_TINY_SHAKESPEARE_DIR / TINY_SHAKESPEARE_FILE).is_file():
            raise FileNotFoundError(
                f"packaged tiny_shakespeare file missing (broken install?): "
                f"{PACKAGED_TINY_SHAKESPEARE_DIR / TINY_SHAKESPEARE_FILE}"
            )
        return str(PACKAGED_TINY_SHAKESPEARE_DIR)
    return None


def tfds_split_names(available: list[str], corpus: str) -> dict[str, str]:
    """Our train/validation/test splits from a dataset's own (validation <-> test stand in)."""
    if "train" not in available or not {"validation", "test"} & set(available):
        raise ValueError(
            f"TFDS dataset {corpus!r} needs a train split and a validation or test split,"
            f" has {sorted(available)}"
        )
    validation = "validation" if "validation" in available else "test"
    test = "test" if "test" in available else "validation"
    return {"train": "train", "validation": validation, "test": test}


def read_tfds_splits(
    corpus: str, data_dir: str | None = None, manual_dir: str | None = None
) -> dict[str, str]:
    """The train/validation/test text of a TFDS dataset with a "text" feature.

    Prepares the dataset (once per `data_dir`) with `manual_dir` in its download config and
    reads each split's examples, joined by newlines (tiny_shakespeare: one example per split).
    TensorFlow and TFDS are imported here, not at module import. With local folders (no URL),
    nothing is looked up on Google Cloud: no GCE metadata probe by TensorFlow, no GCS look-up by
    TFDS (``gru_research.offline``), no GCS download (``try_gcs``, ``try_download_gcs`` off).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    local = is_local_path(data_dir) and is_local_path(manual_dir)
    if local:
        keep_tensorflow_local()
    import tensorflow_datasets as tfds

    if local:
        keep_tfds_local()
    tfds.disable_progress_bar()
    manual_dir = default_manual_dir(corpus, manual_dir)
    try:
        builder = tfds.builder(corpus, data_dir=data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"unknown TFDS dataset {corpus!r}: the lm task needs a TFDS dataset with a"
            f" {TEXT_FEATURE!r} feature (e.g. {TINY_SHAKESPEARE}) or a text_file"
        ) from None
    features = list(builder.info.features.keys())
    if TEXT_FEATURE not in features:
        raise ValueError(
            f"TFDS dataset {corpus!r} has no {TEXT_FEATURE!r} feature (it has {features})"
        )
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    builder.download_and_prepare(download_config=download_config)
    split_names = tfds_split_names(list(builder.info.splits.keys()), corpus)
    texts = {}
    for split, tfds_split in split_names.items():
        examples = tfds.as_numpy(builder.as_dataset(split=tfds_split, shuffle_files=False))
        texts[split] = "\n".join(example[TEXT_FEATURE].decode("utf-8") for example in examples)
    return texts


# ---------------------------------------------------------------------------- encoding


def build_vocabulary(train_text: str) -> tuple[str, ...]:
    """The sorted distinct characters of the training text."""
    return tuple(sorted(set(train_text)))


def encode(text: str, vocabulary: tuple[str, ...]) -> np.ndarray:
    """int32 ids of `text`'s characters; characters outside `vocabulary` get len(vocabulary)."""
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    vocabulary_code_points = np.array([ord(char) for char in vocabulary], dtype=np.uint32)
    if len(vocabulary) == 0:
        return np.zeros(len(code_points), np.int32)
    ids = np.searchsorted(vocabulary_code_points, code_points)
    clipped = np.minimum(ids, len(vocabulary) - 1)
    known = vocabulary_code_points[clipped] == code_points
    return np.where(known, clipped, len(vocabulary)).astype(np.int32)


def encode_corpus(texts: dict[str, str]) -> TokenCorpus:
    """Build the vocabulary from the training split and encode every split."""
    vocabulary = build_vocabulary(texts["train"])
    return TokenCorpus(vocabulary, {split: encode(texts[split], vocabulary) for split in SPLITS})


# ---------------------------------------------------------------------------- baselines


def unigram_cross_entropy(
    train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int, smoothing: float = 1.0
) -> float:
    """Cross-entropy (nats/token) of `eval_ids` under the add-`smoothing` unigram of train."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64)
    log_probs = np.log(counts + smoothing) - np.log(counts.sum() + smoothing * vocab_size)
    return float(-np.mean(log_probs[eval_ids]))


def bigram_cross_entropy(
    train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int, smoothing: float = 0.1
) -> float:
    """Cross-entropy (nats/token) of `eval_ids[1:]` given the previous token, under the
    add-`smoothing` bigram of train: p(b | a) = (n(a, b) + s) / (n(a, .) + s V)."""
    pair_ids = train_ids[:-1].astype(np.int64) * vocab_size + train_ids[1:]
    pair_counts = np.bincount(pair_ids, minlength=vocab_size * vocab_size).astype(np.float64)
    pair_counts = pair_counts.reshape(vocab_size, vocab_size)
    context_counts = pair_counts.sum(axis=1, keepdims=True)
    log_probs = np.log(pair_counts + smoothing) - np.log(context_counts + smoothing * vocab_size)
    return float(-np.mean(log_probs[eval_ids[:-1], eval_ids[1:]]))


def lm_baseline(corpus: TokenCorpus) -> dict[str, float]:
    """Validation baselines: the unigram per metric, and the bigram's loss as "bigram_loss"."""
    train, validation = corpus.splits["train"], corpus.splits["validation"]
    unigram = unigram_cross_entropy(train, validation, corpus.vocab_size, UNIGRAM_SMOOTHING)
    bigram = bigram_cross_entropy(train, validation, corpus.vocab_size, BIGRAM_SMOOTHING)
    return {**per_token_metrics(unigram, corpus.characters, math.exp), "bigram_loss": bigram}


# ---------------------------------------------------------------------------- batches


def sample_train_windows(
    tokens: jax.Array, key: jax.Array, batch_size: int, seq_len: int
) -> tuple[jax.Array, jax.Array]:
    """Random windows of T + 1 tokens: inputs the first T, targets the next T, each (B, T)."""
    starts = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - seq_len)
    windows = jax.vmap(lambda start: jax.lax.dynamic_slice(tokens, (start,), (seq_len + 1,)))(
        starts
    )
    return windows[:, :-1], windows[:, 1:]


def stream_window(
    tokens: jax.Array, window: jax.Array, batch_size: int, seq_len: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The ``window``-th (mod the epoch) window of B contiguous streams (Zaremba et al., 2014).

    The split is cut into B streams of n = len // B tokens; each epoch has (n − 1) // T
    windows taken in order, so every stream position is a target exactly once per epoch.
    Returns (inputs (B, T), targets (B, T), whether this window starts an epoch).
    """
    per_stream = tokens.shape[0] // batch_size
    streams = tokens[: per_stream * batch_size].reshape(batch_size, per_stream)
    windows = stream_windows_per_epoch(tokens.shape[0], batch_size, seq_len)
    index = window % windows
    chunk = jax.lax.dynamic_slice_in_dim(streams, index * seq_len, seq_len + 1, axis=1)
    return chunk[:, :-1], chunk[:, 1:], index == 0


def stream_windows_per_epoch(length: int, batch_size: int, seq_len: int) -> int:
    """Windows in one epoch of :func:`stream_window` over ``length`` tokens."""
    windows = (length // batch_size - 1) // seq_len
    if windows < 1:
        raise ValueError(
            f"the training split is too short for {batch_size} streams of windows of {seq_len}"
        )
    return windows


def contiguous_windows(tokens: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows covering every target tokens[1:] once; the last one padded.

    Returns int32 inputs and targets (W, T); padded targets are `IGNORED_TARGET`, padded
    inputs 0.
    """
    num_targets = max(len(tokens) - 1, 0)
    num_windows = -(-num_targets // seq_len)
    padded_length = num_windows * seq_len
    inputs = np.zeros(padded_length, np.int32)
    targets = np.full(padded_length, IGNORED_TARGET, np.int32)
    inputs[:num_targets] = tokens[:-1][:num_targets]
    targets[:num_targets] = tokens[1:]
    return inputs.reshape(num_windows, seq_len), targets.reshape(num_windows, seq_len)


def batch_windows(
    inputs: np.ndarray, targets: np.ndarray, batch_size: int
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Group windows into (batch_size, T) batches, padding the last with all-padding windows.

    Each batch comes with its weight: its number of real (non-padding) targets.
    """
    num_windows, seq_len = inputs.shape
    num_batches = -(-num_windows // batch_size)
    padding = num_batches * batch_size - num_windows
    inputs = np.concatenate([inputs, np.zeros((padding, seq_len), np.int32)])
    targets = np.concatenate([targets, np.full((padding, seq_len), IGNORED_TARGET, np.int32)])
    batches = []
    for start in range(0, num_batches * batch_size, batch_size):
        batch_targets = targets[start : start + batch_size]
        weight = int(np.sum(batch_targets != IGNORED_TARGET))
        batches.append((inputs[start : start + batch_size], batch_targets, weight))
    return batches


# ---------------------------------------------------------------------------- metrics


def per_token_metrics(loss, characters: bool, exp=jnp.exp) -> dict:
    """From the mean loss in nats per token: bits per token, perplexity, and for a character
    corpus "bpc" (bits per character) beside them."""
    metrics = {"loss": loss, "bits_per_token": loss / math.log(2), "perplexity": exp(loss)}
    return metrics | ({"bpc": metrics["bits_per_token"]} if characters else {})


def lm_metrics(logits: jax.Array, targets: jax.Array, characters: bool) -> dict[str, jax.Array]:
    """:func:`per_token_metrics` of the cross-entropy (padding skipped).

    Averaging evaluation batches: weight-average "loss" (and the bits, linear in it), then
    recompute perplexity from it (a weighted mean of per-batch perplexities is not the split's).
    """
    return per_token_metrics(token_cross_entropy(logits, targets), characters)


def perplexity_of_mean(means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A split's perplexity: exp of its mean loss, not the mean of per-batch perplexities."""
    return means | {"perplexity": np.exp(means["loss"])}


# ---------------------------------------------------------------------------- the task


def load_corpus(config: TaskConfig) -> TokenCorpus:
    """Read (PTB files, TFDS or a text file) and encode the corpus the config names."""
    if config.corpus in PTB_CORPORA and config.text_file is None:
        vocabulary, splits = ptb_splits(config.corpus, config.data_dir, config.data_checks)
        unknown = any(bool(np.any(ids == len(vocabulary))) for ids in splits.values())
        return TokenCorpus(
            vocabulary,
            splits,
            has_unknown_id=unknown,
            characters=config.corpus == "ptb_char",
            source=str(ptb_folder(config.data_dir).resolve()),
        )
    if config.text_file is not None:
        texts = read_text_file_splits(config.text_file)
        source = str(Path(config.text_file).resolve())
    else:
        texts = read_tfds_splits(config.corpus, config.tfds_data_dir, config.tfds_manual_dir)
        source = f"TFDS {config.corpus}"
    return dataclasses.replace(encode_corpus(texts), source=source)


def check_split_lengths(corpus: TokenCorpus, seq_len: int, source: str) -> None:
    """One-line errors for a training split shorter than a window or empty eval splits."""
    train_length = len(corpus.splits["train"])
    if train_length < seq_len + 1:
        raise ValueError(
            f"lm training split of {source} has {train_length} tokens, fewer than"
            f" seq_len + 1 = {seq_len + 1}"
        )
    for split in EVAL_SPLITS:
        if len(corpus.splits[split]) < 2:
            raise ValueError(f"lm {split} split of {source} has fewer than 2 tokens")


def make_lm_task(config: TaskConfig) -> Task:
    """Language modelling over windows of `config.seq_len` tokens."""
    seq_len = config.seq_len
    corpus = load_corpus(config)
    source = (
        config.text_file
        if config.text_file is not None
        else config.corpus
        if config.corpus in PTB_CORPORA
        else f"TFDS {config.corpus}"
    )
    check_split_lengths(corpus, seq_len, source)
    baseline = lm_baseline(corpus)

    def sample(data: dict, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        return sample_train_windows(data["train"], key, batch_size, seq_len)

    def stream(data: dict, window: jax.Array, batch_size: int):
        return stream_window(data["train"], window, batch_size, seq_len)

    eval_batches_cache: dict[tuple[str, int], list] = {}

    def eval_data(split: str, batch_size: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if (split, batch_size) not in eval_batches_cache:
            inputs, targets = contiguous_windows(corpus.splits[split], seq_len)
            eval_batches_cache[split, batch_size] = batch_windows(inputs, targets, batch_size)
        return eval_batches_cache[split, batch_size]

    def is_solved(metrics: dict[str, float]) -> bool:
        return float(metrics["loss"]) < baseline["bigram_loss"]

    def windows_per_epoch(batch_size: int) -> int:
        return stream_windows_per_epoch(len(corpus.splits["train"]), batch_size, seq_len)

    def eval_stream(split: str) -> tuple[np.ndarray, np.ndarray]:
        return contiguous_windows(corpus.splits[split], seq_len)

    return Task(
        name="lm",
        vocab_size=corpus.vocab_size,
        input_size=corpus.vocab_size,
        output_size=corpus.vocab_size,
        baseline=baseline,
        solved_rule=(
            f"validation loss < the add-0.1 bigram's {baseline['bigram_loss']:.3f} nats/token"
        ),
        data={"train": jnp.asarray(corpus.splits["train"])},
        sample=sample,
        metrics=partial(lm_metrics, characters=corpus.characters),
        is_solved=is_solved,
        eval_data=eval_data,
        vocabulary=corpus.vocabulary,
        stream_window=stream,
        windows_per_epoch=windows_per_epoch,
        eval_stream=eval_stream,
        data_source=corpus.source,
        derived_metrics=perplexity_of_mean,
    )
