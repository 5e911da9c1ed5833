"""In-context recall as MAD defines it (Poli et al., 2024): a row of key-value pairs from a small
vocabulary under one mapping per row, and every later repeat of a key asks for its value.

Written from the paper's description; no code is shared. A row of N tokens is N/2 pairs::

    k1 v(k1) k2 v(k2) k1 v(k1) k3 v(k3) k2 v(k2) ...

- each pair's key is drawn uniformly from the K keys (so keys repeat), and its value is the row's
  value for that key, ``value[k]``, drawn uniformly from the V values once per row (two keys may
  share a value);
- the first occurrence of a key teaches its value; every later occurrence is a query: at the key's
  position the target is the next token, ``value[k]`` (the next-token convention);
- nothing marks a query: a key is a query exactly when it has occurred before in the row.

So unlike MQAR most positions are answers or their evidence, and the share of scored positions
is ``(N/2 - distinct keys) / N``, between 10% and 50% for most K and N (37% at K=16, N=128; 29% at
K=32): the density between the sparse recall tasks and language modelling, where head B's
teacher must choose its target (``probe_target``).

``relevant`` marks the two tokens of every key's first occurrence that a later query asks;
``source`` at a query is that first occurrence, ``[p, p + 2)`` (every later repeat holds the same
pair, so a model may answer from any of them; the first is the one only a memory can keep).

Ids: ``0`` PAD, keys ``1..K``, values ``K+1..K+V``; ``vocab_size = 1 + K + V``. Chance is ``1/V``.

Worked example, ``InContextRecallTask(seq_len=12, num_keys=3, num_values=4)`` (keys 1-3, values
4-7), train batch 1, seed 0::

    position   0  1  2  3  4  5  6  7  8  9 10 11
    tokens     2  5  3  4  2  5  2  5  1  7  3  4
    targets    .  .  .  .  5  .  5  .  .  .  4  .
    loss_mask              ^     ^           ^
    relevant   ^  ^  ^  ^
    source at 4 and 6: [0, 2)    at 10: [2, 4)    (key 1 at 8 comes once: not asked)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from selmem.tasks.base import Batch, Task
from selmem.tasks.common import check_batch_args, check_int, empty_source, make_batch


@dataclass
class InContextRecallTask(Task):
    """Recall the value of every key that comes back (MAD's in-context recall)."""

    name: ClassVar[str] = "icr"

    seq_len: int = 128
    """Row length, even: seq_len / 2 key-value pairs."""
    num_keys: int = 32
    """Distinct keys a pair draws from; fewer keys, more repeats (a denser task)."""
    num_values: int = 32
    """Distinct values; chance accuracy is 1/num_values."""
    seed: int = 0
    """Seed of the train/test streams (see Task.rng)."""

    @property
    def vocab_size(self) -> int:
        """PAD, the keys and the values."""
        return 1 + self.num_keys + self.num_values

    @property
    def chance(self) -> float:
        """Accuracy of guessing a value uniformly."""
        return 1.0 / self.num_values

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        check_int("seq_len", self.seq_len, 4)
        if self.seq_len % 2:
            raise ValueError(f"seq_len must be even (a row is seq_len / 2 key-value pairs), got {self.seq_len}")
        check_int("num_keys", self.num_keys, 1)
        check_int("num_values", self.num_values, 1)
        check_int("seed", self.seed, 0)

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Batch ``index`` of ``split``: a pure function of the parameters, split and index."""
        self.validate()
        check_batch_args(index, batch_size)
        rng = self.rng(split, index)
        B, N, K, V = batch_size, self.seq_len, self.num_keys, self.num_values
        P = N // 2
        rows = np.arange(B)[:, None]

        value = 1 + K + rng.integers(0, V, size=(B, K))  # (B, K) the row's value of each key
        keys = rng.integers(0, K, size=(B, P))  # (B, P) key index of each pair
        tokens = np.empty((B, N), dtype=np.int64)
        tokens[:, 0::2] = 1 + keys
        tokens[:, 1::2] = value[rows, keys]

        # first[b, i]: the pair index of pair i's key's first occurrence in row b
        seen = keys[:, :, None] == keys[:, None, :]  # (B, P, P) pair j has pair i's key
        first = seen.argmax(-1)  # the smallest such j
        repeat = first < np.arange(P)[None, :]  # (B, P) pair i's key came before: a query
        key_pos = 2 * np.arange(P)  # (P,)

        targets = np.zeros((B, N), dtype=np.int64)
        loss_mask = np.zeros((B, N), dtype=bool)
        loss_mask[:, 0::2] = repeat
        targets[:, 0::2] = np.where(repeat, tokens[:, 1::2], 0)
        relevant = np.zeros((B, N), dtype=bool)
        source = empty_source(B, N)
        b, i = np.nonzero(repeat)
        src = 2 * first[b, i]
        relevant[b, src] = relevant[b, src + 1] = True
        source[b, key_pos[i], 0] = src
        source[b, key_pos[i], 1] = src + 2
        return make_batch(tokens, targets, loss_mask, relevant, source)
