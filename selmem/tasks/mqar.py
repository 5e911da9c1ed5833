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

The layout above gives the answer away: a lookup table on (id, segment) finds every pair token
(``selmem.tasks.shortcuts``). The hard layout removes both shortcuts:

- ``placement="random"``: pairs (and queries) sit at random, non-overlapping positions;
- ``noise="shared"``, ``marked=True``: noise is drawn from every key, value and noise id, the
  row's own keys included, and each pair is announced by a SET token (each query by ASK). Only
  context says what matters: a key is worth keeping because SET came before it;
- ``context_segments=S``: pair i sits in segment ``i mod S``, so the pairs span several segments.

Hard row, ``MQARTask(num_pairs=2, num_keys=4, num_values=4, segment_len=8, num_segments=3,
noise_vocab=2, placement="random", noise="shared", marked=True)`` (SET = 11, ASK = 12; ids
1-10 all appear as noise), train batch 0, seed 0::

    position   0  1  2  3  4  5  6  7 |  8  9 10 11 12 13 14 15 | 16 17 18 19 20 21 22 23
    tokens    10 11  4  5 11  3  8  9 |  7  1  4  9  6  1  8  8 |  9 12  3  8 12  4  5  3
    targets    .  .  .  .  .  .  .  . |                         |  .  .  8  .  .  5  .  .
    loss_mask                                                            ^        ^
    relevant         ^  ^     ^  ^
    source at 18: [5, 7)    source at 21: [2, 4)    (key 4 is also noise at 10, key 3 at 23)

