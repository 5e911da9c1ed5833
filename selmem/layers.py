"""Transformer pieces shared by selmem and the baselines.

Legend: B batch, T segment length, S memory-prefix length, d width, H heads, D head width.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """RMS normalisation with a learned gain (no bias)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_table(start: int, end: int, D: int, dtype: torch.dtype, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """cos, sin (end - start, D) of the rotary angles at positions start..end-1, as ``rotary``
    applies them: each channel pair's angle twice, sin signed (-sin, sin) (row i of the table for
    0..T-1 equals the table for i..i+1 exactly: a decoder computes it once a stream)."""
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, device=device, dtype=dtype) / D))
    ang = torch.arange(start, end, device=device, dtype=dtype)[:, None] * inv  # (T, D/2)
    cos, sin = ang.cos(), ang.sin()
    return cos.repeat_interleave(2, -1), torch.stack([-sin, sin], dim=-1).flatten(-2)


# Rotary tables and causal masks depend only on shapes, dtype and device: build each once per
# process instead of on every call (a few small kernels per layer per segment, which is most of
# the attention time at the sizes the CPU presets train). Under torch.compile they are built in
# the graph, where the compiler folds them.
_CACHE: dict[tuple, Any] = {}


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    if torch.compiler.is_compiling():
        return build()
    if key not in _CACHE:
        if len(_CACHE) > 256:  # many shapes (a length sweep): start over rather than grow
            _CACHE.clear()
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable under autograd later
            _CACHE[key] = build()
    return _CACHE[key]


def prefix_causal_mask(T: int, S: int, device: torch.device | str) -> Tensor:
    """(T, S+T) bool, True where query i may attend: all S prefix entries and segment tokens 0..i
    (causal aligned to the bottom right, which SDPA's is_causal is not)."""
    build = lambda: torch.ones(T, S + T, dtype=torch.bool, device=device).tril(S)  # noqa: E731
    return _cached(("mask", T, S, str(device)), build)


