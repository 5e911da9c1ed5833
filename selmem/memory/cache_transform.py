"""Cache transform: cross-layer coordination of all layers' caches into per-layer read hints.

Legend: L layers, B batch, M slots, d_mem slot width, R = M (+1 with the meta-cache) hints per layer.

A small bidirectional Transformer runs over the L*M slots, each tagged with a learned layer
embedding and slot embedding, so that a layer's hints can carry what other layers hold (top-down
hints from deep layers to shallow ones, and back). Layer l's hints are the outputs at its own M
slot positions. With ``meta_cache``, one learned token attends over all slots (a pooled
meta-cache) and its output is appended to every layer's hints.

- transformer: as above.
- none:        no hints (ablation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selmem.config import SelmemConfig
from selmem.layers import Block, RMSNorm


class CacheTransform(nn.Module):
    """slots (L, B, M, d_mem) -> hints (L, B, R, d_mem), or None when disabled."""

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__()
        # hints are only ever read, so read='off' leaves nothing for the transform to do
        self.enabled = cfg.cache_transform == "transformer" and cfg.read == "on"
        self.meta = cfg.meta_cache
        if not self.enabled:
            return
        L, M, dm = cfg.n_layers, cfg.slots, cfg.d_mem
        self.layer_emb = nn.Parameter(torch.randn(L, 1, 1, dm) * 0.02)
        self.slot_emb = nn.Parameter(torch.randn(1, 1, M, dm) * 0.02)
        self.meta_token = nn.Parameter(torch.randn(1, 1, dm) * 0.02) if self.meta else None
        self.blocks = nn.ModuleList(Block(dm, 2, mlp_ratio=2, causal=False, prefix=False)
                                    for _ in range(cfg.cache_transform_layers))
        self.norm = RMSNorm(dm)

    def forward(self, slots: Tensor) -> Tensor | None:
        if not self.enabled:
            return None
        L, B, M, dm = slots.shape
        x = (slots + self.layer_emb + self.slot_emb).permute(1, 0, 2, 3).reshape(B, L * M, dm)
        if self.meta_token is not None:
            x = torch.cat([x, self.meta_token.expand(B, 1, dm)], dim=1)
        for block in self.blocks:
            x, _ = block(x, rope=False)  # slots are a set: no positions
        x = self.norm(x)
        hints = x[:, : L * M].reshape(B, L, M, dm).permute(1, 0, 2, 3)  # (L, B, M, d_mem)
        if self.meta_token is not None:
            meta = x[:, L * M :].expand(B, 1, dm)
            hints = torch.cat([hints, meta.unsqueeze(0).expand(L, B, 1, dm)], dim=2)
        return hints
