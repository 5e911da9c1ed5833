"""Selective copying (Gu & Dao 2023, Mamba §4.1.1): keep the data tokens, drop the blanks.

``num_tokens`` data tokens sit at random positions of a region of blanks; a marker follows, and
the model must reproduce the data tokens in order. The answer is teacher forced like language
modelling: having read the marker the model outputs the first data token; having read data
token j it outputs data token j+1. What to remember is decided by content (data vs blank), not
by position, which is the point of the task; with ``shared_ids`` (below) it is decided by context.

Ids: ``0`` PAD, ``1`` BLANK, ``2`` MARK, data ``3..2+vocab``; ``vocab_size = 3 + vocab``.
Row of length ``seq_len``: a region of ``P = seq_len - num_tokens - 1`` positions, then MARK at
``P``, then the data tokens ``d1..d_{m}`` at ``P+1..P+m`` (m = num_tokens, so the row ends on
d_m, whose own next token is not scored). Scored positions ``P..P+m-1``, target at ``P+j`` is
``d_{j+1}``. ``relevant`` marks the data positions of the region; ``source`` at ``P+j`` is the
one-token span of ``d_{j+1}`` in the region.

Worked example, ``SelectiveCopyTask(seq_len=11, num_tokens=3, vocab=4)`` (data ids 3-6, P=7),
train batch 0, seed 0::

    position   0  1  2  3  4  5  6 | 7  8  9 10
    tokens     1  6  5  5  1  1  1 | 2  6  5  5
    targets    .  .  .  .  .  .  . | 6  5  5  .
    loss_mask                        ^  ^  ^
    relevant      ^  ^  ^
    source at 7: [1, 2)   at 8: [2, 3)   at 9: [3, 4)

Hard layout (``shared_ids=True``). The default gives the answer away: a data id before the
marker is always relevant, so a lookup table on (id, segment) finds the data without reading
context (``selmem.tasks.shortcuts``). With ``shared_ids`` the blanks become noise drawn from the
data ids, and each data token is announced by a COPY marker, a new id at the end of the vocabulary
(``COPY = 3 + vocab``, ``vocab_size = 4 + vocab``; BLANK is unused). Only context tells a data
token from noise: it is worth keeping because COPY came right before it. The m (COPY, d) pairs sit
at random, non-overlapping positions of the region, which must hold them: ``P >= 2m``, i.e.
``seq_len >= 3*num_tokens + 1``. Everything from MARK on, and ``targets``, ``loss_mask``,
``relevant`` (the data tokens, not their markers) and ``source``, is as above.

Worked example, ``SelectiveCopyTask(seq_len=14, num_tokens=3, vocab=4, shared_ids=True)``
(data ids 3-6, COPY 7, P=10), train batch 0, seed 0::

    position   0  1  2  3  4  5  6  7  8  9 |10 11 12 13
    tokens     5  7  6  7  5  7  5  4  6  5 | 2  6  5  5
    targets    .  .  .  .  .  .  .  .  .  . | 6  5  5  .
    loss_mask                                 ^  ^  ^
    relevant         ^     ^     ^
    source at 10: [2, 3)   at 11: [4, 5)   at 12: [6, 7)   (5 and 6 are also noise at 0, 8, 9)

Chance accuracy is ``1/vocab``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from selmem.tasks.base import Batch, Task
from selmem.tasks.common import (
    check_batch_args,
    check_int,
    empty_source,
    make_batch,
    random_subsets,
)

BLANK, MARK, DATA0 = 1, 2, 3


@dataclass
class SelectiveCopyTask(Task):
    """Reproduce, in order, the data tokens scattered among blanks."""

    name: ClassVar[str] = "selective-copy"

    seq_len: int = 128
    """Row length: region + marker + copied tokens; needs seq_len >= 2*num_tokens + 1
    (3*num_tokens + 1 with shared_ids)."""
    num_tokens: int = 8
    """Data tokens to remember and reproduce."""
    vocab: int = 16
    """Distinct data ids (drawn with replacement); chance accuracy is 1/vocab."""
    shared_ids: bool = False
    """Hard layout: the blanks become noise drawn from the data ids and each data token is preceded
    by a COPY marker (id 3+vocab), so only context (COPY before it) tells data from noise; needs
    seq_len >= 3*num_tokens + 1."""
    seed: int = 0
    """Seed of the train/test streams (see Task.rng)."""

    @property
    def vocab_size(self) -> int:
        """PAD, BLANK, MARK and the data ids (and COPY with shared_ids)."""
        return DATA0 + self.vocab + int(self.shared_ids)

    @property
    def copy_id(self) -> int:
        """The COPY marker before each data token (only used with shared_ids)."""
        return DATA0 + self.vocab

    @property
    def chance(self) -> float:
        """Accuracy of guessing a data token uniformly."""
        return 1.0 / self.vocab

    @property
    def region_len(self) -> int:
        """P: positions before the marker where the data tokens hide."""
        return self.seq_len - self.num_tokens - 1

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        check_int("num_tokens", self.num_tokens, 1)
        check_int("vocab", self.vocab, 1)
        if not isinstance(self.shared_ids, bool):
            raise ValueError(f"shared_ids must be a bool, got {self.shared_ids!r}")
        per_token = 3 if self.shared_ids else 2  # (COPY,) data in the region, its copy after MARK
        check_int("seq_len", self.seq_len, per_token * self.num_tokens + 1)
        check_int("seed", self.seed, 0)

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Batch ``index`` of ``split``: a pure function of the parameters, split and index."""
        self.validate()
        check_batch_args(index, batch_size)
        rng = self.rng(split, index)
        B, N, m, P = batch_size, self.seq_len, self.num_tokens, self.region_len

        if self.shared_ids:  # m (COPY, d) pairs at random, non-overlapping places
            data_pos = np.sort(random_subsets(rng, B, P - m, m), axis=1) + np.arange(m) + 1
        else:
            data_pos = np.sort(random_subsets(rng, B, P, m), axis=1)  # (B, m) increasing
        data = DATA0 + rng.integers(0, self.vocab, size=(B, m))  # (B, m)
        rows = np.arange(B)[:, None]
        if self.shared_ids:
            tokens = DATA0 + rng.integers(0, self.vocab, size=(B, N))  # noise from the data ids
            tokens[rows, data_pos - 1] = self.copy_id
        else:
            tokens = np.full((B, N), BLANK, dtype=np.int64)
        tokens[rows, data_pos] = data
        tokens[:, P] = MARK
        tokens[:, P + 1 :] = data

        out_pos = P + np.arange(m)  # scored positions: MARK, d1, ..., d_{m-1}
        targets = np.zeros((B, N), dtype=np.int64)
        targets[:, out_pos] = data
        loss_mask = np.zeros((B, N), dtype=bool)
        loss_mask[:, out_pos] = True
        relevant = np.zeros((B, N), dtype=bool)
        relevant[rows, data_pos] = True
        source = empty_source(B, N)
        source[:, out_pos, 0] = data_pos
        source[:, out_pos, 1] = data_pos + 1
        return make_batch(tokens, targets, loss_mask, relevant, source)
