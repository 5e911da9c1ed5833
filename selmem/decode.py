"""Token-by-token decoding with a cache: the memory state plus the open segment's keys and values.

Legend: B batch, L layers, T segment length, n tokens of the open segment so far, t new tokens,
H heads, D head width, S prefix length (M slots + R hints), d model width, V vocabulary.

Inside a segment the model is causal over [memory prefix; segment], and the memory is written at
the segment's end from the features of all its tokens, reading the memory as it was before. So a
decoder keeps, per layer, what the segment's later tokens and its write will need:

    prefix keys/values  (B, H, S, D)  of the memory read, computed once when the segment opens
    keys/values         (B, H, n, D)  of the segment's tokens so far (and the short conv's tail)
    features            (B, n, d)     the block outputs, head B's input at the write
    read attention      (B, n, S)     for the usage the write adds

and writes the memory when the segment fills, with the same ``model.write`` as ``forward``. Everything
is bounded by T, so generating any number of tokens takes constant memory. ``decode`` on any
chunking of a sequence gives ``forward_sequence``'s logits (tests/test_decode.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from selmem.layers import BlockCache, rotary_table
from selmem.memory.layer import read_prefix
from selmem.state import MemoryState


@dataclass
class DecodeCache:
    """The state of a decoding stream: ``state`` is the memory the open segment reads (before its
    writes); the lists hold one entry per layer for the open segment's ``length`` tokens."""

    state: MemoryState
    segment_len: int
    length: int = 0  # tokens in the open segment
    seen: int = 0  # tokens decoded in all
    prefix: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)  # per layer (pk, pv)
    bias: list[Tensor | None] = field(default_factory=list)  # per layer read bias (B, S)
    blocks: list[BlockCache | None] = field(default_factory=list)  # per layer conv tail, (k, v)
    features: list[list[Tensor]] = field(default_factory=list)  # per layer chunks of (B, t, d)
    reads: list[list[Tensor]] = field(default_factory=list)  # per layer chunks of (B, t, S)
    rope: tuple[Tensor, Tensor] | None = None  # rotary cos, sin for segment positions 0..T-1

    @property
    def batch_size(self) -> int:
        return self.state.batch_size

    def num_floats(self) -> int:
        """Floats held now: the memory state plus the open segment's cache (at most T tokens)."""
        tensors = [self.state.slots, self.state.usage, self.state.age]
        tensors += [x for kv in self.prefix if kv is not None for x in kv]
        tensors += [x for b in self.blocks if b is not None for x in (b[0], *b[1]) if x is not None]
        tensors += [x for f in self.features + self.reads for x in f]
        return sum(x.numel() for x in tensors)


def new_cache(model, batch_size: int, segment_len: int | None = None, state: MemoryState | None = None,
              device: torch.device | str | None = None) -> DecodeCache:
    """An empty cache for ``batch_size`` streams, from ``state`` (default: a fresh memory)."""
    seg = segment_len or model.cfg.max_segment_len
    if not 1 <= seg <= model.cfg.max_segment_len:
        raise ValueError(f"segment_len must be in [1, max_segment_len={model.cfg.max_segment_len}], got {seg}")
    return DecodeCache(state if state is not None else model.init_state(batch_size, device), seg)


def decode(model, tokens: Tensor, cache: DecodeCache) -> tuple[Tensor, DecodeCache]:
    """Feed tokens (B, t) (any t: a prompt or one token) after what ``cache`` has seen -> logits
    (B, t, V) and the cache after them (the same object, updated)."""
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must have shape (batch, length >= 1), got {tuple(tokens.shape)}")
    if tokens.shape[0] != cache.batch_size:
        raise ValueError(f"the cache holds {cache.batch_size} streams but tokens have batch size {tokens.shape[0]}")
    logits, start = [], 0
    while start < tokens.shape[1]:  # chunks never cross a segment boundary
        t = min(tokens.shape[1] - start, cache.segment_len - cache.length)
        logits.append(_chunk(model, tokens[:, start : start + t], cache))
        start += t
        if cache.length == cache.segment_len:
            _close(model, cache)
    return torch.cat(logits, dim=1), cache


def _open(model, cache: DecodeCache) -> None:
    """A segment starts: compute each layer's prefix from the memory (hints once for all)."""
    state, L = cache.state, model.cfg.n_layers
    hints = model.cache_transform(state.slots)  # (L, B, R, d_mem) or None
    cache.prefix, cache.bias = [], []
    for l, block in enumerate(model.blocks):
        prefix, bias = read_prefix(model.read[l], state.slots[l], state.usage[l], None if hints is None else hints[l])
        cache.prefix.append(block.prefix_kv(prefix))
        cache.bias.append(bias)
    cache.blocks, cache.features, cache.reads = [None] * L, [[] for _ in range(L)], [[] for _ in range(L)]


def _chunk(model, tokens: Tensor, cache: DecodeCache) -> Tensor:
    """t tokens that fit in the open segment -> logits (B, t, V)."""
    model._check(tokens, cache.state)
    if cache.length == 0:
        _open(model, cache)
    h = model.embed(tokens.long())  # (B, t, d)
    if cache.rope is None:
        D = model.cfg.d_model // model.cfg.n_heads
        cache.rope = rotary_table(0, cache.segment_len, D, h.dtype, h.device)
    for l, block in enumerate(model.blocks):
        h, read, cache.blocks[l] = block.step(h, cache.prefix[l], cache.blocks[l], cache.bias[l], cache.rope)
        cache.features[l].append(h)
        if read is not None:
            cache.reads[l].append(read)
    cache.length += tokens.shape[1]
    cache.seen += tokens.shape[1]
    return model.head(model.norm(h))


def _close(model, cache: DecodeCache) -> None:
    """The open segment is full (or the stream ends it): write every layer's memory, as forward."""
    state = cache.state
    pos = state.position[:, None] + torch.arange(cache.length, device=state.position.device)  # (B, n)
    ys = [torch.cat(f, dim=1) for f in cache.features]  # [(B, n, d)] * L
    reads = [torch.cat(r, dim=1) if r else None for r in cache.reads]  # [(B, n, S) or None] * L
    cache.state = model._stack(state, model.write(ys, reads, state, pos), cache.length)
    cache.length = 0
    cache.prefix, cache.bias, cache.blocks, cache.features, cache.reads = [], [], [], [], []


def flush(model, cache: DecodeCache) -> MemoryState:
    """The memory after everything decoded so far: writes a part-filled open segment, as
    ``forward_sequence`` writes its short last segment. The cache then starts a new segment."""
    if cache.length:
        _close(model, cache)
    return cache.state
