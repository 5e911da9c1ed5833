"""Unmarked multi-query associative recall as Zoology defines it (Arora et al., 2023), and its
overwritten-facts variant: the rows behind ``MQARTask(layout="stream")``.

Written from the paper's description and the public generator's (``zoology/data/
multiquery_ar.py``) documented behaviour; no code is shared. A row of N tokens::

    k1 v1 k2 v2 ... kn vn | z z kπ1 z z z kπ2 z ... kπn z z       (z: noise, π: the query order)

- the n pairs open the stream (positions 0..2n-1); keys are distinct, values are distinct;
- every key is asked once, as a bare key (no ASK marker, and its value does *not* follow): query
  j sits at ``2n + 2 g_j`` where the gaps ``g_j`` are distinct draws from ``0..(N-2n)/2 - 1``, with
  Zoology's power law ``p(g) ∝ a (g+1)^(a-1)`` (``gaps="power"``, ``a = power_a``; 0.01 puts most
  queries right after the pairs) or uniformly (``gaps="uniform"``, every distance alike);
- the target at a query is its key's value, the next token of the next-token convention;
- every other position is noise drawn from every id (``noise="shared"``: keys and values
  included, so "k v" bigrams also occur in the noise) or from the noise ids only ("disjoint").

Only the place of the pairs (the opening of the stream) tells them from noise, as in Zoology.

Overwritten facts (``rebind = r > 0``): the first r keys are bound a second time to a different
value, and a query's answer is the key's *latest* binding before it.

- ``rebind_at="same"``: the opening block holds the n + r bindings in a random order; the later of
  a key's two bindings wins for every query (all queries come after the block).
- ``rebind_at="later"``: each re-binding ``k v'`` sits at a random even position of segment 1 or
  later (not a query's); queries before it answer v, queries after it v'. A binding is then
  "a key followed by a value" anywhere in the row, so the noise never forms that bigram: a noise
  token right after any key (a query, or a key drawn as noise) is drawn from the non-value ids.

``relevant`` marks the two tokens of every binding some query answers with; ``source`` at a query
is that binding's ``[key position, key position + 2)``.

Worked example, ``MQARTask(layout="stream", num_pairs=2, num_keys=4, num_values=4,
segment_len=8, num_segments=2, noise_vocab=0, noise="shared", gaps="uniform")`` (keys 1-4,
values 5-8), test batch 0, seed 0::

    position   0  1  2  3  4  5  6  7 |  8  9 10 11 12 13 14 15
    tokens     2  8  3  5  4  5  6  3 |  2  1  3  3  6  3  2  6
    targets    .  .  .  .  .  .  .  . |  8  .  5  .  .  .  .  .
    loss_mask                            ^     ^
    relevant   ^  ^  ^  ^
    source at 8: [0, 2)    source at 10: [2, 4)    (noise holds keys too: 3 at 7, 2 at 14;
                                                    and the bigram "4 5" at 4 is noise)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from selmem.tasks.common import answered_spans, random_subsets


class StreamTask(Protocol):
    """What the stream layout reads of its task (an MQARTask with layout='stream', tasks/mqar.py,
    which imports this file: named by its fields here, so the two files do not import each other)."""

    segment_len: int
    num_keys: int
    num_values: int
    noise_vocab: int
    noise: str
    gaps: str
    power_a: float
    rebind_at: str

    def rebinds_at(self, n: int) -> int: ...

    def noise_rows(self, rng: np.random.Generator, B: int, N: int) -> np.ndarray: ...


def gap_probs(space: int, gaps: str, power_a: float) -> np.ndarray:
    """(space,) probabilities of the query gaps 0..space-1: Zoology's power law or uniform."""
    if gaps == "uniform":
        return np.full(space, 1.0 / space)
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    return p / p.sum()


def weighted_subsets(rng: np.random.Generator, B: int, p: np.ndarray, k: int) -> np.ndarray:
    """(B, k) distinct draws per row from ``range(len(p))`` with probabilities p, without
    replacement (successive sampling, as ``np.random.choice(replace=False, p=p)`` does), vectorised
    by the Gumbel-top-k trick: the k largest ``log p + Gumbel`` are such a sample."""
    keys = np.log(p)[None, :] + rng.gumbel(size=(B, len(p)))
    return np.argsort(-keys, axis=1)[:, :k]


