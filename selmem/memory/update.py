"""Update and forgetting: write a segment's candidates into the slots, in order.

Legend: B batch, C candidates, M slots, d_mem slot width.

Candidate t writes a_tj = g_t * w_tj of itself into slot j, erasing as much of what was there:

    C_j <- (1 - a_tj) * C_j + a_tj * c_t          for t = 1..C in order        (1)

so every slot stays a convex mix of its initial content and the candidates ever written to it,
and its norm never exceeds the largest of those norms: bounded for any stream length (candidates
are RMS-normed in compress.py). Unrolled, (1) is

    C_j' = P_j * C_j + sum_t a_tj * prod_{s>t} (1 - a_sj) * c_t,   P_j = prod_t (1 - a_tj),

which is computed here for all t and j at once with a reverse cumulative product (torch's
cumprod backward is exact at zeros, so hard one-hot writes are fine). ``reference.py`` holds the
loop form of (1); the tests check that the two agree on slots, usage, age and gradients.

Forgetting:
  usage' = gamma * P_j * usage + sum_t g_t * share_tj + read_j
          the importance of what a slot holds now: each surviving piece of content weighted by the
          gate that selected it (share_tj = a_tj * prod_{s>t}(1 - a_sj) is candidate t's final
          share of slot j), plus the read attention mass. Weighting by the gate is what protects
          selected content: a slot filled by one strongly gated token (g = 0.9) outranks a slot
          filled by three weakly gated ones (g = 0.3), although both received the same written
          mass, so allocation evicts weakly selected content first. Overwritten content takes its
          usage with it (the P_j factor).
  age'   = (age + 1) * P_j                            (a fully overwritten slot restarts at 0)
  optional learned per-slot decay multiplies old content by sigmoid(lambda_j) each segment.
Eviction is allocation's job (address.py prefers low usage, then high age); a slot counts as
evicted in a segment when less than half of its old content survives (P_j < 0.5).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Written(NamedTuple):
    slots: Tensor       # (B, M, d_mem)
    usage: Tensor       # (B, M)
    age: Tensor         # (B, M)
    provenance: Tensor  # (B, M) long
    kept: Tensor        # (B, M) fraction P_j of the old content that survived
    contrib: Tensor     # (B, C, M) final share of candidate t in slot j


def suffix_keep(keep: Tensor) -> tuple[Tensor, Tensor]:
    """keep (B, C, M) -> (later (B, C, M) = prod_{s>t} keep_s, total (B, M) = prod_t keep_t)."""
    rev = keep.flip(1).cumprod(1)  # rev[:, i] = prod of the last i+1 factors
    later = torch.cat([torch.ones_like(rev[:, :1]), rev[:, :-1]], dim=1).flip(1)
    return later, rev[:, -1]


def update(slots: Tensor, usage: Tensor, age: Tensor, provenance: Tensor, cand: Tensor,
           a: Tensor, cand_pos: Tensor, read_mass: Tensor, usage_decay: float,
           slot_decay: Tensor | None = None, gate: Tensor | None = None) -> Written:
    """Apply (1) for all candidates.

    slots (B, M, d_mem), usage/age (B, M), provenance (B, M) long, cand (B, C, d_mem),
    a (B, C, M) write strengths in [0, 1], cand_pos (B, C) long absolute positions,
    read_mass (B, M), slot_decay (M,) or (B, M) in (0, 1) or None, gate (B, C) the selection gate of each
    candidate (its importance in usage; None = 1).
    """
    if slot_decay is not None:
        slots = slots * slot_decay[..., None]
    later, kept = suffix_keep(1.0 - a)
    contrib = a * later  # (B, C, M)
    # sum over candidates of contrib * cand as one bmm (einsum plans its contraction on every call)
    new_slots = kept[..., None] * slots + contrib.transpose(1, 2) @ cand  # (B, M, d_mem)
    importance = contrib if gate is None else gate[..., None] * contrib
    new_usage = usage_decay * kept * usage + importance.sum(1) + read_mass
    new_age = (age + 1.0) * kept
    best, best_t = contrib.detach().max(dim=1)  # (B, M)
    new_prov = torch.where(best > kept.detach(), cand_pos.gather(1, best_t), provenance)
    return Written(new_slots, new_usage, new_age, new_prov, kept, contrib)
