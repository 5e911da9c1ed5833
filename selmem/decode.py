"""Token-by-token decoding with a cache: the memory state plus the open segment's keys and values.

Legend: B batch, L layers, T segment length, n tokens of the open segment so far, t new tokens,
H heads, D head width, S prefix length (M slots + R hints), d model width, V vocabulary, k the
short convolution's kernel.

Inside a segment the model is causal over [memory prefix; segment], and the memory is written at
the segment's end from the features of all its tokens, reading the memory as it was before. So a
decoder keeps, per layer, what the segment's later tokens and its write will need, in buffers
allocated once per stream (when its first segment opens) and written in place, never grown:

    keys, values  (2, B, H, S+T, D)  the prefix's (the memory read, set when a segment opens),
                                     then the segment's tokens' at S+n
    conv inputs   (B, k-1+T, d)      the short conv's normed inputs after k-1 zeros (its padding)
    features      (B, T, d)          the block outputs, head B's input at the write
    attention     (B*H, T, S+T)      each token's attention; on the prefix, the usage the write adds

and writes the memory once per segment, when it fills, with the same ``model.write`` as
``forward``. Everything is bounded by T, so generating any number of tokens takes constant
memory. ``decode`` on any chunking of a sequence gives ``forward_sequence``'s logits, and greedy
decoding the tokens that are their argmax (tests/test_decode.py).

A block's step is Block.forward for the next tokens (attention written out, as
layers.Attention._explicit), on the block's own weights, in two forms with the same arithmetic:
``_chunk_block`` for t tokens of a prompt, and ``_token_block`` for one token, the generation
loop's, which at the widths the CPU presets use costs its operators' dispatch rather than their
arithmetic and so dispatches few: the rotary turn of q and k is one complex multiply over the
whole qkv row, the short conv one dot product over a window view, linear layers one addmm each
with the residual or bias folded in, results go into per-layer scratch with their views made
once, with the buffers (issue 29). ``step``, the generation loop's call, checks nothing;
``decode`` checks its tokens once per call. Decoding computes no gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from selmem.layers import rotary_table
from selmem.memory.layer import read_prefix
from selmem.state import MemoryState


class _Weights(NamedTuple):
    """A block's parameters as its step reads them: the tensors themselves or views of them, so
    always current; matrices transposed (in, out), as addmm takes them."""

    norm0: Tensor | None  # (d,) gain before the short conv, or None without one
    conv: Tensor | None   # (k, d) depthwise taps, oldest input first
    conv_bias: Tensor | None
    norm1: Tensor
    qkv: Tensor           # (d, 3d)
    out: Tensor           # (d, d)
    norm2: Tensor
    up: Tensor            # (d, mlp_ratio d)
    up_bias: Tensor
    down: Tensor          # (mlp_ratio d, d)
    down_bias: Tensor
    eps: float
    prefix_rope: bool     # the prefix's logits use the rotated query (read_query='rotary')


def _weights(block) -> _Weights:
    conv, attn, mlp = block.conv, block.attn, block.mlp
    return _Weights(block.norm0.weight if conv is not None else None,
                    conv.conv.weight[:, 0].t() if conv is not None else None,
                    conv.conv.bias if conv is not None else None, block.norm1.weight, attn.qkv.weight.t(),
                    attn.out.weight.t(), block.norm2.weight, mlp.up.weight.t(), mlp.up.bias,
                    mlp.down.weight.t(), mlp.down.bias, block.norm1.eps, attn.prefix_rope)


class _One(NamedTuple):
    """What the token at segment position n reads and writes of one layer's buffers: views made
    once, with the buffers (a view costs about what a small operator does)."""

    conv_in: Tensor | None  # (B, d) where its normed conv input goes
    window: Tensor | None   # (B, k, d) the conv inputs it mixes, oldest first
    new_kv: Tensor          # (2, B, H, D) where its key and value go
    keys: Tensor            # (B*H, D, S+n+1) the keys it attends to
    values: Tensor          # (B*H, S+n+1, D)
    bias: Tensor | None     # (B*H, 1, S+n+1) the read bias, or None
    attn: Tensor            # (B*H, 1, S+n+1) where its attention goes
    feature: Tensor         # (B, d) where its block output goes
    turn: Tensor | None     # (3d/2,) complex: position n's rotary turn of the qkv row


class _Scratch(NamedTuple):
    """Where a token's intermediate results go, with the views that read them."""

    qkv: Tensor             # (B, 3d) its projections
    pairs: Tensor           # (B, 3d/2) complex view of qkv: channel pairs
    turned: Tensor          # (B, 3d/2) complex: the pairs with q and k turned
    q: Tensor | None        # (B*H, 1, D) view of turned's q (None for B > 1: no such view)
    heads: Tensor           # (B, 3, H, D) real view of turned
    y: Tensor               # (B*H, 1, D) its attention output
    y_row: Tensor           # (B, d) view of y: heads side by side, as forward's reshape


