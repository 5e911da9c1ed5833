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

Chance accuracy per digit is 1/10.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from selmem.tasks.base import Batch, Task
from selmem.tasks.common import check_batch_args, check_choice, check_int, empty_source, make_batch

DIGIT0, KEY, QUERY, FILLER0 = 1, 11, 12, 13
FILLER_VOCAB = 8  # filler ids 13..20


@dataclass
class PasskeyTask(Task):
    """Recall a short digit passkey hidden at a random depth of a long filler."""

    name: ClassVar[str] = "passkey"

    length: int = 256
    """Total tokens per row (the haystack length); change it for evaluation with with_length()."""
    key_len: int = 5
    """Digits in the passkey; needs length >= 2*key_len + 1."""
    filler: Literal["repeat", "random"] = "repeat"
    """Filler: "repeat" = a fixed cyclic pattern (the classic passkey), "random" = uniform noise."""
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
        check_int("length", self.length, 2 * self.key_len + 1)
        check_choice("filler", self.filler, ("repeat", "random"))
        check_int("seed", self.seed, 0)

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Batch ``index`` of ``split``: a pure function of the parameters, split and index."""
        self.validate()
        check_batch_args(index, batch_size)
        rng = self.rng(split, index)
        B, N, k = batch_size, self.length, self.key_len

        digits = DIGIT0 + rng.integers(0, 10, size=(B, k))  # (B, k)
        start = rng.integers(0, N - 2 * k, size=B)  # (B,) KEY position p in [0, N-2k-1]
        if self.filler == "repeat":
            tokens = np.broadcast_to(FILLER0 + np.arange(N) % FILLER_VOCAB, (B, N)).copy()
        else:
            tokens = FILLER0 + rng.integers(0, FILLER_VOCAB, size=(B, N))
        rows = np.arange(B)[:, None]
        digit_pos = start[:, None] + 1 + np.arange(k)  # (B, k) needle digit positions
        tokens[np.arange(B), start] = KEY
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
