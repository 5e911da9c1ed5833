"""Token-by-token decoding with a cache: the memory state plus the open segment's keys and values.

Legend: B batch, L layers, T segment length, n tokens of the open segment so far, t new tokens,
H heads, D head width, S prefix length (M slots + R hints), d model width, V vocabulary, k the
short convolution's kernel.

Inside a segment the model is causal over [memory prefix; segment], and the memory is written at
the segment's end from the features of all its tokens, reading the memory as it was before. So a
decoder keeps, per layer, what the segment's later tokens and its write will need, in buffers
allocated once per stream (when its first segment opens) and written in place, never grown:

    keys          (B*H, D, S+T)  the prefix's (the memory read, set when a segment opens), then
                                 the segment's tokens' at column S+n: a query's logits are one bmm
    values        (B*H, S+T, D)  likewise
    conv inputs   (B, k-1+T, d)  the short conv's normed inputs after k-1 zeros (its padding)
    features      (B, T, d)      the block outputs, head B's input at the write
    prefix probs  (B*H, T, S)    each token's attention on the prefix: the usage the write adds

and writes the memory once per segment, when it fills, with the same ``model.write`` as
``forward``. Everything is bounded by T, so generating any number of tokens takes constant
memory. ``decode`` on any chunking of a sequence gives ``forward_sequence``'s logits, and greedy
decoding the tokens that are their argmax (tests/test_decode.py).

``_block`` is Block.forward for the next t tokens (attention written out, as
layers.Attention._explicit), on the block's own weights. At the widths the CPU presets use a
token costs its operators' dispatch, not their arithmetic, so the step dispatches few: the rotary
turn of q and k is one complex multiply, the short conv one dot product over a window view, the
residual of the attention output one addmm, and every view of a buffer that a single token needs
is made once, with the buffers. ``step``, the generation loop's call, checks nothing; ``decode``
checks its tokens once per call. Decoding computes no gradients.
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
    """A block's parameters as its step reads them: the tensors themselves, so always current."""

    norm0: Tensor | None  # (d,) gain before the short conv, or None without one
    conv: Tensor | None   # (d, k) depthwise taps, oldest input first
    conv_bias: Tensor | None
    norm1: Tensor
    qkv: Tensor           # (3d, d)
    out: Tensor           # (d, d)
    norm2: Tensor
    up: Tensor
    up_bias: Tensor
    down: Tensor
    down_bias: Tensor
    eps: float
    prefix_rope: bool     # the prefix's logits use the rotated query (read_query='rotary')


def _weights(block) -> _Weights:
    conv, attn, mlp = block.conv, block.attn, block.mlp
    return _Weights(block.norm0.weight if conv is not None else None,
                    conv.conv.weight[:, 0] if conv is not None else None,
                    conv.conv.bias if conv is not None else None, block.norm1.weight, attn.qkv.weight,
                    attn.out.weight, block.norm2.weight, mlp.up.weight, mlp.up.bias, mlp.down.weight,
                    mlp.down.bias, block.norm1.eps, attn.prefix_rope)


class _Views(NamedTuple):
    """What tokens at segment positions n..n+t-1 read and write of one layer's buffers."""

    conv_in: Tensor | None  # (B, t, d) where their normed conv inputs go
    window: Tensor | None   # (B, t, d, k) the conv inputs each mixes, oldest first
    keys: Tensor            # (B*H, D, S+n+t) the keys they attend to
    values: Tensor          # (B*H, S+n+t, D)
    new_keys: Tensor        # (B*H, D, t) where their own go
    new_values: Tensor      # (B*H, t, D)
    bias: Tensor | None     # (B*H, 1, S+n+t) the read bias, or None
    probs: Tensor | None    # (B*H, t, S) where their prefix attention goes, or None
    features: Tensor        # (B, t, d) where their block outputs go
    turn: Tensor            # (t, 2, 1, D/2) complex: rotary turn of q (with the logits' scale) and k
    blocked: Tensor | None  # (t, S+n+t) bool, True where a token may not attend; None for t = 1