def other_values(rng: np.random.Generator, old: np.ndarray, V: int) -> np.ndarray:
    """A value index in [0, V) different from ``old`` (same shape), uniformly."""
    return (old + 1 + rng.integers(0, V - 1, size=old.shape)) % V


def stream_rows(task: StreamTask, rng: np.random.Generator, B: int, n: int, segments: int):
    """The arrays of one batch of the stream layout: tokens, targets, loss_mask, relevant,
    source, for B rows of ``segments`` segments with n pairs (see the module docstring)."""
    T, K, V = task.segment_len, task.num_keys, task.num_values
    N = segments * T
    r = task.rebinds_at(n)
    val0 = 1 + K
    rows = np.arange(B)[:, None]
    keys = 1 + random_subsets(rng, B, K, n)  # (B, n) distinct
    vals = random_subsets(rng, B, V, n)  # (B, n) value indices, distinct (Zoology)
    new_vals = other_values(rng, vals[:, :r], V)  # (B, r) the re-bindings of keys 0..r-1
    later = r > 0 and task.rebind_at == "later"

    # the opening block: n bindings, or n + r in a random order when the re-bindings are in it
    in_block = n + (0 if later else r)
    bind_key = np.concatenate([keys, keys[:, :r]], axis=1)  # (B, n + r): binding i's key
    bind_val = np.concatenate([vals, new_vals], axis=1)
    bind_pos = np.empty((B, n + r), dtype=np.int64)  # where binding i's key sits
    order = np.broadcast_to(np.arange(in_block), (B, in_block)) if r == 0 or later \
        else random_subsets(rng, B, in_block, in_block)
    bind_pos[rows, order] = 2 * np.arange(in_block)[None, :]

    ctx = 2 * in_block
    space = (N - ctx) // 2  # even slots after the block: slot s is position ctx + 2s
    gaps = weighted_subsets(rng, B, gap_probs(space, task.gaps, task.power_a), n)  # (B, n)
    query_pos = ctx + 2 * gaps  # (B, n): query j asks key j
    if later:  # re-bindings at free slots of segment 1 on
        taken = np.zeros((B, space), dtype=bool)
        taken[rows, gaps] = True
        slot_pos = ctx + 2 * np.arange(space)
        free = ~taken & (slot_pos >= T)[None, :]
        score = np.where(free, rng.random((B, space)), -1.0)  # random order of the free slots
        slots = np.argsort(-score, axis=1)[:, :r]
        bind_pos[:, n:] = ctx + 2 * slots

    # noise, then the bindings and the queries over it
    tokens = task.noise_rows(rng, B, N)
    is_noise = np.ones((B, N), dtype=bool)
    tokens[rows, bind_pos] = bind_key
    tokens[rows, bind_pos + 1] = val0 + bind_val
    tokens[rows, query_pos] = keys
    for p in (bind_pos, bind_pos + 1, query_pos):
        is_noise[rows, p] = False
    if later and task.noise == "shared":  # no noise value right after a key: every k v is a binding
        while True:  # a redrawn token may be a key itself: check its successor on the next pass
            prev_key = np.zeros((B, N), dtype=bool)
            prev_key[:, 1:] = (tokens[:, :-1] >= 1) & (tokens[:, :-1] <= K)
            redraw = prev_key & is_noise & (tokens > K) & (tokens <= K + V)
            if not redraw.any():
                break
            non_value = rng.integers(0, K + task.noise_vocab, size=(B, N))  # keys, then noise ids
            non_value = np.where(non_value < K, 1 + non_value, 1 + V + non_value)
            tokens = np.where(redraw, non_value, tokens)

    # the answer of query j: key j's latest binding before it (its re-binding, if that is earlier)
    answer = np.arange(n)[None, :].repeat(B, 0)  # (B, n) index of the binding query j answers
    if r:
        rb = n + np.arange(r)  # binding index of key j's re-binding, j < r
        wins = (bind_pos[:, rb] < query_pos[:, :r]) if later else (bind_pos[:, rb] > bind_pos[:, :r])
        answer[:, :r] = np.where(wins, rb[None, :], np.arange(r)[None, :])
    src = bind_pos[rows, answer]  # (B, n) key position of the answering binding
    return (tokens, *answered_spans(B, N, query_pos, val0 + bind_val[rows, answer], src))
