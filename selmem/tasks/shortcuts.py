"""Context-free rules: can a task's ``relevant`` mask be found without reading context?

A task tests *selection* only if what is worth keeping depends on context. If a lookup table on a
token's id and segment index, or on its position alone, recovers the ``relevant`` mask, a model can
pass by learning the layout, and the task measures nothing about the memory. This module fits
such tables and scores them, so every task can state (and test) how much a shortcut buys.

A rule maps each token to a key: ``"id-segment"`` -> (token id, position // segment_len),
``"position"`` -> position. Fitting counts, per key, how often the token is relevant on the train
split; the table predicts "relevant" for a key seen relevant more often than not (the Bayes rule
of the table, which maximises accuracy, not F1). So the table instead predicts relevant whenever
the key is relevant at least ``min_rate`` of the time; ``shortcut_f1`` reports the best F1 on the
test split over every such rate (each distinct train rate is tried), i.e. the best a lookup table
of this kind can do, tuned on the test set itself (an upper bound, so a low number is a strong
claim). Rare needles need the low rates: a passkey digit at a uniform depth of 256 positions is
relevant at each position about 2% of the time.

>>> from selmem.tasks import MQARTask
>>> shortcut_f1(MQARTask(num_pairs=2, num_keys=4, num_values=4, segment_len=8, num_segments=2), "id-segment")
1.0
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from selmem.tasks.base import Task

Rule = Literal["id-segment", "position"]
RULES: tuple[str, ...] = ("id-segment", "position")


def _keys(tokens: np.ndarray, rule: str, segment_len: int) -> np.ndarray:
    """(B, N) ids -> (B, N) int64 key of each token under ``rule``."""
    pos = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    if rule == "position":
        return pos.astype(np.int64)
    vocab = int(tokens.max()) + 1
    return (pos // segment_len).astype(np.int64) * max(vocab, 1 << 20) + tokens


def _collect(task: Task, split: str, batches: int, batch_size: int, rule: str,
             segment_len: int) -> tuple[np.ndarray, np.ndarray]:
    keys, rel = [], []
    for i in range(batches):
        b = task.batch(split, i, batch_size)
        if b.relevant is None:
            raise ValueError(f"task {task.name!r} has no relevant mask, so no shortcut can be scored")
        keys.append(_keys(b.tokens.numpy(), rule, segment_len).reshape(-1))
        rel.append(b.relevant.numpy().reshape(-1))
    return np.concatenate(keys), np.concatenate(rel)


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """F1 of boolean predictions against boolean truth (0 when nothing is predicted or true)."""
    tp = float((pred & truth).sum())
    denom = float(pred.sum() + truth.sum())
    return 2 * tp / denom if denom else 0.0


def best_threshold_f1(score: np.ndarray, truth: np.ndarray) -> float:
    """Best F1 of ``score >= t`` against ``truth`` over every threshold t > 0 (0 if none helps).

    >>> best_threshold_f1(np.array([0.9, 0.2, 0.2, 0.0]), np.array([True, True, False, False]))
    0.8
    """
    order = np.argsort(-score, kind="stable")
    s, tp = score[order], np.cumsum(truth[order])
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True] & (s > 0))  # last index of each level
    if not len(ends):
        return 0.0
    return float((2 * tp[ends] / (ends + 1 + truth.sum())).max())


def shortcut_f1(task: Task, rule: Rule, segment_len: int | None = None, batches: int = 16,
                batch_size: int = 32) -> float:
    """Best test-split F1 of a lookup table on ``rule`` fitted on the train split.

    ``segment_len`` defaults to the task's own ``segment_len`` (mqar); tasks without one need it
    passed (the segment length the model will be trained with). Keys never seen on train are
    predicted "not relevant".
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    seg = segment_len or getattr(task, "segment_len", None)
    if rule == "id-segment" and not seg:
        raise ValueError(f"task {task.name!r} has no segment_len: pass segment_len=")
    k_train, r_train = _collect(task, "train", batches, batch_size, rule, seg or 1)
    k_test, r_test = _collect(task, "test", batches, batch_size, rule, seg or 1)
    uniq, inv = np.unique(k_train, return_inverse=True)
    rate = np.bincount(inv, weights=r_train.astype(np.float64)) / np.bincount(inv)
    idx = np.searchsorted(uniq, k_test).clip(max=len(uniq) - 1)
    seen = uniq[idx] == k_test
    test_rate = np.where(seen, rate[idx], 0.0)
    return best_threshold_f1(test_rate, r_test)


def in_segment_share(task: Task, segment_len: int, batches: int = 16, batch_size: int = 32) -> float:
    """Share of the test split's scored positions whose ``source`` span (what the answer needs)
    ends inside the answer's own segment, so a model without memory (``local``) sees at least the
    end of it. 0 means every answer needs the memory; a task's score for ``local`` above chance
    comes from this share and from priors. Positions without a source are not counted (NaN when
    none has one); an answer of several scored positions counts once per position.

    >>> from selmem.tasks import MQARTask
    >>> in_segment_share(MQARTask(num_pairs=2, num_keys=4, num_values=4, segment_len=8, num_segments=2), 8)
    0.0
    """
    if segment_len < 1:
        raise ValueError(f"segment_len must be >= 1, got {segment_len}")
    hit = total = 0
    for i in range(batches):
        b = task.batch("test", i, batch_size)
        if b.source is None:
            raise ValueError(f"task {task.name!r} has no source spans, so no in-segment share can be scored")
        end = b.source[..., 1].numpy()  # (B, N) exclusive end, -1 = no source
        pos = np.broadcast_to(np.arange(end.shape[1]), end.shape)
        scored = b.loss_mask.numpy() & (end > 0)
        hit += int((scored & ((end - 1) // segment_len == pos // segment_len)).sum())
        total += int(scored.sum())
    return hit / total if total else float("nan")  # nothing scored has a source: no claim either way


def report(task: Task, segment_len: int, batches: int = 16, batch_size: int = 32) -> dict[str, float]:
    """Every check of this module for one task at one segment length: the best lookup-table F1
    per rule (where the task has a relevant mask) and the in-segment share (where it has sources)."""
    out: dict[str, float] = {}
    probe = task.batch("test", 0, 1)
    if probe.relevant is not None:
        out.update({f"shortcut F1 ({rule})": shortcut_f1(task, rule, segment_len, batches, batch_size)
                    for rule in RULES})
    if probe.source is not None:
        share = in_segment_share(task, segment_len, batches, batch_size)
        out["scored positions whose source ends in their own segment"] = share
    return out
