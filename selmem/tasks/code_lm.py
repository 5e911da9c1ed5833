"""Byte-level language modelling of real source code: the running interpreter's stdlib.

Corpus: the sorted ``.py`` files of ``sysconfig.get_paths()["stdlib"]`` without test suites,
idlelib, lib2to3, encodings, pydoc_data and site-packages, capped at ``max_bytes`` (the longest
prefix of the sorted list that fits; see :mod:`selmem.tasks.stdlib`). A file is held out for test
when ``crc32(relative path) % 10 == 0``. The corpus depends on the Python version: record it.

Ids are raw bytes, ``vocab_size = 256``; PAD (0) doubles as the NUL byte, which no corpus file
contains. ``seq_len`` bytes per row; ``targets[t] = tokens[t+1]`` (next byte); ``loss_mask`` is
True wherever a next byte exists in the same file (a crop at a file's end is PAD-filled and
masked). ``relevant`` and ``source`` are None: in language modelling no single span is the answer.
``repeat_of`` (``recall_ngram``, 8 by default) points each byte that completes an 8-gram seen
earlier in its file and row at that n-gram's first occurrence (``first_repeats``).

- train, ``packed`` (default): the train files put end to end, and a uniform offset
  ``o in [0, total - seq_len - 1]``; the row is ``data[o : o + seq_len + 1]`` shifted, ``reset``
  is True where a file starts (so selmem starts each file with a fresh memory), and the last byte
  of a file, whose target would be the next file's first byte, is not scored.
- train, not ``packed``: a file is drawn with probability proportional to its length, then a
  uniform offset ``o in [0, max(0, len - seq_len - 1)]``; the row is ``file[o : o + seq_len + 1]``
  shifted, PAD-filled past the file's end.
- test: the held-out files cut into consecutive chunks at offsets ``0, seq_len, 2*seq_len, ...``
  in file order; batch ``i`` holds chunks ``i*B .. i*B+B-1`` (modulo the number of chunks), so
  ``test_set(ceil(num_test_chunks() / B), B)`` predicts every held-out byte except each file's
  first (the last batch wraps around and repeats a few chunks).

Worked example, ``CodeLMTask(seq_len=8)`` on a file starting ``b"import os\\n"``, offset 0::

    tokens     i  m  p  o  r  t  ' '  o        (ids 105 109 112 111 114 116 32 111)
    targets    m  p  o  r  t  ' '  o  s
    loss_mask  all True

Bits per byte are the trainer's business; ``chance`` is None (no classification).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from selmem.tasks.base import SPLIT_IDS, Batch, Task
from selmem.tasks.common import PAD, check_batch_args, check_int, make_batch
from selmem.tasks.stdlib import is_test_path, stdlib_files


@dataclass(frozen=True)
class Corpus:
    """One split's files as a single byte array: file f is ``data[starts[f]:ends[f]]``."""

    paths: tuple[str, ...]
    data: np.ndarray  # (total,) uint8
    starts: np.ndarray  # (F,) int64
    ends: np.ndarray  # (F,) int64


