"""Compression: turn a segment's gated features into write candidates of width d_mem.

Legend: B batch, T segment length, C candidates, r pool window, K attnpool queries,
d model width, d_mem slot width.

Every option returns a ``Candidates`` tuple. Candidates pass through an RMSNorm, so each has
norm at most sqrt(d_mem) * max|gain|: with the convex update (update.py) that bounds every slot.

- linear:   C = T, c_t = norm(W y_t), gate g_t.
- avgpool:  C = ceil(T / r), c = norm(W * sum_t g_t y_t / sum_t g_t) per window; gate = max g.
- maxpool:  C = ceil(T / r), c = norm(W * max_{t: g_t > 0} y_t) per window (the max over the
            window's selected tokens only; 0 if none is); gate = max g. Taking max_t g_t y_t
            instead would let a gated-out token (g_t y_t = 0) win every dimension where the
            selected tokens are negative.
- attnpool: C = K, learned queries attend over the segment with logits q.y_t + log g_t;
            c = norm(W * pooled), gate = attention-weighted mean of g.
- none:     C = T, c_t = norm(y_t) (needs d_mem == d).

Provenance of a pooled candidate is the window's (or attention's) argmax token.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selmem.config import SelmemConfig
from selmem.layers import RMSNorm


class Candidates(NamedTuple):
    values: Tensor    # (B, C, d_mem) what may be written
    gate: Tensor      # (B, C) write strength in [0, 1]
    position: Tensor  # (B, C) long, segment position each candidate mostly came from
    feature: Tensor   # (B, C, d) the feature it compresses (reconstruction target)


def _windows(x: Tensor, r: int) -> Tensor:
    """(B, T, ...) -> (B, ceil(T/r), r, ...), zero-padded at the end."""
    T = x.shape[1]
    pad = (-T) % r
    if pad:
        x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
    return x.view(x.shape[0], -1, r, *x.shape[2:])


def linear(m: Compress, y: Tensor, g: Tensor) -> Candidates:
    pos = torch.arange(y.shape[1], device=y.device).expand_as(g)
    return Candidates(m.norm(m.proj(y)), g, pos, y)


def none(m: Compress, y: Tensor, g: Tensor) -> Candidates:
    pos = torch.arange(y.shape[1], device=y.device).expand_as(g)
    return Candidates(m.norm(y), g, pos, y)


def _pool(m: Compress, y: Tensor, g: Tensor, reduce: str) -> Candidates:
    yw, gw = _windows(y, m.r), _windows(g, m.r)  # (B, C, r, d), (B, C, r)
    if reduce == "avg":
        feat = (gw[..., None] * yw).sum(2) / (gw.sum(2, keepdim=True) + 1e-6)
    else:
        selected = (gw > 0)[..., None]  # (B, C, r, 1) padding has g = 0, so it never wins either
        feat = yw.masked_fill(~selected, float("-inf")).amax(2)
        feat = torch.where(selected.any(2), feat, torch.zeros_like(feat))  # an all-unselected window
    gate, arg = gw.max(dim=2)  # (B, C)
    pos = torch.arange(gw.shape[1], device=y.device) * m.r + arg
    return Candidates(m.norm(m.proj(feat)), gate, pos.clamp(max=y.shape[1] - 1), feat)


def avgpool(m: Compress, y: Tensor, g: Tensor) -> Candidates:
    return _pool(m, y, g, "avg")


def maxpool(m: Compress, y: Tensor, g: Tensor) -> Candidates:
    return _pool(m, y, g, "max")


def attnpool(m: Compress, y: Tensor, g: Tensor) -> Candidates:
    # queries (K, d), or (B, K, d) when the layers' writes run as one batch (stacked.py)
    logits = m.queries @ F.layer_norm(y, y.shape[-1:]).transpose(1, 2)  # (B, K, T)
    attn = (logits / math.sqrt(y.shape[-1]) + torch.log(g[:, None, :] + 1e-6)).softmax(-1)  # (B, K, T)
    feat = attn @ y  # (B, K, d)
    gate = (attn * g[:, None, :]).sum(-1)  # (B, K)
    return Candidates(m.norm(m.proj(feat)), gate, attn.argmax(-1), feat)


COMPRESS = {"linear": linear, "avgpool": avgpool, "maxpool": maxpool, "attnpool": attnpool, "none": none}


class Compress(nn.Module):
    """y (B, T, d), g (B, T) -> Candidates (see module docstring for each option)."""

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__()
        self.fn = COMPRESS[cfg.compress]
        self.r = cfg.pool_window
        self.norm = RMSNorm(cfg.d_mem)
        if cfg.compress != "none":
            self.proj = nn.Linear(cfg.d_model, cfg.d_mem, bias=False)
        if cfg.compress == "attnpool":
            self.queries = nn.Parameter(torch.randn(cfg.attnpool_queries, cfg.d_model) * 0.02)

    def forward(self, y: Tensor, g: Tensor) -> Candidates:
        return self.fn(self, y, g)
