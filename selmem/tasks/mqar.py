"""Segmented multi-query associative recall (MQAR): the main memory task.

Key-value pairs are shown at the start of the first segment, every later segment but the last
is noise, and the last segment asks for each key again. A segment-local model cannot answer: the
pairs must survive ``num_segments - 1`` segment boundaries in the carried memory.

Ids (disjoint ranges): ``0`` PAD, keys ``1..K``, values ``K+1..K+V``, noise ``K+V+1..K+V+Z``
with K = ``num_keys``, V = ``num_values``, Z = ``noise_vocab``; ``vocab_size = 1 + K + V + Z``,
``seq_len = num_segments * segment_len``.

Layout of one row (n pairs, S = (num_segments - 1) * segment_len is the last segment's start)::

    segment 0:       k1 v1 k2 v2 ... kn vn  z z z ... z
    segments 1..-2:  z z z ... z
    last segment:    kπ1 vπ1 kπ2 vπ2 ... kπn vπn  z ... z      (π: a random order of the n keys)

Scored positions are the query keys ``S, S+2, ..., S+2n-2``; the target there is the key's value,
which is also the next token (next-token convention). ``relevant`` marks positions ``0..2n-1``;
``source`` at a query is ``[pos of the key in segment 0, pos of its value + 1)``.

Worked example, ``MQARTask(num_pairs=2, num_keys=4, num_values=4, segment_len=6,
num_segments=3, noise_vocab=2)`` (keys 1-4, values 5-8, noise 9-10), train batch 0, seed 0::

    position   0  1  2  3  4  5 |  6  7  8  9 10 11 | 12 13 14 15 16 17
    tokens     4  5  3  8 10 10 |  9 10 10  9  9 10 |  3  8  4  5 10  9
    targets    .  .  .  .  .  . |  .  .  .  .  .  . |  8  .  5  .  .  .
    loss_mask                                          ^     ^
    relevant   ^  ^  ^  ^
    source at 12: [2, 4)    source at 14: [0, 2)

Curriculum: for split "train" with ``curriculum_steps > 0``, batch ``index`` uses
``n = min_pairs + round((num_pairs - min_pairs) * min(1, index / curriculum_steps))`` pairs
(Python's ``round``); the test split always uses ``num_pairs``. Chance accuracy is ``1/V``.
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


@dataclass
class MQARTask(Task):
    """Segmented multi-query associative recall: pairs in segment 0, queries in the last segment."""

    name: ClassVar[str] = "mqar"

    num_pairs: int = 8
    """N: key-value pairs per example, all queried in the last segment."""
    num_keys: int = 16
    """Possible key ids; keys of one example are distinct, so num_pairs <= num_keys."""
    num_values: int = 16
    """Possible value ids (drawn with replacement); chance accuracy is 1/num_values."""
    segment_len: int = 32
    """Tokens per segment; the pairs (and the queries) fit in one: 2*num_pairs <= segment_len."""
    num_segments: int = 4
    """Segments per row (>= 2); the pairs must cross num_segments-1 segment boundaries."""
    noise_vocab: int = 16
    """Distinct distractor ids filling everything that is not a pair or a query."""
    min_pairs: int = 1
    """Pairs at train index 0 when curriculum_steps > 0; grows linearly to num_pairs."""
    min_segments: int = 0
    """Segments at train index 0 when curriculum_steps > 0 (0 = num_segments: no distance
    curriculum); grows linearly to num_segments, so early rows are shorter and the pairs need to
    survive fewer noise segments."""
    curriculum_steps: int = 0
    """Train batches over which pairs (and segments) ramp to num_pairs (num_segments); 0 = none."""
    seed: int = 0
    """Seed of the train/test streams (see Task.rng)."""

    @property
    def vocab_size(self) -> int:
        """PAD + keys + values + noise ids."""
        return 1 + self.num_keys + self.num_values + self.noise_vocab

    @property
    def seq_len(self) -> int:
        """num_segments * segment_len."""
        return self.num_segments * self.segment_len

    @property
    def chance(self) -> float:
        """Accuracy of guessing a value uniformly."""
        return 1.0 / self.num_values

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        check_int("num_keys", self.num_keys, 1)
        check_int("num_values", self.num_values, 1)
        check_int("noise_vocab", self.noise_vocab, 1)
        check_int("segment_len", self.segment_len, 2)
        check_int("num_segments", self.num_segments, 2)
        check_int("num_pairs", self.num_pairs, 1, min(self.num_keys, self.segment_len // 2))
        check_int("curriculum_steps", self.curriculum_steps, 0)
        if self.curriculum_steps > 0:
            check_int("min_pairs", self.min_pairs, 1, self.num_pairs)
        if self.min_segments:
            check_int("min_segments", self.min_segments, 2, self.num_segments)
        check_int("seed", self.seed, 0)

    def pairs_at(self, split: str, index: int) -> int:
        """How many pairs batch ``index`` of ``split`` holds (the curriculum rule above)."""
        if split != "train" or self.curriculum_steps == 0:
            return self.num_pairs
        frac = min(1.0, index / self.curriculum_steps)
        return self.min_pairs + round((self.num_pairs - self.min_pairs) * frac)

    def segments_at(self, split: str, index: int) -> int:
        """How many segments batch ``index`` of ``split`` holds (ramps like pairs_at)."""
        if split != "train" or self.curriculum_steps == 0 or not self.min_segments:
            return self.num_segments
        frac = min(1.0, index / self.curriculum_steps)
        return self.min_segments + round((self.num_segments - self.min_segments) * frac)

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Batch ``index`` of ``split``: a pure function of the parameters, split and index."""
        self.validate()
        check_batch_args(index, batch_size)
        rng = self.rng(split, index)
        segments = self.segments_at(split, index)
        n, B, N = self.pairs_at(split, index), batch_size, segments * self.segment_len
        key0, val0, noise0 = 1, 1 + self.num_keys, 1 + self.num_keys + self.num_values

        keys = key0 + random_subsets(rng, B, self.num_keys, n)  # (B, n) distinct per row
        values = val0 + rng.integers(0, self.num_values, size=(B, n))  # (B, n)
        order = random_subsets(rng, B, n, n)  # (B, n): query j asks pair order[:, j]
        tokens = noise0 + rng.integers(0, self.noise_vocab, size=(B, N))  # (B, N) noise

        pair_pos = 2 * np.arange(n)  # key positions in segment 0
        tokens[:, pair_pos] = keys
        tokens[:, pair_pos + 1] = values
        start = (segments - 1) * self.segment_len
        query_pos = start + pair_pos  # query key positions in the last segment
        rows = np.arange(B)[:, None]
        tokens[:, query_pos] = keys[rows, order]
        tokens[:, query_pos + 1] = values[rows, order]

        targets = np.zeros((B, N), dtype=np.int64)
        targets[:, query_pos] = values[rows, order]
        loss_mask = np.zeros((B, N), dtype=bool)
        loss_mask[:, query_pos] = True
        relevant = np.zeros((B, N), dtype=bool)
        relevant[:, : 2 * n] = True
        source = empty_source(B, N)
        source[:, query_pos, 0] = 2 * order
        source[:, query_pos, 1] = 2 * order + 2
        return make_batch(tokens, targets, loss_mask, relevant, source)
