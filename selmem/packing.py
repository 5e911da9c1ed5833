"""Padded and packed batches: each row's own segments, so that padding changes nothing and a
document never reads the memory of the one before it.

Legend: B batch, N row length, T segment length.

A row's stream is its real tokens (``valid``) in order. It is cut into segments of T tokens,
and a new segment also starts at every document start (``starts``), where the row's memory is
reset to a fresh one. Row b's i-th segment runs at step i, right-padded to the longest segment
of the step; so every document runs exactly as it would alone: same segment boundaries, same
(segment-relative) positions, a fresh memory, and no attention across its start. A padded batch
is the special case without resets.

Worked example, T = 4, one row ``a a a | b b b b b`` (a new document at position 3)::

    step 0: positions 0 1 2 .   (document a; reset at the start of the stream)
    step 1: positions 3 4 5 6   reset: document b starts
    step 2: positions 7 . . .
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Step(NamedTuple):
    index: Tensor  # (B, t) long, the row positions each step slot holds (0 where padding)
    mask: Tensor   # (B, t) bool, real tokens (right padding)
    reset: Tensor  # (B,) bool, the row starts a new document at this step
    full: bool     # every row has t real tokens (mask all True)
    take: Tensor   # (K,) long, b * t + j of the K real entries of the step, row-major
    dest: Tensor   # (K,) long, b * N + position of each, where its outputs go in the (B, N) layout
    # full, take and dest are made on the host with the schedule, so using them needs no device sync


def starts_from_doc_ids(doc_ids: Tensor) -> Tensor:
    """doc_ids (B, N) -> (B, N) bool, True where a position's document differs from the one before."""
    first = torch.zeros_like(doc_ids[:, :1], dtype=torch.bool)
    return torch.cat([first, doc_ids[:, 1:] != doc_ids[:, :-1]], dim=1)


def row_segments(valid: list[bool], starts: list[bool], T: int) -> list[tuple[list[int], bool]]:
    """One row -> its segments: (positions, starts a document). A start flag on a padding
    position carries to the next real token."""
    segs: list[tuple[list[int], bool]] = []
    cur: list[int] = []
    pending = new_doc = False
    for p, (v, s) in enumerate(zip(valid, starts, strict=True)):
        pending = pending or s
        if not v:
            continue
        if cur and (pending or len(cur) == T):
            segs.append((cur, new_doc))
            cur = []
        if not cur:
            new_doc = pending
        pending = False
        cur.append(p)
    if cur:
        segs.append((cur, new_doc))
    return segs


def schedule(valid: Tensor, starts: Tensor, T: int) -> list[Step]:
    """valid (B, N) bool real tokens, starts (B, N) bool document starts -> the steps that run
    every row's segments in order (see the module docstring)."""
    if valid.shape != starts.shape or valid.dim() != 2:
        raise ValueError(f"attention_mask and reset must both be (batch, length), got {tuple(valid.shape)} "
                         f"and {tuple(starts.shape)}")
    rows = [row_segments(v, s, T) for v, s in zip(valid.tolist(), starts.tolist(), strict=True)]
    if not any(rows):
        raise ValueError("attention_mask masks every token: nothing to run")
    B, device = valid.shape[0], valid.device
    steps = []
    for i in range(max(len(r) for r in rows)):
        segs = [r[i] if i < len(r) else ([], False) for r in rows]
        t = max(len(pos) for pos, _ in segs)
        index = torch.zeros(B, t, dtype=torch.long)
        mask = torch.zeros(B, t, dtype=torch.bool)
        for b, (pos, _) in enumerate(segs):
            index[b, : len(pos)] = torch.tensor(pos, dtype=torch.long)
            mask[b, : len(pos)] = True
        reset = torch.tensor([new for _, new in segs], dtype=torch.bool)
        b, j = mask.nonzero(as_tuple=True)  # on the host
        take, dest = b * t + j, b * valid.shape[1] + index[b, j]
        steps.append(Step(index.to(device), mask.to(device), reset.to(device), bool(mask.all()), take.to(device),
                          dest.to(device)))
    return steps
