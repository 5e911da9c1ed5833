"""`rmt`: Recurrent Memory Transformer (Bulatov et al. 2022), decoder form, DESIGN §5.

Legend: B batch, T segment length, M memory tokens, d model width, V vocabulary.

A segment is processed as ``[read memory (M) ; segment (T) ; write memory (M)]``. Both memory
blocks start from the memory carried from the previous segment (the paper puts the same memory
at both ends), each with a learned embedding that tells reads from writes. Attention mask
(True = may attend; as lucidrains' recurrent-memory-transformer-pytorch with memory_not_causal):

              read  segment  write
    read      all     -        -
    segment   all   causal     -
    write     all     all     all

so segment tokens see the read memory but never the write tokens, and the write tokens see
everything. The write tokens' final (normed) outputs are the next memory; gradients flow through
it across segments (BPTT), cut every ``bptt_segments`` by forward_sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from selmem.baselines.base import BaselineState, TransformerLM, zero_position
from selmem.config import SelmemConfig


@dataclass
class RMTState(BaselineState):
    """memory: (B, M, d) the write tokens' outputs of the previous segment (or the learned
    initial memory)."""

    memory: Tensor


class RecurrentMemoryTransformer(TransformerLM):
    """RMT. Uses vocab_size, d_model, n_layers, n_heads, mlp_ratio, short_conv (over
    [read ; segment ; write], so the segment's first tokens also mix in the read memory),
    max_segment_len; memory tokens M = ``slots``. Carries slots * d_model floats."""

    arch = "rmt"
    state_knob = "slots"
    state_type = RMTState

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__(cfg)
        M, d = cfg.slots, cfg.d_model
        # Small, as in lucidrains' implementation: with unit-scale initial memory the write
        # tokens' residual stream is dominated by their own identity, the segment's content is
        # a small perturbation of it, and RMT did not learn a 2-pair recall in 400 steps (the
        # peer did); at 0.02 the first memory is the content the write tokens gathered.
        self.init_memory = nn.Parameter(0.02 * torch.randn(M, d))
        self.read_emb = nn.Parameter(0.02 * torch.randn(M, d))  # marks the read copy
        self.write_emb = nn.Parameter(0.02 * torch.randn(M, d))  # marks the write copy

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> RMTState:
        """A fresh state whose memory stays attached to the learned initial memory."""
        device = device or self.init_memory.device
        memory = self.init_memory.to(device).unsqueeze(0).expand(batch_size, -1, -1)  # (B, M, d)
        return RMTState(position=zero_position(batch_size, device), memory=memory)

    @staticmethod
    def state_floats(cfg: SelmemConfig, seq_len: int | None = None) -> int:
        return cfg.slots * cfg.d_model

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int | None, ...]]:
        return {"memory": (batch_size, self.cfg.slots, self.cfg.d_model)}

    def step(self, tokens: Tensor, state: RMTState) -> tuple[Tensor, RMTState]:
        M, T = self.cfg.slots, tokens.shape[1]
        mem = state.memory  # (B, M, d)
        read, write = mem + self.read_emb, mem + self.write_emb  # (B, M, d) each
        x = torch.cat([read, self.embed(tokens), write], dim=1)  # (B, 2M+T, d)
        mask = rmt_mask(M, T, tokens.device)
        for block in self.blocks:
            x, _ = block(x, mask)  # rotary positions 0..2M+T-1
        x = self.norm(x)
        new = RMTState(position=state.position + T, memory=x[:, M + T :])
        return self.head(x[:, M : M + T]), new


def rmt_mask(M: int, T: int, device: torch.device | str | None = None) -> Tensor:
    """(2M+T, 2M+T) bool attention mask of [read ; segment ; write], True = may attend."""
    n = 2 * M + T
    mask = torch.zeros(n, n, dtype=torch.bool, device=device)
    mask[:, :M] = True  # everyone reads the memory
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    mask[M : M + T, M : M + T] = causal  # the segment sees itself causally
    mask[M + T :, :] = True  # write tokens see everything
    return mask