@dataclass
class LayerCache:
    """One layer's buffers for the open segment (see the module docstring), allocated once per
    stream and overwritten segment after segment."""

    keys: Tensor          # (B*H, D, S+T)
    values: Tensor        # (B*H, S+T, D)
    conv: Tensor | None   # (B, k-1+T, d), the first k-1 rows zero
    features: Tensor      # (B, T, d)
    probs: Tensor | None  # (B*H, T, S), None without a prefix
    bias: Tensor | None   # (B*H, 1, S+T): the read bias on the prefix, 0 after; None without one
    prefix: int           # S
    one: list[_Views] = field(default_factory=list)  # a single token's views, per segment position

    def tensors(self) -> list[Tensor]:
        return [x for x in (self.keys, self.values, self.conv, self.features, self.probs, self.bias) if x is not None]

    def views(self, n: int, t: int, turn: Tensor, blocked: Tensor) -> _Views:
        """The views for tokens n..n+t-1 (a prompt's chunk; a single token's are in ``one``)."""
        S, k = self.prefix, 0 if self.conv is None else self.conv.shape[1] - self.features.shape[1] + 1
        return _Views(conv_in=self.conv[:, k - 1 + n : k - 1 + n + t] if k else None,
                      window=self.conv[:, n : n + k - 1 + t].unfold(1, k, 1) if k else None,
                      keys=self.keys[..., : S + n + t], values=self.values[:, : S + n + t],
                      new_keys=self.keys[..., S + n : S + n + t], new_values=self.values[:, S + n : S + n + t],
                      bias=None if self.bias is None else self.bias[..., : S + n + t],
                      probs=None if self.probs is None else self.probs[:, n : n + t],
                      features=self.features[:, n : n + t], turn=turn[n : n + t],
                      blocked=blocked[n : n + t, : S + n + t] if t > 1 else None)


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
    turn: Tensor | None = None  # (T, 2, 1, D/2) complex rotary turns of segment positions 0..T-1
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
    """t tokens that fit in the open segment -> logits (B, t, V)."""
    if cache.length == 0:
        _open(model, cache)
    n, t = cache.length, tokens.shape[1]
    h = model.embed(tokens)  # (B, t, d); the model's modules, so their hooks see the tokens
    for lc, w in zip(cache.layers, cache.weights):
        h = _block(h, lc.one[n] if t == 1 else lc.views(n, t, cache.turn, cache.blocked), w)
    cache.length += t
    cache.seen += t
    return model.head(model.norm(h))