def _scratch(B: int, H: int, D: int, like: dict) -> _Scratch:
    qkv = torch.zeros(B, 3 * H * D, **like)
    turned = torch.view_as_complex(torch.zeros(B, 3 * H * D // 2, 2, **like))
    heads = torch.view_as_real(turned).view(B, 3, H, D)
    y = torch.zeros(B * H, 1, D, **like)
    return _Scratch(qkv, torch.view_as_complex(qkv.view(B, -1, 2)), turned,
                    heads[:, 0].view(B * H, 1, D) if B == 1 else None, heads, y, y.view(B, H * D))


@dataclass
class LayerCache:
    """One layer's buffers for the open segment (see the module docstring) and a token's scratch,
    allocated once per stream and overwritten segment after segment."""

    kv: Tensor              # (2, B, H, S+T, D)
    conv: Tensor | None     # (B, k-1+T, d), the first k-1 rows zero
    features: Tensor        # (B, T, d)
    attn: Tensor            # (B*H, T, S+T)
    bias: Tensor | None     # (B*H, 1, S+T): the read bias on the prefix, 0 after; None without one
    prefix: int             # S
    scratch: _Scratch | None  # None where a token takes the chunk path (bfloat16: no complex type)
    one: list[_One] = field(default_factory=list)  # per segment position

    def tensors(self) -> list[Tensor]:
        return [x for x in (self.kv, self.conv, self.features, self.attn, self.bias) if x is not None]


@dataclass
class DecodeCache:
    """The state of a decoding stream: ``state`` is the memory the open segment reads (before its
    writes); ``layers`` holds each layer's buffers for the open segment's ``length`` tokens."""

    state: MemoryState
    segment_len: int
    length: int = 0  # tokens in the open segment
    seen: int = 0  # tokens decoded in all
    layers: list[LayerCache] = field(default_factory=list)  # allocated when the first segment opens
    weights: list[_Weights] = field(default_factory=list)
    cos: Tensor | None = None  # (T, 3d) rotary cos and (signed) sin over a qkv row at positions 0..T-1,
    sin: Tensor | None = None  # q's with the logits' 1/sqrt(D), v's 1 and 0: layers.rotary's tables
    turn: Tensor | None = None  # (T, 3d/2) complex: the same turns (float32/64 only: no complex bf16)
    blocked: Tensor | None = None  # (T, S+T) bool: True where segment token i may not attend

    @property
    def batch_size(self) -> int:
        return self.state.batch_size

    def num_floats(self) -> int:
        """Floats held: the memory state and the open segment's buffers (T tokens), a constant."""
        tensors = [self.state.slots, self.state.usage, self.state.age]
        tensors += [x for lc in self.layers for x in lc.tensors()]
        return sum(x.numel() for x in tensors)


def new_cache(model, batch_size: int, segment_len: int | None = None, state: MemoryState | None = None,
              device: torch.device | str | None = None) -> DecodeCache:
    """An empty cache for ``batch_size`` streams, from ``state`` (default: a fresh memory)."""
    seg = model.cfg.resolve_segment_len(segment_len)
    return DecodeCache(state if state is not None else model.init_state(batch_size, device), seg)


def decode(model, tokens: Tensor, cache: DecodeCache) -> tuple[Tensor, DecodeCache]:
    """Feed tokens (B, t) (any t: a prompt or one token) after what ``cache`` has seen -> logits
    (B, t, V) and the cache after them (the same object, updated). Checks the tokens and the
    cache's state once per call, as ``forward`` checks a segment, then runs ``step``."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.shape[1] == 0:
        got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must have shape (batch, length >= 1), got {got}")
    if tokens.shape[0] != cache.batch_size:
        raise ValueError(f"the cache holds {cache.batch_size} streams but tokens have batch size {tokens.shape[0]}")
    model.check(tokens[:, : cache.segment_len], cache.state)  # dtype, device, the state; values: one sync
    if tokens.shape[1] > cache.segment_len:
        model.check_values(tokens, None)  # the token range beyond the first segment
    return step(model, tokens.long(), cache), cache


@torch.no_grad()
def step(model, tokens: Tensor, cache: DecodeCache) -> Tensor:
    """``decode`` without its checks, the generation loop's call: tokens (B, t) long on the
    cache's device and in the vocabulary (the model's own samples are) -> logits (B, t, V)."""
    logits, start, N = [], 0, tokens.shape[1]
    while start < N:  # chunks never cross a segment boundary
        t = min(N - start, cache.segment_len - cache.length)
        logits.append(_chunk(model, tokens if t == N else tokens[:, start : start + t], cache))
        start += t
        if cache.length == cache.segment_len:
            _close(model, cache)
    return logits[0] if len(logits) == 1 else torch.cat(logits, dim=1)


def flush(model, cache: DecodeCache) -> MemoryState:
    """The memory after everything decoded so far: writes a part-filled open segment, as
    ``forward_sequence`` writes its short last segment. The cache then starts a new segment."""
    if cache.length:
        with torch.no_grad():
            _close(model, cache)
    return cache.state


def _chunk(model, tokens: Tensor, cache: DecodeCache) -> Tensor:
    """t tokens that fit in the open segment -> logits (B, t, V). The embedding runs as the
    model's module (its hooks see the tokens), the blocks, final norm and head on their weights."""
    if cache.length == 0:
        _open(model, cache)
    n, (B, t) = cache.length, tokens.shape
    h = model.embed(tokens)  # (B, t, d)
    if t == 1 and cache.turn is not None and all(w.prefix_rope for w in cache.weights):
        h = h.view(B, -1)
        for lc, w in zip(cache.layers, cache.weights):
            h = _token_block(h, lc, lc.one[n], w)
        h = h.view(B, 1, -1)
    else:
        for lc, w in zip(cache.layers, cache.weights):
            h = _chunk_block(h, lc, w, n, cache)
    cache.length += t
    cache.seen += t
    return F.linear(_rms(h, model.norm.weight, model.norm.eps), model.head.weight)


def _token_block(x: Tensor, lc: LayerCache, v: _One, w: _Weights) -> Tensor:
    """Block.forward for one token x (B, d) at the position whose views are ``v`` -> (B, d);
    writes its conv input, key, value, attention and block output into the buffers."""
    if w.norm0 is not None:  # layers.ShortConv: bias + sum_i w_i x_{n-k+1+i} over the k inputs up to n
        v.conv_in.copy_(_rms(x, w.norm0, w.eps))
        x = x + (torch.linalg.vecdot(v.window, w.conv, dim=1) + w.conv_bias)
    s = lc.scratch
    torch.mm(_rms(x, w.norm1, w.eps), w.qkv, out=s.qkv)  # (B, 3d)
    # layers.rotary turns each channel pair (x1, x2) of q and k by the position's angle: the complex
    # product (x1 + i x2) e^{i theta}; q's turn carries the logits' 1/sqrt(D), v's is 1
    torch.mul(s.pairs, v.turn, out=s.turned)
    v.new_kv.copy_(s.heads[:, 1:].transpose(0, 1))  # (2, B, H, D)
    q = s.q if s.q is not None else s.heads[:, 0].reshape(s.y.shape)
    scores = torch.bmm(q, v.keys)  # (B*H, 1, S+n+1)
    if v.bias is not None:
        scores += v.bias
    torch.softmax(scores, -1, out=v.attn)
    torch.bmm(v.attn, v.values, out=s.y)
    x = torch.addmm(x, s.y_row, w.out)
    h = F.gelu(torch.addmm(w.up_bias, _rms(x, w.norm2, w.eps), w.up))
    return torch.add(x, torch.addmm(w.down_bias, h, w.down), out=v.feature)


def _chunk_block(x: Tensor, lc: LayerCache, w: _Weights, n: int, cache: DecodeCache) -> Tensor:
    """Block.forward for tokens x (B, t, d) at segment positions n..n+t-1 (a prompt's chunk) ->
    (B, t, d): ``_token_block``'s arithmetic on slices of the buffers, with a causal mask."""
    B, t, d = x.shape
    H, D, S = lc.kv.shape[2], lc.kv.shape[4], lc.prefix
    if w.norm0 is not None:
        k = w.conv.shape[0]
        lc.conv[:, k - 1 + n : k - 1 + n + t] = _rms(x, w.norm0, w.eps)
        window = lc.conv[:, n : n + k - 1 + t].unfold(1, k, 1)  # (B, t, d, k)
        x = x + (torch.linalg.vecdot(window, w.conv.t()) + w.conv_bias)
    qkv = _rms(x, w.norm1, w.eps) @ w.qkv  # (B, t, 3d)
    turned = qkv * cache.cos[n : n + t] + qkv.unflatten(-1, (-1, 2)).flip(-1).flatten(-2) * cache.sin[n : n + t]
    turned = turned.view(B, t, 3, H, D).transpose(1, 3)  # (B, H, 3, t, D): q and k turned, v as it was
    lc.kv[:, :, :, S + n : S + n + t] = turned[:, :, 1:].transpose(0, 2).transpose(1, 2)  # (2, B, H, t, D)
    q = turned[:, :, 0].reshape(B * H, t, D)
    keys = lc.kv[0, :, :, : S + n + t].flatten(0, 1).transpose(1, 2)  # (B*H, D, S+n+t)
    if w.prefix_rope or S == 0:
        scores = torch.bmm(q, keys)  # (B*H, t, S+n+t)
    else:  # read_query='plain': the prefix's logits use the query without rotary (Attention's q0)
        q0 = (qkv[..., :d] / math.sqrt(D)).view(B, t, H, D).transpose(1, 2).reshape(B * H, t, D)
        scores = torch.cat([torch.bmm(q0, keys[..., :S]), torch.bmm(q, keys[..., S:])], dim=-1)
    if lc.bias is not None:
        scores = scores + lc.bias[..., : S + n + t]
    scores = scores.masked_fill(cache.blocked[n : n + t, : S + n + t], float("-inf"))
    attn = lc.attn[:, n : n + t, : S + n + t]
    torch.softmax(scores, -1, out=attn)
    y = torch.bmm(attn, lc.kv[1, :, :, : S + n + t].flatten(0, 1))  # (B*H, t, D)
    x = x + (y.view(B, H, t, D).transpose(1, 2).reshape(B, t, d) @ w.out)
    h = F.gelu(torch.addmm(w.up_bias, _rms(x, w.norm2, w.eps).flatten(0, 1), w.up))
    out = lc.features[:, n : n + t]
    torch.add(x, torch.addmm(w.down_bias, h, w.down).view(B, t, d), out=out)
    return out


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """layers.RMSNorm."""
    return F.rms_norm(x, weight.shape, weight, eps)


def _open(model, cache: DecodeCache) -> None:
    """A segment starts: each layer's prefix keys/values and read bias from the memory (hints once
    for all), into the buffers (allocated with the first segment)."""
    state = cache.state
    hints = model.cache_transform(state.slots)  # (L, B, R, d_mem) or None
    for l, block in enumerate(model.blocks):
        prefix, bias = read_prefix(model.read[l], state.slots[l], state.usage[l], None if hints is None else hints[l],
                                   state.age[l])
        pkv = block.prefix_kv(prefix)  # (B, H, S, D) each, or None
        if len(cache.layers) == l:
            _allocate(model, cache, block, 0 if pkv is None else pkv[0].shape[2], bias is not None)
        lc = cache.layers[l]
        if pkv is not None:
            lc.kv[0, :, :, : lc.prefix] = pkv[0]
            lc.kv[1, :, :, : lc.prefix] = pkv[1]
        if bias is not None:
            lc.bias[:, 0, : bias.shape[1]] = bias.repeat_interleave(lc.kv.shape[2], 0)


def _allocate(model, cache: DecodeCache, block, S: int, biased: bool) -> None:
    """Layer ``block``'s buffers, scratch and a single token's views, for a prefix of S entries."""
    cfg, B, T = model.cfg, cache.batch_size, cache.segment_len
    d, H = cfg.d_model, cfg.n_heads
    D = d // H
    like = dict(dtype=cache.state.slots.dtype, device=cache.state.slots.device)
    k = block.conv.kernel if block.conv is not None else 0
    if cache.cos is None:
        cos, sin = rotary_table(0, T, D, like["dtype"], like["device"])  # (T, D): each angle twice, sin signed
        # a qkv row: H heads of q (with the logits' scale), then of k, then v's, which stay as they are
        cache.cos = torch.cat([(cos / math.sqrt(D)).repeat(1, H), cos.repeat(1, H), torch.ones_like(cos).repeat(1, H)], 1)
        cache.sin = torch.cat([(sin / math.sqrt(D)).repeat(1, H), sin.repeat(1, H), torch.zeros_like(sin).repeat(1, H)], 1)
        if like["dtype"] in (torch.float32, torch.float64):  # the turn of each pair (x1, x2) as e^{i theta}
            cache.turn = torch.complex(cache.cos[:, ::2], cache.sin[:, 1::2])
        cache.blocked = torch.ones(T, S + T, dtype=torch.bool, device=like["device"]).triu(S + 1)
    lc = LayerCache(kv=torch.zeros(2, B, H, S + T, D, **like),
                    conv=torch.zeros(B, k - 1 + T, d, **like) if k else None,
                    features=torch.zeros(B, T, d, **like), attn=torch.zeros(B * H, T, S + T, **like),
                    bias=torch.zeros(B * H, 1, S + T, **like) if biased else None, prefix=S,
                    scratch=_scratch(B, H, D, like) if cache.turn is not None else None)
    keys, values = lc.kv[0].flatten(0, 1).transpose(1, 2), lc.kv[1].flatten(0, 1)  # (B*H, D, S+T), (B*H, S+T, D)
    lc.one = [_One(conv_in=lc.conv[:, k - 1 + n] if k else None, window=lc.conv[:, n : n + k] if k else None,
                   new_kv=lc.kv[:, :, :, S + n], keys=keys[..., : S + n + 1], values=values[:, : S + n + 1],
                   bias=None if lc.bias is None else lc.bias[..., : S + n + 1],
                   attn=lc.attn[:, n : n + 1, : S + n + 1], feature=lc.features[:, n],
                   turn=cache.turn[n] if cache.turn is not None else None)
              for n in range(T)]
    cache.layers.append(lc)
    cache.weights.append(_weights(block))


def _close(model, cache: DecodeCache) -> None:
    """The open segment is full (or the stream ends it): write every layer's memory, as forward."""
    state, n, B = cache.state, cache.length, cache.batch_size
    pos = state.position[:, None] + torch.arange(n, device=state.position.device)  # (B, n)
    ys = [lc.features[:, :n] for lc in cache.layers]  # [(B, n, d)] * L
    reads = [lc.attn.unflatten(0, (B, -1))[:, :, :n, : lc.prefix].mean(1) if lc.prefix else None
             for lc in cache.layers]  # [(B, n, S) or None] * L: the mean over heads
    cache.state = model.next_state(state, model.write(ys, reads, state, pos), n)
    cache.length = 0
