"""The Transformer block of the baselines: ``selmem.layers.Block`` with positioned past keys.

Legend: B batch, T tokens of the segment, S past tokens (KV cache or memory), d width, H heads,
D head width.

``selmem.layers.Attention`` treats its prefix as an unordered set seen through its own projection
(``kv_prefix``), under a causal mask only. The baselines need something else: past tokens that
are *the same kind of thing as the segment* (a KV cache, Transformer-XL's cached hidden states),
projected by the same weights and placed on the rotary axis, and arbitrary masks (RMT's
read/write memory tokens). Parameter names match ``layers.Block`` built with prefix=False
(conv, norm0, norm1, norm2, attn.qkv, attn.out, mlp.up, mlp.down), and a test checks that
without a past this block computes exactly what ``layers.Block`` computes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from selmem.layers import MLP, RMSNorm, ShortConv, rotary

KV = tuple[Tensor, Tensor]  # keys, values, each (B, H, S, D), keys already rotated


class Attention(nn.Module):
    """Multi-head attention whose keys/values may be preceded by past ones (already rotated)."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def project_kv(self, x: Tensor, offset: int = 0) -> KV:
        """Keys/values of normed tokens x (B, S, d) at positions offset..offset+S-1."""
        B, S, d = x.shape
        kv = self.qkv(x)[..., d:].view(B, S, 2, self.n_heads, d // self.n_heads)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, H, S, D)
        return rotary(k, offset), v

    def forward(self, x: Tensor, mask: Tensor, offset: int = 0,
                past: KV | None = None) -> tuple[Tensor, KV]:
        """x (B, T, d) normed tokens at positions offset..offset+T-1; past keys/values (B, H, S, D)
        come first; mask (T, S+T) bool, True = may attend. -> output (B, T, d), and the keys and
        values of past + segment (B, H, S+T, D), ready to serve as the next segment's cache."""
        B, T, d = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        (q, k), v = rotary(qkv[:2], offset), qkv[2]  # one rotary call for both
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, S+T, D)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.n_heads)  # (B, H, T, S+T)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (probs @ v).transpose(1, 2).reshape(B, T, d)
        return self.out(y), (k, v)


class Block(nn.Module):
    """Pre-norm Transformer block with the structure of ``selmem.layers.Block`` (optional short
    causal convolution, attention, MLP) over a segment that may attend to past keys/values.

    The short convolution may also look back over the segment boundary: ``conv_past`` holds
    the block inputs just before the segment (``full`` carries them, ``txl`` has them in its
    memory); without it the convolution is zero-padded at the segment start, as in selmem.
    """

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int = 4, layer_idx: int = 0,
                 conv_kernel: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.conv = ShortConv(dim, conv_kernel) if conv_kernel > 1 else None
        self.norm0 = RMSNorm(dim) if self.conv is not None else None
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.mlp = MLP(dim, mlp_ratio * dim)

    @property
    def conv_context(self) -> int:
        """How many earlier block inputs the convolution reads: kernel - 1 (0 without one)."""
        return self.conv.kernel - 1 if self.conv is not None else 0

    def mix(self, x: Tensor, conv_past: Tensor | None = None) -> Tensor:
        """The convolution sublayer: x (B, T, d) -> (B, T, d); conv_past (B, s, d) the block
        inputs just before x, or None (zero padding)."""
        if self.conv is None:
            return x
        T = x.shape[1]
        window = x if conv_past is None else torch.cat([conv_past, x], dim=1)
        return x + self.conv(self.norm0(window))[:, -T:]

    def memory_kv(self, mixed: Tensor, offset: int = 0) -> KV:
        """Keys/values of cached positions (B, S, d), given as ``mix`` outputs (Transformer-XL),
        at positions offset..offset+S-1."""
        return self.attn.project_kv(self.norm1(mixed), offset)

    def attend(self, x: Tensor, mask: Tensor, offset: int = 0,
               past: KV | None = None) -> tuple[Tensor, KV]:
        """Attention and MLP sublayers on ``mix`` outputs x (B, T, d), mask (T, S+T)."""
        a, kv = self.attn(self.norm1(x), mask, offset, past)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv

    def forward(self, x: Tensor, mask: Tensor, offset: int = 0, past: KV | None = None,
                conv_past: Tensor | None = None) -> tuple[Tensor, KV]:
        """x (B, T, d), mask (T, S+T) -> (B, T, d), keys/values of past + segment."""
        return self.attend(self.mix(x, conv_past), mask, offset, past)


def causal_mask(T: int, S: int = 0, device: torch.device | str | None = None) -> Tensor:
    """(T, S+T) bool: every token sees all S past tokens and the segment up to itself."""
    return torch.ones(T, S + T, dtype=torch.bool, device=device).tril(S)
