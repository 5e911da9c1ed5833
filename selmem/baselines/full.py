"""`full`: full causal attention over the whole input so far, the upper bound of DESIGN §5.

Legend: L layers, B batch, T segment length, S tokens already streamed, H heads, D head width,
d model width.

Streaming keeps a KV cache per layer: the rotated keys and values of every earlier token, at
absolute rotary positions, so that segment-by-segment equals one pass over the whole input (a
test proves it). With ``short_conv`` = k it also carries each block's last k-1 inputs, which the
convolution reads across the boundary. The cache grows with the input: 2 * L * S * d floats
after S tokens, plus L * min(S, k-1) * d for the convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from selmem.baselines.attention import causal_mask
from selmem.baselines.base import BaselineState, TransformerLM, zero_position
from selmem.config import SelmemConfig


@dataclass
class KVCacheState(BaselineState):
    """keys:   (L, B, H, S, D) rotary-rotated keys of the S tokens streamed so far.
    values: (L, B, H, S, D).
    conv:   (L, B, s, d) the last s = min(S, short_conv - 1) inputs of each block (s = 0 without
            a short convolution)."""

    keys: Tensor
    values: Tensor
    conv: Tensor


class FullAttentionTransformer(TransformerLM):
    """A causal Transformer attending to every earlier token of the stream through a KV cache.
    Uses vocab_size, d_model, n_layers, n_heads, mlp_ratio, short_conv, max_segment_len (the
    longest segment, not the longest input: the cache is unbounded). ``state_size(seq_len)`` =
    n_layers * d_model * (2 * seq_len + min(seq_len, short_conv - 1)): the cache after seq_len
    tokens."""

    arch = "full"
    state_type = KVCacheState

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> KVCacheState:
        cfg, like = self.cfg, self._like()
        like["device"] = device or like["device"]
        H = cfg.n_heads
        empty = torch.zeros(cfg.n_layers, batch_size, H, 0, cfg.d_model // H, **like)
        conv = torch.zeros(cfg.n_layers, batch_size, 0, cfg.d_model, **like)
        return KVCacheState(position=zero_position(batch_size, like["device"]),
                            keys=empty, values=empty.clone(), conv=conv)

    @staticmethod
    def state_floats(cfg: SelmemConfig, seq_len: int | None = None) -> int:
        if seq_len is None:
            raise ValueError("full attention carries a KV cache that grows with the input: "
                             "pass seq_len, the number of tokens streamed so far")
        conv = min(seq_len, max(cfg.short_conv - 1, 0))
        return cfg.n_layers * cfg.d_model * (2 * seq_len + conv)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int | None, ...]]:
        cfg = self.cfg
        shape = (cfg.n_layers, batch_size, cfg.n_heads, None, cfg.d_model // cfg.n_heads)
        return {"keys": shape, "values": shape,
                "conv": (cfg.n_layers, batch_size, None, cfg.d_model)}

    def step(self, tokens: Tensor, state: KVCacheState) -> tuple[Tensor, KVCacheState]:
        T, S = tokens.shape[1], state.keys.shape[3]
        mask = causal_mask(T, S, device=tokens.device)  # (T, S+T)
        h = self.embed(tokens)  # (B, T, d)
        keys, values, convs = [], [], []
        for l, block in enumerate(self.blocks):
            inputs = torch.cat([state.conv[l], h], dim=1)  # (B, s+T, d)
            convs.append(inputs[:, inputs.shape[1] - min(block.conv_context, inputs.shape[1]) :])
            past = (state.keys[l], state.values[l])  # positions 0..S-1
            h, (k, v) = block(h, mask, offset=S, past=past, conv_past=state.conv[l])  # S..S+T-1
            keys.append(k)
            values.append(v)
        new = KVCacheState(position=state.position + T, keys=torch.stack(keys),
                           values=torch.stack(values), conv=torch.stack(convs))
        return self.head(self.norm(h)), new
