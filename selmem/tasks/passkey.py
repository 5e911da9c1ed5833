"""Passkey retrieval (Mohtashami & Jaggi 2023, Landmark Attention): find the needle in filler.

A ``key_len``-digit passkey, introduced by a KEY marker, hides at a random position inside
filler; the row ends with a QUERY marker and the model must then say the digits. Train at one
``length`` and evaluate at many with :meth:`PasskeyTask.with_length` (length generalisation).

Ids: ``0`` PAD, digits ``1..10`` (digit d is id d+1), ``11`` KEY, ``12`` QUERY, filler
``13..20``; ``vocab_size = 21``, ``seq_len = length``. Filler is either the repeating pattern
``13 14 ... 20 13 14 ...`` indexed by absolute position (``filler="repeat"``, the classic
"The grass is green..." haystack: predictable, so nothing in it is worth storing) or uniform
random filler ids (``filler="random"``).

Row (k = key_len, N = length, p = needle start, uniform in ``[0, N - 2k - 1]``)::

    filler ... KEY d1 .. dk filler ... QUERY d1 .. d_{k-1}

The tail ``QUERY d1 .. d_{k-1}`` fills the last k positions ``N-k .. N-1``; they are scored with
targets ``d1 .. dk`` (teacher forced, so the last token is scored). ``relevant`` marks the k digit
positions of the needle; ``source`` at ``N-k+j`` is the one-token span of ``d_{j+1}``,
``[p+1+j, p+2+j)``.

Worked example, ``PasskeyTask(length=12, key_len=2)``, train batch 0, seed 0 (p = 4)::

    position   0  1  2  3  4  5  6  7  8  9 10 11
    tokens    13 14 15 16 11  9  7 20 13 14 12  9
    targets    .  .  .  .  .  .  .  .  .  .  9  7
    loss_mask                                ^  ^
    relevant                  ^  ^
    source at 10: [5, 6)   at 11: [6, 7)           (passkey "86")

Hard layout. The default gives the answer away: the digits are the only digit ids before the
tail, so a lookup table on (id, segment) finds them without reading context
(``selmem.tasks.shortcuts``). Two options remove that:

- ``shared_ids=True``: filler is drawn from the digit ids (random digits, or the cycle
  ``1 2 .. 10 1 2 ..`` for "repeat"); a digit belongs to the passkey only because KEY came
  before it. Ids and ``vocab_size`` are unchanged (ids 13-20 go unused).
- ``needles=n``: the passkey is split into n pieces (``piece_lens()``: as even as possible, longer
  first), each after its own KEY, at random non-overlapping depths of the first ``N - k``
  positions; read in row order they spell the passkey, so the passkey is spread over the row.

``targets``, ``loss_mask`` and the tail are as above; ``relevant`` marks the k passkey digits (not
the KEYs) and ``source`` at ``N-k+j`` is the one-token span of digit j+1 wherever it sits.

Worked example, ``PasskeyTask(length=18, key_len=4, filler="random", shared_ids=True,
needles=2)``, train batch 0, seed 0 (pieces of 2 digits; KEYs at 1 and 11)::

    position   0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17
    tokens     4 11  9  7  8  8  9  2  1  9  1 11  6  3 12  9  7  6
    targets    .  .  .  .  .  .  .  .  .  .  .  .  .  .  9  7  6  3
    loss_mask                                            ^  ^  ^  ^
    relevant         ^  ^                          ^  ^
    source at 14: [2, 3)  at 15: [3, 4)  at 16: [12, 13)  at 17: [13, 14)   (passkey "8652";
    digit 8 is also filler at 6 and 9)

Chance accuracy per digit is 1/10.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from selmem.tasks.base import Batch, Task
from selmem.tasks.common import (
    check_batch_args,
    check_choice,
    check_int,
    empty_source,
    make_batch,
    random_subsets,
)

DIGIT0, KEY, QUERY, FILLER0 = 1, 11, 12, 13
FILLER_VOCAB = 8  # filler ids 13..20


@dataclass
class PasskeyTask(Task):
    """Recall a short digit passkey hidden at a random depth of a long filler."""

    name: ClassVar[str] = "passkey"

    length: int = 256
    """Total tokens per row (the haystack length); change it for evaluation with with_length()."""
    key_len: int = 5
    """Digits in the passkey; needs length >= 2*key_len + needles."""
    filler: Literal["repeat", "random"] = "repeat"
    """Filler: "repeat" = a fixed cyclic pattern (the classic passkey), "random" = uniform noise."""
    shared_ids: bool = False
    """Hard layout: filler is drawn from the digit ids (its cycle, for "repeat", runs over the
    digits), so a digit is part of the passkey only because a KEY came before it."""
    needles: int = 1
    """Pieces the passkey is split into (the first key_len % needles one digit longer), each after
    its own KEY at a random, non-overlapping depth; read in row order they spell the passkey.
    Needs needles <= key_len and length >= 2*key_len + needles."""
    seed: int = 0
    """Seed of the train/test streams (see Task.rng)."""

    @property
    def vocab_size(self) -> int:
        """PAD, 10 digits, KEY, QUERY and the filler ids."""
        return FILLER0 + FILLER_VOCAB

    @property
    def seq_len(self) -> int:
        """Equal to ``length``."""
        return self.length

    @property
    def chance(self) -> float:
        """Accuracy of guessing one digit."""
        return 0.1

    def with_length(self, length: int) -> PasskeyTask:
        """A copy with another ``length`` (same seed and key length), validated."""
        task = dataclasses.replace(self, length=length)
        task.validate()
        return task

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        check_int("key_len", self.key_len, 1)
        check_int("needles", self.needles, 1, self.key_len)
        check_int("length", self.length, 2 * self.key_len + self.needles)
        check_choice("filler", self.filler, ("repeat", "random"))
        if not isinstance(self.shared_ids, bool):
            raise ValueError(f"shared_ids must be a bool, got {self.shared_ids!r}")
        check_int("seed", self.seed, 0)

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Batch ``index`` of ``split``: a pure function of the parameters, split and index."""
        self.validate()
        check_batch_args(index, batch_size)
        rng = self.rng(split, index)
        B, N, k = batch_size, self.length, self.key_len

        digits = DIGIT0 + rng.integers(0, 10, size=(B, k))  # (B, k)
        key_pos, digit_pos = self._needle_positions(rng, B)  # (B, needles), (B, k)
        first, count = (DIGIT0, 10) if self.shared_ids else (FILLER0, FILLER_VOCAB)
        if self.filler == "repeat":
            tokens = np.broadcast_to(first + np.arange(N) % count, (B, N)).copy()
        else:
            tokens = first + rng.integers(0, count, size=(B, N))
        rows = np.arange(B)[:, None]
        tokens[rows, key_pos] = KEY
        tokens[rows, digit_pos] = digits
        tail = N - k + np.arange(k)  # scored positions
        tokens[:, N - k] = QUERY
        tokens[:, N - k + 1 :] = digits[:, : k - 1]

        targets = np.zeros((B, N), dtype=np.int64)
        targets[:, tail] = digits
        loss_mask = np.zeros((B, N), dtype=bool)
        loss_mask[:, tail] = True
        relevant = np.zeros((B, N), dtype=bool)
        relevant[rows, digit_pos] = True
        source = empty_source(B, N)
        source[:, tail, 0] = digit_pos
        source[:, tail, 1] = digit_pos + 1
        return make_batch(tokens, targets, loss_mask, relevant, source)

    def piece_lens(self) -> list[int]:
        """Digits in each needle: key_len split as evenly as possible, longer pieces first.

        >>> PasskeyTask(key_len=5, needles=2).piece_lens()
        [3, 2]
        """
        q, r = divmod(self.key_len, self.needles)
        return [q + (i < r) for i in range(self.needles)]

    def _needle_positions(self, rng: np.random.Generator, B: int) -> tuple[np.ndarray, np.ndarray]:
        """(B, needles) KEY positions and (B, key_len) digit positions, all before ``length - k``.

        The needles are ``needles`` items of ``1 + piece`` tokens in the first ``N - k`` positions:
        n sorted slots ``s`` drawn from ``range(N - 2k)`` (the region with each needle shrunk to one
        token) are spread back out, so KEY i sits at ``s_i`` plus the digits of needles before it,
        and passkey digit j, if it is in needle i, at ``s_i + 1 + j``. One needle draws its slot as
        the original layout did, so default rows are unchanged.
        """
        N, k, n = self.length, self.key_len, self.needles
        if n == 1:
            slots = rng.integers(0, N - 2 * k, size=B)[:, None]  # (B, 1) KEY p in [0, N-2k-1]
        else:
            slots = np.sort(random_subsets(rng, B, N - 2 * k, n), axis=1)  # (B, n) increasing
        lens = np.array(self.piece_lens())
        before = np.cumsum(lens) - lens  # digits of the needles before needle i
        key_pos = slots + before
        digit_pos = slots[:, np.repeat(np.arange(n), lens)] + 1 + np.arange(k)
        return key_pos, digit_pos
