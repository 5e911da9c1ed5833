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

    def bias(self, usage: Tensor, n_hints: int) -> Tensor | None:
        """usage (B, M) -> (B, M + n_hints) additive read logits, or None without read_bias."""
        if self.alpha is None:
            return None
        eps = 0.01
        b = self.alpha * ((usage + eps).log() - (usage.mean(1, keepdim=True) + eps).log())
        return torch.cat([b, b.new_zeros(b.shape[0], n_hints)], dim=1)

    def forward(self, slots: Tensor, hints: Tensor | None) -> Tensor | None:
        if not self.enabled:
            return None
        parts = [self.up(slots)]  # (B, M, d)
        if hints is not None:
            parts.append(self.up_hint(hints))  # (B, R, d)
        return torch.cat(parts, dim=1)