def rotary(x: Tensor, offset: int = 0, table: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Rotary position embedding over the T axis of x (..., T, D), positions offset..offset+T-1
    (from ``table``, a ``rotary_table`` from 0, when given): each channel pair (x1, x2) turns to
    (x1 cos - x2 sin, x2 cos + x1 sin), written as x * cos + (pairs swapped) * signed sin, which
    is the same arithmetic in fewer kernels (this runs twice per layer per segment)."""
    T, D = x.shape[-2], x.shape[-1]
    if table is None:
        cos, sin = _cached(("rope", offset, T, D, x.dtype, str(x.device)),
                           lambda: rotary_table(offset, offset + T, D, x.dtype, x.device))
    else:
        cos, sin = table[0][offset : offset + T], table[1][offset : offset + T]
    return x * cos + x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2) * sin


def _widen(t: Tensor, first: Tensor | float | None, e: int) -> Tensor:
    """t (..., D) -> (..., D+e): channel D holds ``first`` (a tensor (..., 1), a constant, or 0 for
    None), the other e-1 are zero padding."""
    if first is None:
        return F.pad(t, (0, e))
    col = first.to(t.dtype) if isinstance(first, Tensor) else t.new_full((*t.shape[:-1], 1), first)
    return torch.cat([t, col, t.new_zeros(*t.shape[:-1], e - 1)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention over a segment, with optional extra keys/values in front.

    The prefix (memory slots, cached states) is past, so every token may see all of it; inside the
    segment attention is causal when ``causal``. Rotary positions apply to segment tokens only:
    the prefix is an unordered set.

    Two implementations with the same numbers: ``fast`` (default) runs one
    ``F.scaled_dot_product_attention`` over [prefix; segment], so no (B, H, T, S+T) probability
    matrix is kept for backward; ``fast=False`` is the softmax written out, the reference the fast
    path is tested against (tests/test_layers.py) and what ``step`` (decoding) uses.
    """

    def __init__(self, dim: int, n_heads: int, causal: bool = True, prefix: bool = True, fast: bool = True,
                 prefix_rope: bool = True) -> None:
        super().__init__()
        self.n_heads, self.causal, self.fast = n_heads, causal, fast
        # prefix_rope=False: a token's logit on a prefix entry uses its query *without* rotary, so
        # the read of an (unordered) memory does not depend on where in the segment the token sits
        self.prefix_rope = prefix_rope
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        # only built when a prefix will be read: unused parameters break DDP and skew param counts
        self.kv_prefix = nn.Linear(dim, 2 * dim, bias=False) if prefix else None
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, prefix: Tensor | None = None, rope: bool = True,
                prefix_bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (B, T, d), prefix (B, S, d) or None, prefix_bias (B, S) added to every query's logit on
        each prefix entry, or None -> output (B, T, d), prefix attention (B, T, S) or None
        (the probability mass each token puts on each prefix entry, mean over heads)."""
        B, T, d = x.shape
        H = self.n_heads
        qkv = self.qkv(x).view(B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        q, k, v = (*rotary(qkv[:2]), qkv[2]) if rope else qkv
        pkv = self.prefix_kv(prefix) if prefix is not None else None
        attend = self._sdpa if self.fast else self._explicit
        q0 = qkv[0] if rope and not self.prefix_rope else None  # the query the prefix sees, if not q
        y, read = attend(q, k, v, pkv, prefix_bias, q0)  # (B, H, T, D), (B, T, S) or None
        return self.out(y.transpose(1, 2).reshape(B, T, d)), read

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, pkv: tuple[Tensor, Tensor] | None,
                  prefix_bias: Tensor | None, q0: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The softmax written out: the diagnostic reference of ``_sdpa``. q0: the query of the
        prefix logits when it is not q (prefix_rope=False)."""
        B, H, T, D = q.shape
        S = 0
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, T)
        if pkv is not None:
            S = pkv[0].shape[2]
            pscores = (q if q0 is None else q0) @ pkv[0].transpose(-1, -2) / math.sqrt(D)  # (B, H, T, S)
            scores = torch.cat([pscores, scores], dim=-1)  # (B, H, T, S+T)
            v = torch.cat([pkv[1], v], dim=2)  # (B, H, S+T, D)
        if prefix_bias is not None and S:
            bias = torch.cat([prefix_bias, prefix_bias.new_zeros(B, T)], dim=1)  # (B, S+T)
            scores = scores + bias[:, None, None, :]
        if self.causal:
            scores = scores.masked_fill(~prefix_causal_mask(T, S, q.device), float("-inf"))
        probs = scores.softmax(-1)
        read = probs[..., :S].mean(1) if pkv is not None else None  # (B, T, S)
        return probs @ v, read

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, pkv: tuple[Tensor, Tensor] | None,
              prefix_bias: Tensor | None, q0: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``_explicit`` by one fused kernel. The memory's usage needs the read attention on the
        prefix, which SDPA does not return, so one extra channel carries it: q gets a 1, prefix keys
        the read bias (times sqrt(D), undoing SDPA's scale) and prefix values a 1, segment keys and
        values 0. The extra output channel is then the total prefix mass m_t = Z_prefix / Z, and
        the read map is softmax over the prefix logits alone (T x S, small) times m_t: exact, and
        differentiable through SDPA's own backward. (Flash kernels need equal q/k/v widths, hence
        the channel on all three; CUDA kernels want widths in multiples of 8, hence the padding.)
        With q0 (the prefix's query when it is not q) the head width doubles: q = [q; q0], segment
        keys [k; 0], prefix keys [0; pk], so one kernel still computes both kinds of logits."""
        B, H, T, D = q.shape
        if pkv is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal), None
        pk, pv = pkv
        S = pk.shape[2]
        mask = prefix_causal_mask(T, S, q.device) if self.causal else None  # (T, S+T)
        e = 8 if q.is_cuda else 1  # extra channels; only the first is nonzero
        kb = None if prefix_bias is None else (prefix_bias * math.sqrt(D))[:, None, :, None].expand(B, H, S, 1)
        qp = q if q0 is None else q0
        if q0 is not None:  # [q; q0] against [k; 0] and [0; pk]; values padded to the same width
            q, k, pk = torch.cat([q, q0], -1), F.pad(k, (0, D)), F.pad(pk, (D, 0))
            v, pv = F.pad(v, (0, D)), F.pad(pv, (0, D))
        W = q.shape[-1]
        qe = _widen(q, 1.0, e)  # (B, H, T, W+e)
        ke = torch.cat([_widen(pk, kb, e), _widen(k, None, e)], dim=2)  # (B, H, S+T, W+e)
        ve = torch.cat([_widen(pv, 1.0, e), _widen(v, None, e)], dim=2)  # (B, H, S+T, W+e)
        ye = F.scaled_dot_product_attention(qe, ke, ve, attn_mask=mask, scale=1 / math.sqrt(D))
        y, mass = ye[..., :D], ye[..., W : W + 1]  # (B, H, T, D), (B, H, T, 1) prefix mass
        logits = qp @ pkv[0].transpose(-1, -2) / math.sqrt(D)  # (B, H, T, S)
        if prefix_bias is not None:
            logits = logits + prefix_bias[:, None, None, :]
        read = (logits.softmax(-1) * mass).mean(1)  # (B, T, S)
        return y, read

    def prefix_kv(self, prefix: Tensor) -> tuple[Tensor, Tensor]:
        """prefix (B, S, d) -> its keys and values, each (B, H, S, D): computed once per segment
        when decoding token by token (the prefix does not change inside a segment)."""
        if self.kv_prefix is None:
            raise ValueError("this Attention was built with prefix=False and cannot read a prefix")
        B, S, d = prefix.shape
        pk, pv = self.kv_prefix(prefix).view(B, S, 2, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        return pk, pv

    def step(self, x: Tensor, prefix_kv: tuple[Tensor, Tensor] | None, past: tuple[Tensor, Tensor] | None,
             prefix_bias: Tensor | None = None,
             rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor]]:
        """``forward`` for the next t tokens of a segment whose first n tokens' keys and values are
        ``past`` (each (B, H, n, D), rotary already applied), or None when n = 0. x (B, t, d) ->
        output (B, t, d), prefix attention (B, t, S) or None, and the keys/values of all n + t
        tokens. The same numbers as ``forward`` on the whole segment, at segment positions n.."""
        B, t, d = x.shape
        H = self.n_heads
        n = past[0].shape[2] if past is not None else 0
        qkv = self.qkv(x).view(B, t, 3, H, d // H).permute(2, 0, 3, 1, 4)  # (3, B, H, t, D)
        (q, k), v = rotary(qkv[:2], n, rope), qkv[2]
        q0 = qkv[0] if not self.prefix_rope else q  # the prefix's query (forward's q0)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, n+t, D)
        vv, S = v, 0
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // H)  # (B, H, t, n+t)
        if prefix_kv is not None:
            S = prefix_kv[0].shape[2]
            pscores = q0 @ prefix_kv[0].transpose(-1, -2) / math.sqrt(d // H)  # (B, H, t, S)
            scores, vv = torch.cat([pscores, scores], dim=-1), torch.cat([prefix_kv[1], v], dim=2)
        if prefix_bias is not None and S:
            bias = torch.cat([prefix_bias, prefix_bias.new_zeros(B, n + t)], dim=1)
            scores = scores + bias[:, None, None, :]
        if self.causal:  # token n+i sees segment tokens 0..n+i
            future = torch.ones(t, n + t, dtype=torch.bool, device=x.device).triu(n + 1)
            mask = torch.cat([torch.zeros(t, S, dtype=torch.bool, device=x.device), future], dim=1)
            scores = scores.masked_fill(mask, float("-inf"))
        probs = scores.softmax(-1)
        y = (probs @ vv).transpose(1, 2).reshape(B, t, d)
        read = probs[..., :S].mean(1) if S else None
        return self.out(y), read, (k, v)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class ShortConv(nn.Module):
    """Causal depthwise convolution over the segment (kernel k): each position mixes in the k-1
    tokens before it. Zoology (Arora et al. 2023) found such short convolutions are what lets
    efficient models bind a key to the value next to it in associative recall; H3, Hyena, Mamba
    and Based all carry one. Zero-padded at the segment start, so streaming stays exact."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(dim, dim, kernel, groups=dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, d) -> (B, T, d): y_t = b + sum_i w_i * x_{t-k+1+i}, i.e. Conv1d on the
        left-padded input, written as k shifted multiply-adds (depthwise Conv1d's backward is
        several times slower on CPU)."""
        T, k = x.shape[1], self.kernel
        xp = F.pad(x, (0, 0, k - 1, 0))  # (B, T+k-1, d)
        w = self.conv.weight[:, 0, :]  # (d, k)
        y = self.conv.bias + xp[:, :T] * w[:, 0]
        for i in range(1, k):
            y = y + xp[:, i : i + T] * w[:, i]
        return y


class Block(nn.Module):
    """Pre-norm Transformer block whose attention may read a prefix (head A of DESIGN section 1)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int = 4, layer_idx: int = 0, causal: bool = True,
                 prefix: bool = True, conv_kernel: int = 0, fast: bool = True, prefix_rope: bool = True) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.conv = ShortConv(dim, conv_kernel) if conv_kernel > 1 else None
        self.norm0 = RMSNorm(dim) if self.conv is not None else None
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.prefix_norm = RMSNorm(dim) if prefix else None  # prefix=False: never reads one
        self.attn = Attention(dim, n_heads, causal=causal, prefix=prefix, fast=fast, prefix_rope=prefix_rope)
        self.mlp = MLP(dim, mlp_ratio * dim)

    def forward(self, x: Tensor, prefix: Tensor | None = None, rope: bool = True,
                prefix_bias: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (B, T, d), prefix (B, S, d) or None, prefix_bias (B, S) or None -> (B, T, d), prefix
        attention (B, T, S) or None."""
        if self.conv is not None:
            x = x + self.conv(self.norm0(x))
        p = self.prefix_norm(prefix) if prefix is not None and self.prefix_norm is not None else prefix
        a, read = self.attn(self.norm1(x), p, rope=rope, prefix_bias=prefix_bias)
        x = x + a
        return x + self.mlp(self.norm2(x)), read

    def prefix_kv(self, prefix: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """The attention keys/values of a prefix (B, S, d), for ``step``; None for no prefix."""
        if prefix is None:
            return None
        return self.attn.prefix_kv(self.prefix_norm(prefix) if self.prefix_norm is not None else prefix)

    def step(self, x: Tensor, prefix_kv: tuple[Tensor, Tensor] | None, past: BlockCache | None,
             prefix_bias: Tensor | None = None,
             rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None, BlockCache]:
        """``forward`` for the next t tokens x (B, t, d) of a segment, given the cache of its earlier
        tokens (None at the segment start) -> (B, t, d), prefix attention (B, t, S) or None, and the
        cache after them: the last k-1 conv inputs and the keys/values (constant size per segment)."""
        tail, kv = past if past is not None else (None, None)
        if self.conv is not None:
            xn = self.norm0(x)
            if tail is not None:
                xn = torch.cat([tail, xn], dim=1)  # the zero padding of ShortConv is the segment start
            x = x + self.conv(xn)[:, -x.shape[1]:]
            tail = xn[:, -(self.conv.kernel - 1):]
        a, read, kv = self.attn.step(self.norm1(x), prefix_kv, kv, prefix_bias, rope)
        x = x + a
        return x + self.mlp(self.norm2(x)), read, (tail, kv)


#: what ``Block.step`` keeps of a segment's earlier tokens: the short conv's last k-1 (normed)
#: inputs or None, and the attention keys/values, each (B, H, n, D)
BlockCache = tuple[Tensor | None, tuple[Tensor, Tensor]]
