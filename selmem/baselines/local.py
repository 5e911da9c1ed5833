"""`local`: segment-local causal attention and no memory at all, the lower bound of DESIGN §5.

Legend: B batch, T segment length, d model width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from selmem.baselines.attention import causal_mask
from selmem.baselines.base import BaselineState, TransformerLM, zero_position
from selmem.config import SelmemConfig


@dataclass
class LocalState(BaselineState):
    """Only the position: nothing crosses a segment boundary."""


class LocalTransformer(TransformerLM):
    """A causal Transformer that sees one segment at a time (rotary positions restart at 0 in
    every segment, and the short convolution is zero-padded there, as in selmem). Uses
    vocab_size, d_model, n_layers, n_heads, mlp_ratio, short_conv, max_segment_len; carries 0
    floats."""

    arch = "local"
    state_type = LocalState

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> LocalState:
        return LocalState(position=zero_position(batch_size, device or self.head.weight.device))

    @staticmethod
    def state_floats(cfg: SelmemConfig, seq_len: int | None = None) -> int:
        return 0

    def step(self, tokens: Tensor, state: LocalState) -> tuple[Tensor, LocalState]:
        T = tokens.shape[1]
        mask = causal_mask(T, device=tokens.device)
        h = self.embed(tokens)  # (B, T, d)
        for block in self.blocks:
            h, _ = block(h, mask)
        return self.head(self.norm(h)), LocalState(position=state.position + T)
