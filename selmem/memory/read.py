"""Read: what a layer's tokens may attend to besides their own segment.

Legend: B batch, M slots, R hints per layer, d model width, d_mem slot width.

mem_l = [up(C_l); up_hint(hint_l)] is handed to the block as a prefix of keys/values. The slots
are read as they were *before* this segment's writes, so the present never leaks into the past.

With ``read_bias='usage'`` every token's attention logit on slot j gets a bonus

    b_j = alpha * (log(u_j + eps) - log(mean_i u_i + eps))        (hints get 0)

from the slot's usage u_j (the gate-weighted content it holds plus the reads it got, update.py):
the read prefers what head B said was worth keeping, and head B gets a gradient from every read
(credit from the read), not only through the content it wrote. Equal usages give b = 0, so an
empty memory reads as without the bias; alpha is learned per layer (1 at init).

With ``read_recency='rank'`` the bias also gets

    - beta * rank_j,   rank_j = (#{i: a_i < a_j} + #{i != j: a_i = a_j} / 2) / (M - 1)

from the slots' ages a (segments since written, update.py): 0 for the newest slot, 1 for the
oldest, ties shared, so a fresh memory (all ages equal) gets the same bias on every slot. When a
key was bound twice and both bindings sit in slots that match its query alike, the newer is
read. A rank, not the age itself: the bias is bounded by beta, so on a stream far longer than
the trained one an old fact is penalised no more than the oldest fact was in training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selmem.config import SelmemConfig


class Read(nn.Module):
    """Lift slots and hints to model width: (B, M, d_mem), (B, R, d_mem) -> prefix (B, M+R, d)."""

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__()
        self.enabled = cfg.read == "on"
        # built only when used: unused parameters break DDP and skew parameter counts
        self.up = nn.Linear(cfg.d_mem, cfg.d_model) if self.enabled else None
        hints = self.enabled and cfg.cache_transform == "transformer"
        self.up_hint = nn.Linear(cfg.d_mem, cfg.d_model) if hints else None
        biased = self.enabled and cfg.read_bias == "usage"
        self.alpha = nn.Parameter(torch.ones(())) if biased else None
        recency = self.enabled and cfg.read_recency == "rank"
        self.beta = nn.Parameter(torch.ones(())) if recency else None

    def bias(self, usage: Tensor, n_hints: int, age: Tensor) -> Tensor | None:
        """usage, age (B, M) -> (B, M + n_hints) additive read logits, or None with neither bias."""
        b = None
        if self.alpha is not None:
            eps = 0.01
            b = self.alpha * ((usage + eps).log() - (usage.mean(1, keepdim=True) + eps).log())
        if self.beta is not None:
            recency = self.beta * age_rank(age.detach())
            b = -recency if b is None else b - recency
        if b is None:
            return None
        return torch.cat([b, b.new_zeros(b.shape[0], n_hints)], dim=1)

    def forward(self, slots: Tensor, hints: Tensor | None) -> Tensor | None:
        if not self.enabled:
            return None
        parts = [self.up(slots)]  # (B, M, d)
        if hints is not None:
            parts.append(self.up_hint(hints))  # (B, R, d)
        return torch.cat(parts, dim=1)


def age_rank(age: Tensor) -> Tensor:
    """age (B, M) -> (B, M) in [0, 1]: the share of the other slots that are newer, ties counted
    half (0 = the newest slot, 1 = the oldest; all equal -> 0.5 everywhere)."""
    m = age.shape[1]
    newer = (age[:, :, None] > age[:, None, :]).sum(-1)  # (B, M): for each j, the slots i with a_i < a_j
    tied = (age[:, :, None] == age[:, None, :]).sum(-1) - 1
    return (newer + 0.5 * tied).to(age.dtype) / max(m - 1, 1)