Curriculum: for split "train" with ``curriculum_steps > 0``, batch ``index`` uses
``n = min_pairs + round((num_pairs - min_pairs) * min(1, index / curriculum_steps))`` pairs
(Python's ``round``); the test split always uses ``num_pairs``. Chance accuracy is ``1/V``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from selmem.tasks import zoology
from selmem.tasks.base import Batch, Task
from selmem.tasks.common import (
    answered_spans,
    check_batch_args,
    check_choice,
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
    placement: Literal["fixed", "random"] = "fixed"
    """'fixed': pairs at offsets 0..2n-1 of segment 0, queries at the same offsets of the last
    segment (position alone says what matters); 'random': pairs at random, non-overlapping
    positions of the context segments, queries at random positions of the last segment."""
    noise: Literal["disjoint", "shared"] = "disjoint"
    """'disjoint': noise uses its own ids; 'shared': noise is drawn from every key, value and noise
    id, the row's own keys included, so a key id says nothing (needs marked=True)."""
    marked: bool = False
    """Precede each pair by a SET token and each query by an ASK token: with shared noise, the
    context (a SET before it) is the only thing that tells a pair from noise."""
    context_segments: int = 1
    """Segments the pairs are spread over (pair i goes to segment i mod context_segments);
    must leave the last segment for the queries."""
    layout: Literal["segments", "stream"] = "segments"
    """'segments': the layout above (pairs in the context segments, queries in the last one);
    'stream': Zoology's unmarked MQAR (tasks/zoology.py): the pairs open the stream, each key is
    asked once as a bare key at a later position drawn by ``gaps``, noise everywhere else."""
    gaps: Literal["power", "uniform"] = "power"
    """layout='stream': how far after the pairs a query sits: Zoology's power law
    p(g) ∝ a (g+1)^(a-1) over the even slots g (most queries close to the pairs) or uniform."""
    power_a: float = 0.01
    """The power law's a in (0, 1] (Zoology's default 0.01; 1 is uniform)."""
    rebind: int = 0
    """Overwritten facts: this many keys are bound a second time to another value, and a query
    answers its key's latest binding (scaled with the pairs of a curriculum row)."""
    rebind_at: Literal["same", "later"] = "same"
    """Where a re-binding goes: 'same' = the segment of its key's first binding (layout='stream':
    the opening block), 'later' = a later segment before the queries' (stream: segment 1 or later,
    and queries between the two bindings answer the first)."""
    seed: int = 0
    """Seed of the train/test streams (see Task.rng)."""

    @property
    def vocab_size(self) -> int:
        """PAD + keys + values + noise ids (+ SET and ASK when marked)."""
        return 1 + self.num_keys + self.num_values + self.noise_vocab + 2 * self.marked

    @property
    def set_id(self) -> int:
        """The SET marker (only used when marked)."""
        return 1 + self.num_keys + self.num_values + self.noise_vocab

    @property
    def ask_id(self) -> int:
        """The ASK marker (only used when marked)."""
        return self.set_id + 1

    @property
    def width(self) -> int:
        """Tokens one pair (or query) takes: 2, or 3 with its marker."""
        return 2 + int(self.marked)

    @property
    def seq_len(self) -> int:
        """num_segments * segment_len."""
        return self.num_segments * self.segment_len

    @property
    def chance(self) -> float:
        """Accuracy of guessing a value uniformly."""
        return 1.0 / self.num_values

    def rebinds_at(self, n: int) -> int:
        """Re-bound keys in a row of n pairs: ``rebind`` scaled by n / num_pairs (rounded)."""
        return min(n, round(self.rebind * n / self.num_pairs)) if self.rebind else 0

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        check_choice("layout", self.layout, ("segments", "stream"))
        check_int("rebind", self.rebind, 0, self.num_pairs if isinstance(self.num_pairs, int) else None)
        check_choice("rebind_at", self.rebind_at, ("same", "later"))
        if self.rebind and self.num_values < 2:
            raise ValueError("num_values must be at least 2 with rebind > 0: a re-binding needs another value")
        if self.layout == "stream":
            return self._validate_stream()
        check_int("num_keys", self.num_keys, 1)
        check_int("num_values", self.num_values, 1)
        check_int("noise_vocab", self.noise_vocab, 1)
        check_int("segment_len", self.segment_len, 2)
        check_int("num_segments", self.num_segments, 2)
        check_choice("placement", self.placement, ("fixed", "random"))
        check_choice("noise", self.noise, ("disjoint", "shared"))
        if not isinstance(self.marked, bool):
            raise ValueError(f"marked must be a bool, got {self.marked!r}")
        if self.noise == "shared" and not self.marked:
            raise ValueError("noise='shared' needs marked=True: without a SET marker nothing in the input "
                             "tells a pair from noise that uses the same ids")
        check_int("context_segments", self.context_segments, 1, self.num_segments - 1)
        if self.rebind and self.rebind_at == "later" and self.context_segments > self.num_segments - 2:
            raise ValueError(f"rebind_at must be 'same' here: 'later' needs a segment between the pairs and "
                             f"the queries, and context_segments={self.context_segments} of "
                             f"num_segments={self.num_segments} leaves none")
        check_int("num_pairs", self.num_pairs, 1, self.num_keys)
        per_segment = max(self._items_per_segment(self.num_pairs, self.num_segments))
        if max(per_segment, self.num_pairs) * self.width > self.segment_len:
            raise ValueError(f"num_pairs must be small enough to fit a segment: {self.num_pairs} pairs of "
                             f"{self.width} tokens ({per_segment} per context segment) and as many queries "
                             f"need more than segment_len={self.segment_len}")
        check_int("curriculum_steps", self.curriculum_steps, 0)
        if self.curriculum_steps > 0:
            check_int("min_pairs", self.min_pairs, 1, self.num_pairs)
        if self.min_segments:
            check_int("min_segments", self.min_segments, 2, self.num_segments)
        check_int("seed", self.seed, 0)

    def _validate_stream(self) -> None:
        """validate() for layout='stream'."""
        check_int("num_keys", self.num_keys, 1)
        check_int("num_values", self.num_values, 1)
        check_int("noise_vocab", self.noise_vocab, 0 if self.noise == "shared" else 1)
        check_int("segment_len", self.segment_len, 2)
        check_int("num_segments", self.num_segments, 1)
        check_choice("noise", self.noise, ("disjoint", "shared"))
        check_choice("gaps", self.gaps, ("power", "uniform"))
        if self.marked:
            raise ValueError("marked must be False with layout='stream': Zoology's recall has no marker tokens")
        if not (isinstance(self.power_a, (int, float)) and 0 < self.power_a <= 1):
            raise ValueError(f"power_a must be a number in (0, 1], got {self.power_a!r}")
        check_int("num_pairs", self.num_pairs, 1, min(self.num_keys, self.num_values))
        check_int("curriculum_steps", self.curriculum_steps, 0)
        if self.curriculum_steps > 0:
            check_int("min_pairs", self.min_pairs, 1, self.num_pairs)
        if self.min_segments:
            check_int("min_segments", self.min_segments, 1, self.num_segments)
        check_int("seed", self.seed, 0)
        # the shortest and the fullest row the curriculum makes must both hold their items
        shortest = (self.min_segments or self.num_segments) if self.curriculum_steps else self.num_segments
        for n, segs in {(self.num_pairs, self.num_segments), (self.num_pairs, shortest)}:
            r = self.rebinds_at(n)
            later = r if self.rebind_at == "later" else 0
            block = 2 * (n + r - later)
            N = segs * self.segment_len
            free_later = sum(1 for p in range(block, N - 1, 2) if p >= self.segment_len)
            if block + 2 * n > N or (later and free_later < later + n):
                raise ValueError(f"num_pairs must fit the row: {n} pairs (with {r} re-bindings) in {N} tokens, but the "
                                 f"pairs take {block}, the queries {2 * n} more"
                                 + (f", and the re-bindings {2 * later} of segment 1 on" if later else ""))

    def noise_rows(self, rng: np.random.Generator, B: int, N: int) -> np.ndarray:
        """(B, N) noise: any key, value or noise id ('shared', the row's own keys included), or
        the noise ids only ('disjoint')."""
        K, V = self.num_keys, self.num_values
        if self.noise == "shared":
            return 1 + rng.integers(0, K + V + self.noise_vocab, size=(B, N))
        return 1 + K + V + rng.integers(0, self.noise_vocab, size=(B, N))

    def _binding_segments(self, n: int, segments: int) -> list[int]:
        """The segment of each binding of a segments-layout row: pair i, then re-binding i."""
        ctx = min(self.context_segments, segments - 1)
        return [i % ctx for i in range(n)] + [self._rebind_segment(i % ctx, segments)
                                              for i in range(self.rebinds_at(n))]

    def _items_per_segment(self, n: int, segments: int) -> list[int]:
        """Bindings (pairs and re-bindings) in each context segment of a segments-layout row."""
        seg = self._binding_segments(n, segments)
        return [seg.count(s) for s in range(max(seg) + 1)]

    def _rebind_segment(self, s: int, segments: int) -> int:
        """The segment of the re-binding of a pair in segment s (segments layout)."""
        return s if self.rebind_at == "same" else max(s, min(s + 1, segments - 2))

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
        n, B, T = self.pairs_at(split, index), batch_size, self.segment_len
        if self.layout == "stream":
            return make_batch(*zoology.stream_rows(self, rng, B, n, segments))
        if self.rebind:
            return self._rebind_batch(rng, B, n, segments)
        N = segments * T
        key0, val0 = 1, 1 + self.num_keys

        keys = key0 + random_subsets(rng, B, self.num_keys, n)  # (B, n) distinct per row
        values = val0 + rng.integers(0, self.num_values, size=(B, n))  # (B, n)
        order = random_subsets(rng, B, n, n)  # (B, n): query j asks pair order[:, j]
        tokens = self.noise_rows(rng, B, N)

        ctx = min(self.context_segments, segments - 1)  # the curriculum may shorten the row
        seg_of = np.arange(n) % ctx  # pair i lives in context segment i mod ctx
        key_pos = np.empty((B, n), dtype=np.int64)  # first token of pair i (its SET when marked)
        for s in range(ctx):
            idx = np.flatnonzero(seg_of == s)
            key_pos[:, idx] = s * T + self._offsets(rng, B, len(idx))
        start = (segments - 1) * T
        query_pos = start + self._offsets(rng, B, n)  # (B, n) first token of query j
        rows = np.arange(B)[:, None]
        m = int(self.marked)
        if m:
            tokens[rows, key_pos] = self.set_id
            tokens[rows, query_pos] = self.ask_id
        tokens[rows, key_pos + m] = keys
        tokens[rows, key_pos + m + 1] = values
        tokens[rows, query_pos + m] = keys[rows, order]
        tokens[rows, query_pos + m + 1] = values[rows, order]

        asked = query_pos + m  # scored: the query key, whose next token is its value
        targets = np.zeros((B, N), dtype=np.int64)
        targets[rows, asked] = values[rows, order]
        loss_mask = np.zeros((B, N), dtype=bool)
        loss_mask[rows, asked] = True
        relevant = np.zeros((B, N), dtype=bool)
        relevant[rows, key_pos + m] = True
        relevant[rows, key_pos + m + 1] = True
        source = empty_source(B, N)
        pair_key = key_pos[rows, order] + m  # (B, n) where the asked pair's key sits
        source[rows, asked, 0] = pair_key
        source[rows, asked, 1] = pair_key + 2
        return make_batch(tokens, targets, loss_mask, relevant, source)

    def _rebind_batch(self, rng: np.random.Generator, B: int, n: int, segments: int) -> Batch:
        """batch() of the segments layout with re-bindings: keys 0..r-1 are bound twice (the second
        value differs), each binding at its own random position; every query is in the last segment,
        so it answers the later of its key's two bindings."""
        T, K, V = self.segment_len, self.num_keys, self.num_values
        N, r, m = segments * T, self.rebinds_at(n), int(self.marked)
        rows = np.arange(B)[:, None]
        keys = 1 + random_subsets(rng, B, K, n)  # (B, n)
        vals = rng.integers(0, V, size=(B, n))
        bind_key = np.concatenate([keys, keys[:, :r]], axis=1)  # (B, n + r)
        bind_val = 1 + K + np.concatenate([vals, zoology.other_values(rng, vals[:, :r], V)], axis=1)
        order = random_subsets(rng, B, n, n)  # query j asks pair order[:, j]
        tokens = self.noise_rows(rng, B, N)
        ctx = min(self.context_segments, segments - 1)
        seg_of = np.array(self._binding_segments(n, segments))
        bind_pos = np.empty((B, n + r), dtype=np.int64)
        for s_ in range(int(seg_of.max()) + 1):
            idx = np.flatnonzero(seg_of == s_)  # this segment's bindings, in a random order per row
            perm = random_subsets(rng, B, len(idx), len(idx))
            bind_pos[:, idx] = s_ * T + np.take_along_axis(self._offsets(rng, B, len(idx)), perm, axis=1)
        query_pos = (segments - 1) * T + self._offsets(rng, B, n)
        if m:
            tokens[rows, bind_pos] = self.set_id
            tokens[rows, query_pos] = self.ask_id
        tokens[rows, bind_pos + m] = bind_key
        tokens[rows, bind_pos + m + 1] = bind_val
        # pair i's answering binding: its re-binding where that one is later
        latest = np.arange(n)[None, :].repeat(B, 0)
        if r:
            rb = n + np.arange(r)
            latest[:, :r] = np.where(bind_pos[:, rb] > bind_pos[:, :r], rb[None, :], np.arange(r)[None, :])
        asked = query_pos + m
        answer = latest[rows, order]  # (B, n) binding index answering query j
        tokens[rows, asked] = keys[rows, order]
        tokens[rows, asked + 1] = bind_val[rows, answer]
        src = bind_pos[rows, answer] + m  # (B, n) the answering binding's key
        return make_batch(tokens, *answered_spans(B, N, asked, bind_val[rows, answer], src))

    def _offsets(self, rng: np.random.Generator, B: int, n: int) -> np.ndarray:
        """(B, n) start offsets inside one segment of n non-overlapping items of ``width`` tokens:
        ``0, w, 2w, ...`` for 'fixed'; uniform over all non-overlapping placements for 'random'
        (draw n sorted gaps from the segment with (w - 1) tokens per item removed, then spread)."""
        w = self.width
        if self.placement == "fixed":
            return np.broadcast_to(w * np.arange(n), (B, n)).copy()
        free = self.segment_len - n * (w - 1)
        return np.sort(random_subsets(rng, B, free, n), axis=1) + (w - 1) * np.arange(n)