@lru_cache(maxsize=8)
def load_corpus(split: str, max_bytes: int, min_file_bytes: int = 1) -> Corpus:
    """The files of ``split`` ("train"/"test") among the first ``max_bytes`` of the stdlib, those
    of at least ``min_file_bytes`` bytes."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
    files = [
        (p, s) for p, s in stdlib_files(max_bytes)
        if is_test_path(p) == (split == "test") and len(s) >= max(min_file_bytes, 1)
    ]
    if not files:
        raise ValueError(f"max_bytes={max_bytes} with min_file_bytes={min_file_bytes} leaves no {split} "
                         f"files; raise max_bytes or lower min_file_bytes")
    lengths = np.array([len(s) for _, s in files], dtype=np.int64)
    ends = np.cumsum(lengths)
    data = np.frombuffer(b"".join(s for _, s in files), dtype=np.uint8)
    return Corpus(tuple(p for p, _ in files), data, ends - lengths, ends)


def first_repeats(rows: np.ndarray, doc: np.ndarray, n: int) -> np.ndarray:
    """rows (B, N + 1) byte ids, doc (B, N + 1) the document of each position (-1: none, as past a
    file's end) -> (B, N) long: at target t (rows[:, t + 1]), the earliest target index u < t
    whose n bytes ending with it, rows[:, u + 2 - n : u + 2], equal t's, within one document;
    -1 where t's n-gram is new or does not fit in its document."""
    B, L = rows.shape
    out = np.full((B, L - 1), -1, dtype=np.int64)
    if n < 1 or L < n:
        return out
    win = sliding_window_view(rows.astype(np.uint8), n, axis=1)  # (B, K, n): window k ends at row k + n - 1
    dwin = sliding_window_view(doc, n, axis=1)  # (B, K, n)
    t = np.arange(win.shape[1]) + n - 2  # the target each window completes
    ok = (dwin.min(-1) == dwin.max(-1)) & (dwin[..., 0] >= 0) & (t >= 0)[None]  # (B, K)
    keys = np.concatenate([win, dwin[..., :1].astype("<i8").view(np.uint8)], axis=-1)  # (B, K, n + 8)
    keys = np.ascontiguousarray(keys).view(np.dtype((np.void, n + 8)))[..., 0]  # (B, K)
    for b in range(B):
        k = np.flatnonzero(ok[b])
        _, first, inverse = np.unique(keys[b, k], return_index=True, return_inverse=True)
        earliest = k[first[inverse]]  # (K_ok,) the first window with the same key
        seen = earliest < k
        out[b, t[k[seen]]] = t[earliest[seen]]
    return out


def _rows(corpus: Corpus, files: np.ndarray, offsets: np.ndarray, seq_len: int) -> np.ndarray:
    """(B, seq_len + 1) byte windows ``file[o : o + seq_len + 1]``, PAD past a file's end."""
    rows = np.full((len(files), seq_len + 1), PAD, dtype=np.int64)
    for b, (f, o) in enumerate(zip(files, offsets, strict=True)):
        chunk = corpus.data[
            corpus.starts[f] + o : min(corpus.ends[f], corpus.starts[f] + o + seq_len + 1)
        ]
        rows[b, : len(chunk)] = chunk
    return rows


@dataclass
class CodeLMTask(Task):
    """Predict the next byte of Python standard library source code."""

    name: ClassVar[str] = "code-lm"

    seq_len: int = 512
    """Bytes per row (the model sees seq_len bytes and predicts each one's successor)."""
    max_bytes: int = 8_000_000
    """Cap on the corpus read from disk (first files of the sorted list), to keep loading fast."""
    seed: int = 0
    """Seed of the train stream (the test chunks are enumerated in order)."""
    packed: bool = True
    """Train rows are windows over the files put end to end with a memory reset at each file start
    (True), or crops of one file, PAD-filled at its end (False)."""
    min_file_bytes: int = 0
    """Leave out the files shorter than this (both splits): a long-context preset keeps the files
    that fill its rows, so that a row is one file's long-range structure, not padding."""
    recall_ngram: int = 8
    """Each batch's ``repeat_of`` marks the bytes that complete an n-gram of this many bytes seen
    earlier in the same file and row (Zoology's associative recall hits); evaluation reports the
    bits per byte on those an earlier segment must supply and on the rest. 0: not computed."""

    @property
    def vocab_size(self) -> int:
        """Raw bytes; PAD is the (absent) NUL byte."""
        return 256

    @property
    def chance(self) -> None:
        """Language modelling: report bits per byte, not accuracy against chance."""
        return None

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        check_int("seq_len", self.seq_len, 1)
        check_int("max_bytes", self.max_bytes, 1)
        check_int("seed", self.seed, 0)
        check_int("recall_ngram", self.recall_ngram, 0)
        check_int("min_file_bytes", self.min_file_bytes, 0)

    def num_test_chunks(self) -> int:
        """How many distinct test chunks there are (the test split's natural size)."""
        corpus = load_corpus("test", self.max_bytes, self.min_file_bytes)
        return int(np.sum(-(-(corpus.ends - corpus.starts) // self.seq_len)))

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Batch ``index`` of ``split``: a pure function of the parameters, split and index."""
        self.validate()
        check_batch_args(index, batch_size)
        corpus = load_corpus(split, self.max_bytes, self.min_file_bytes)
        lengths = corpus.ends - corpus.starts  # (F,)
        if split == "train" and self.packed:
            return self._packed(corpus, self.rng(split, index), batch_size)
        if split == "train":
            rng = self.rng(split, index)
            files = rng.choice(len(lengths), size=batch_size, p=lengths / lengths.sum())
            # o <= len - seq_len - 1, so the window's seq_len + 1 bytes fit in the file
            offsets = rng.integers(0, np.maximum(lengths[files] - self.seq_len, 1))
        else:
            per_file = -(-lengths // self.seq_len)  # chunks per test file, ceil
            chunk_ids = (index * batch_size + np.arange(batch_size)) % per_file.sum()
            files = np.searchsorted(np.cumsum(per_file), chunk_ids, side="right")
            offsets = (chunk_ids - (np.cumsum(per_file) - per_file)[files]) * self.seq_len
        rows = _rows(corpus, files, offsets, self.seq_len)  # (B, seq_len + 1)
        tokens, targets = rows[:, :-1], rows[:, 1:]
        inside = offsets[:, None] + np.arange(self.seq_len + 1) < lengths[files][:, None]  # (B, seq_len + 1)
        loss_mask = inside[:, 1:]  # a next byte exists at t iff offset + t + 1 < file length
        return make_batch(tokens, targets, loss_mask, repeat_of=self._repeats(rows, np.where(inside, 0, -1)))

    def _repeats(self, rows: np.ndarray, doc: np.ndarray) -> np.ndarray | None:
        return first_repeats(rows, doc, self.recall_ngram) if self.recall_ngram else None

    def _packed(self, corpus: Corpus, rng: np.random.Generator, batch_size: int) -> Batch:
        """Windows of seq_len + 1 bytes over the whole split, resets at file starts."""
        total = len(corpus.data)
        if total < self.seq_len + 1:
            raise ValueError(f"seq_len={self.seq_len} exceeds the {total} train bytes; raise max_bytes")
        offsets = rng.integers(0, total - self.seq_len, size=batch_size)  # o + seq_len + 1 <= total
        at = offsets[:, None] + np.arange(self.seq_len + 1)  # (B, seq_len + 1) corpus positions
        rows = corpus.data[at].astype(np.int64)
        starts = np.zeros(total + 1, dtype=bool)
        starts[corpus.starts] = True  # (total + 1,) a file starts here (the end sentinel is False)
        reset = starts[at]  # (B, seq_len + 1)
        loss_mask = ~reset[:, 1:]  # the target would be another file's first byte
        return make_batch(rows[:, :-1], rows[:, 1:], loss_mask, reset=reset[:, :-1],
                          repeat_of=self._repeats(rows, np.cumsum(reset, axis=1)))
