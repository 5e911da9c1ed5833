"""Write addressing: where each candidate goes. Returns weights w (B, C, M), rows summing to 1.

Legend: B batch, C candidates, M slots, d_mem slot width.

All candidates of a segment address the memory as it was at the segment's start (so the whole
segment is addressed in parallel); update.py then applies the writes in order.

- attention: w = beta * content + (1 - beta) * allocation, beta = sigmoid(v . c_t) learned per
  candidate (the DNC's write gate mix, Graves et al. 2016).
    content    = softmax_j(q(c_t) . k(C_j) / sqrt(d_mem)).
    allocation = "the n-th write of a segment goes to the n-th freest slot": slots are ranked by
               freeness (low usage first, older first among equals), candidate t aims at rank
               m_t mod M where m_t = sum_{s<t} g_s is the gate mass written before it, and
               w_tj = softmax_j(-dist(rank_j, m_t)^2 / alloc_temperature) with circular distance.
               This is the DNC's usage-sorted allocation made parallel over a segment.
- fifo:      a ring buffer: the oldest slot is the ring's head, and candidate t goes to the slot
             floor(m_t) places after it (one-hot).
- random:    a fixed pseudo-random slot per absolute input position (hash), one-hot (ablation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selmem.config import SelmemConfig


def gate_mass_before(gate: Tensor) -> Tensor:
    """(B, C) -> (B, C): m_t = sum_{s<t} g_s, the write mass ahead of each candidate."""
    return gate.cumsum(1) - gate


def freeness_ranks(usage: Tensor, age: Tensor) -> Tensor:
    """(B, M) usage, age -> (B, M) long rank of each slot, 0 = freest (lowest usage, then oldest).
    A stable sort, so equal slots (an empty memory) rank by index: no ties, no NaN."""
    score = usage - 1e-3 * age / (1.0 + age)  # age only breaks near-ties in usage
    order = torch.sort(score, dim=1, stable=True).indices
    return torch.argsort(order, dim=1)


def rank_weights(ranks: Tensor, target: Tensor, temperature: float) -> Tensor:
    """ranks (B, M), target rank (B, C) float -> (B, C, M) softmax over circular rank distance."""
    M = ranks.shape[1]
    diff = (ranks[:, None, :].to(target.dtype) - target[:, :, None]).remainder(M)
    dist = torch.minimum(diff, M - diff)
    return (-dist.pow(2) / temperature).softmax(-1)


def attention(a: Address, cand: Tensor, gate: Tensor, slots: Tensor, usage: Tensor, age: Tensor,
              pos: Tensor) -> Tensor:
    content = (a.q(cand) @ a.k(slots).transpose(1, 2) / math.sqrt(cand.shape[-1])).softmax(-1)
    M = slots.shape[1]
    target = gate_mass_before(gate).remainder(M)
    alloc = rank_weights(freeness_ranks(usage, age), target, a.temperature)
    beta = torch.sigmoid(a.mix(cand))  # (B, C, 1)
    return beta * content + (1 - beta) * alloc


def fifo(a: Address, cand: Tensor, gate: Tensor, slots: Tensor, usage: Tensor, age: Tensor,
         pos: Tensor) -> Tensor:
    M = slots.shape[1]
    head = age.argmax(dim=1, keepdim=True)  # (B, 1) oldest slot; index 0 when all are equal
    slot = (head + gate_mass_before(gate).detach().floor().long()).remainder(M)  # (B, C)
    return F.one_hot(slot, M).to(cand.dtype)


def random(a: Address, cand: Tensor, gate: Tensor, slots: Tensor, usage: Tensor, age: Tensor,
           pos: Tensor) -> Tensor:
    M = slots.shape[1]
    h = (pos * 2654435761 + (a.layer_idx + 1) * 40503).remainder(2**31)  # Knuth hash
    return F.one_hot(h.remainder(M), M).to(cand.dtype)


ADDRESS = {"attention": attention, "fifo": fifo, "random": random}


class Address(nn.Module):
    """Candidates (B, C, d_mem) + gates (B, C) + memory at segment start -> w (B, C, M)."""

    def __init__(self, cfg: SelmemConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.fn = ADDRESS[cfg.address]
        self.layer_idx, self.temperature = layer_idx, cfg.alloc_temperature
        if cfg.address == "attention":
            self.q = nn.Linear(cfg.d_mem, cfg.d_mem, bias=False)
            self.k = nn.Linear(cfg.d_mem, cfg.d_mem, bias=False)
            self.mix = nn.Linear(cfg.d_mem, 1)

    def forward(self, cand: Tensor, gate: Tensor, slots: Tensor, usage: Tensor, age: Tensor,
                pos: Tensor) -> Tensor:
        """pos (B, C) long: absolute input position of each candidate."""
        return self.fn(self, cand, gate, slots, usage, age, pos)
