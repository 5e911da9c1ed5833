"""`txl`: Transformer-XL segment recurrence (Dai et al. 2019), DESIGN §5.

Legend: L layers, B batch, T segment length, S cached tokens (<= mem_len), d model width.

Each layer attends to its own segment and to a cache of its *inputs* at the last ``mem_len``
positions (h^{l-1} of the paper), projected by the same weights as the segment and placed on
the rotary axis just before it, so attention sees relative distances as in Transformer-XL's
relative encoding. The cache is stored without gradient (the paper's SG(.)); it spans several
segments when segments are shorter than mem_len. x-transformers' ``max_mem_len`` recurrence is
the same design (tests/baselines/test_peers.py). With ``short_conv`` the block's convolution runs
over [memory ; segment], so it too reaches across the segment boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from selmem.baselines.attention import causal_mask
from selmem.baselines.base import BaselineState, TransformerLM, zero_position
from selmem.config import SelmemConfig


@dataclass
class XLState(BaselineState):
    """memory: (L, B, S, d) the inputs of each layer at the last S <= mem_len positions,
    detached."""

    memory: Tensor


class TransformerXL(TransformerLM):
    """Transformer-XL. Uses vocab_size, d_model, n_layers, n_heads, mlp_ratio, short_conv,
    max_segment_len;
    mem_len = ``slots`` tokens per layer. Carries n_layers * slots * d_model floats (once the
    stream has seen ``slots`` tokens; less before)."""

    arch = "txl"
    state_knob = "slots"
    state_type = XLState

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> XLState:
        cfg, like = self.cfg, self._like()
        like["device"] = device or like["device"]
        empty = torch.zeros(cfg.n_layers, batch_size, 0, cfg.d_model, **like)
        return XLState(position=zero_position(batch_size, like["device"]), memory=empty)

    @staticmethod
    def state_floats(cfg: SelmemConfig, seq_len: int | None = None) -> int:
        return cfg.n_layers * cfg.slots * cfg.d_model

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int | None, ...]]:
        return {"memory": (self.cfg.n_layers, batch_size, None, self.cfg.d_model)}

    def step(self, tokens: Tensor, state: XLState) -> tuple[Tensor, XLState]:
        T, S, mem_len = tokens.shape[1], state.memory.shape[2], self.cfg.slots
        mask = causal_mask(T, S, device=tokens.device)  # (T, S+T)
        h = self.embed(tokens)  # (B, T, d)
        memory = []
        for l, block in enumerate(self.blocks):
            window = torch.cat([state.memory[l], h], dim=1)  # (B, S+T, d) block inputs
            memory.append(window[:, -mem_len:].detach())  # SG(h^{l-1})
            window = block.mix(window)  # short conv: the segment's first tokens see the memory
            past = block.memory_kv(window[:, :S]) if S else None  # positions 0..S-1
            h, _ = block.attend(window[:, S:], mask, offset=S, past=past)  # segment at S..S+T-1
        new = XLState(position=state.position + T, memory=torch.stack(memory))
        return self.head(self.norm(h)), new