def _block(x: Tensor, v: _Views, w: _Weights) -> Tensor:
    """Block.forward for tokens x (B, t, d) whose buffers' views are ``v`` -> (B, t, d); writes
    their conv inputs, keys, values, prefix attention and block outputs into the buffers."""
    B, t, d = x.shape
    BH, D = v.keys.shape[:2]
    H = BH // B
    if w.norm0 is not None:  # layers.ShortConv: bias + sum_i w_i x_{n-k+1+i} over the k inputs up to n
        v.conv_in.copy_(_rms(x, w.norm0, w.eps))
        x = x + w.conv_bias + torch.linalg.vecdot(v.window, w.conv)  # (B, t, d)
    qkv = F.linear(_rms(x, w.norm1, w.eps), w.qkv)  # (B, t, 3d)
    # layers.rotary turns each channel pair (x1, x2) by the position's angle: the complex product
    # (x1 + i x2) e^{i theta}; q's turn carries the logits' 1/sqrt(D)
    qk = torch.view_as_real(torch.view_as_complex(qkv[..., : 2 * d].unflatten(-1, (2, H, D // 2, 2))) * v.turn)
    q = qk[:, :, 0].flatten(-2).transpose(1, 2).reshape(BH, t, D)  # (B*H, t, D)
    v.new_keys.copy_(qk[:, :, 1].flatten(-2).permute(0, 2, 3, 1).reshape(BH, D, t))
    v.new_values.copy_(qkv[..., 2 * d :].unflatten(-1, (H, D)).transpose(1, 2).reshape(BH, t, D))
    S = 0 if v.probs is None else v.probs.shape[2]  # prefix entries
    if w.prefix_rope or v.probs is None:
        scores = torch.bmm(q, v.keys)  # (B*H, t, S+n+t)
    else:  # read_query='plain': the prefix's logits use the query without rotary (Attention's q0)
        q0 = (qkv[..., :d] / math.sqrt(D)).unflatten(-1, (H, D)).transpose(1, 2).reshape(BH, t, D)
        scores = torch.cat([torch.bmm(q0, v.keys[..., :S]), torch.bmm(q, v.keys[..., S:])], dim=-1)
    if v.bias is not None:
        scores = scores + v.bias
    if v.blocked is not None:
        scores = scores.masked_fill(v.blocked, float("-inf"))
    probs = scores.softmax(-1)
    if v.probs is not None:
        v.probs.copy_(probs[..., :S])
    y = torch.bmm(probs, v.values).view(B, H, t, D).transpose(1, 2).reshape(B * t, d)  # heads side by side
    x = torch.addmm(x.reshape(B * t, d), y, w.out.t()).view(B, t, d)
    h = F.gelu(F.linear(_rms(x, w.norm2, w.eps), w.up, w.up_bias))
    return torch.add(x, F.linear(h, w.down, w.down_bias), out=v.features)


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """layers.RMSNorm."""
    return F.rms_norm(x, weight.shape, weight, eps)


def _open(model, cache: DecodeCache) -> None:
    """A segment starts: each layer's prefix keys/values and read bias from the memory (hints once
    for all), into the buffers (allocated with the first segment)."""
    state = cache.state
    hints = model.cache_transform(state.slots)  # (L, B, R, d_mem) or None
    for l, block in enumerate(model.blocks):
        prefix, bias = read_prefix(model.read[l], state.slots[l], state.usage[l], None if hints is None else hints[l])
        pkv = block.prefix_kv(prefix)  # (B, H, S, D) each, or None
        if len(cache.layers) == l:
            _allocate(model, cache, block, 0 if pkv is None else pkv[0].shape[2], bias is not None)
        lc = cache.layers[l]
        if pkv is not None:
            S = lc.prefix
            lc.keys[..., :S] = pkv[0].flatten(0, 1).transpose(1, 2)
            lc.values[:, :S] = pkv[1].flatten(0, 1)
        if bias is not None:
            lc.bias[:, 0, : bias.shape[1]] = bias.repeat_interleave(lc.keys.shape[0] // bias.shape[0], 0)


def _allocate(model, cache: DecodeCache, block, S: int, biased: bool) -> None:
    """Layer ``block``'s buffers and a single token's views, for a prefix of S entries."""
    cfg, B, T = model.cfg, cache.batch_size, cache.segment_len
    d, H = cfg.d_model, cfg.n_heads
    D = d // H
    like = dict(dtype=cache.state.slots.dtype, device=cache.state.slots.device)
    k = block.conv.kernel if block.conv is not None else 0
    lc = LayerCache(keys=torch.zeros(B * H, D, S + T, **like), values=torch.zeros(B * H, S + T, D, **like),
                    conv=torch.zeros(B, k - 1 + T, d, **like) if k else None,
                    features=torch.zeros(B, T, d, **like), probs=torch.zeros(B * H, T, S, **like) if S else None,
                    bias=torch.zeros(B * H, 1, S + T, **like) if biased else None, prefix=S)
    if cache.turn is None:
        cos, sin = rotary_table(0, T, D, like["dtype"], like["device"])  # (T, D): each angle twice
        e = torch.complex(cos[:, ::2], sin[:, 1::2])  # (T, D/2) e^{i theta}
        cache.turn = torch.stack([e / math.sqrt(D), e], dim=1)[:, :, None]  # (T, 2, 1, D/2)
        cache.blocked = torch.ones(T, S + T, dtype=torch.bool, device=like["device"]).triu(S + 1)
    lc.one = [lc.views(n, 1, cache.turn, cache.blocked) for n in range(T)]
    cache.layers.append(lc)
    cache.weights.append(_weights(block))


def _close(model, cache: DecodeCache) -> None:
    """The open segment is full (or the stream ends it): write every layer's memory, as forward."""
    state, n, B = cache.state, cache.length, cache.batch_size
    pos = state.position[:, None] + torch.arange(n, device=state.position.device)  # (B, n)
    ys = [lc.features[:, :n] for lc in cache.layers]  # [(B, n, d)] * L
    reads = [None if lc.probs is None else lc.probs.unflatten(0, (B, -1))[:, :, :n].mean(1)
             for lc in cache.layers]  # [(B, n, S) or None] * L, the mean over heads
    cache.state = model.next_state(state, model.write(ys, reads, state, pos), n)
    cache.length = 0
