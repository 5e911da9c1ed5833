"""Read: what a layer's tokens may attend to besides their own segment.

Legend: B batch, M slots, R hints per layer, d model width, d_mem slot width.

mem_l = [up(C_l); up_hint(hint_l)] is handed to the block as a prefix of keys/values. The slots
are read as they were *before* this segment's writes, so the present never leaks into the past.
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

    def forward(self, slots: Tensor, hints: Tensor | None) -> Tensor | None:
        if not self.enabled:
            return None
        parts = [self.up(slots)]  # (B, M, d)
        if hints is not None:
            parts.append(self.up_hint(hints))  # (B, R, d)
        return torch.cat(parts, dim=1)

