"""Write addressing: where each candidate goes. Returns weights w (B, C, M), rows summing to 1.

Legend: B batch, C candidates, M slots, d_mem slot width.

All candidates of a segment address the memory as it was at the segment's start (so the whole
segment is addressed in parallel); update.py then applies the writes in order.

- attention: w = beta * content + (1 - beta) * allocation, beta = sigmoid(v . c_t) learned per
  candidate (the DNC's write gate mix, Graves et al. 2016).
    content    = normalise_j(e^tau * q(c_t) . k(C_j) / sqrt(d_mem)), tau a learned per-layer
               log-sharpness (0 at init), normalise = softmax or sparsemax (``address_weights``).
    allocation = "the n-th write of a segment goes to the n-th freest slot": slots are ranked by
               freeness (low usage first, discounted by age: see ``freeness_ranks``), candidate t aims at rank
               m_t mod M where m_t = sum_{s<t} g_s is the gate mass written before it, and
               w_tj = softmax_j(-dist(rank_j, m_t)^2 / alloc_temperature) with circular distance.
               This is the DNC's usage-sorted allocation made parallel over a segment.
  With ``write_new='allocate'`` the mix is a competition instead: a candidate's content logits
  on the slots that hold written content (usage >= 0.1; an emptier slot gets log(usage / 0.1),
  a slot never written, usage < 1e-4, none) compete in one softmax with a learned "new fact"
  logit ``v . c_t + b``; what goes to "new" is allocated, and the allocation target m_t counts
  the earlier candidates that were selected (g > 0.5) and went to "new". So a candidate
  overwrites a slot only where it matches what the slot holds, and distinct new facts of one
  segment take distinct free slots. With the learned mix, a fresh memory's (meaningless) content
  similarity sent most candidates of a segment to the same 2-3 slots (docs/FINDINGS.md section 12).
  The content logits here are a bounded match, the DNC's cosine similarity times a strength
  ``CONTENT_MAX * sigmoid(tau)``: with a dot product they grew in training to 26 on a fresh
  memory, beat the unwritten slots' penalty and "new" alike, and one seed of three wrote all of
  a segment's facts into 1-2 slots (FINDINGS 12, "The write's content logits ran away").
  With ``address_weights='top1'`` each candidate writes only into the slot of its largest w
  (forward one-hot, gradient of the soft w: straight-through), so a write never erases a little
  of every slot. A near-uniform soft w at initialisation does exactly that: with 8 slots and a
  16-token segment only about half of a slot's content survives the segment (the "smear").
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
from selmem.memory.select import straight_through


def gate_mass_before(gate: Tensor) -> Tensor:
    """(B, C) -> (B, C): m_t = sum_{s<t} g_s, the write mass ahead of each candidate."""
    return gate.cumsum(1) - gate


def freeness_ranks(usage: Tensor, age: Tensor, age_weight: float = 0.0) -> Tensor:
    """(B, M) usage, age -> (B, M) long rank of each slot, 0 = freest.

    Slots rank by ``usage * exp(-age_weight * age)``: what a slot holds counts for less the longer
    it has gone unrefreshed (age in segments), so of two slots with similar usage the older is
    evicted first, and a slot that is read keeps its place (reads add to usage). Among equal
    scores (an empty memory) the older ranks first, then the lower index (a stable sort): no
    ties, no NaN."""
    score = usage * torch.exp(-age_weight * age) - 1e-6 * age / (1.0 + age)
    order = torch.sort(score, dim=1, stable=True).indices
    return torch.argsort(order, dim=1)


def sparsemax(logits: Tensor) -> Tensor:
    """Sparsemax over the last axis (Martins & Astudillo 2016): the Euclidean projection of the
    logits onto the simplex, so low-scoring slots get exactly 0 weight."""
    z, _ = logits.sort(dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cum = z.cumsum(-1)
    support = (1 + k * z) > cum  # (..., M) prefix of the sorted logits in the support
    k_z = support.sum(-1, keepdim=True)  # (..., 1) support size >= 1
    tau = (cum.gather(-1, k_z - 1) - 1) / k_z.to(z.dtype)
    return (logits - tau).clamp_min(0)


def one_hot(index: Tensor, M: int, dtype: torch.dtype) -> Tensor:
    """index (B, C) long in [0, M) -> (B, C, M) one-hot. F.one_hot checks the index range by
    reading it back (a host sync per call); these indices are in range by construction."""
    return torch.zeros(*index.shape, M, dtype=dtype, device=index.device).scatter(-1, index[..., None], 1.0)


NORMALISE = {"softmax": lambda x: x.softmax(-1), "sparsemax": sparsemax, "top1": lambda x: x.softmax(-1)}


def rank_weights(ranks: Tensor, target: Tensor, temperature: float) -> Tensor:
    """ranks (B, M), target rank (B, C) float -> (B, C, M) softmax over circular rank distance."""
    M = ranks.shape[1]
    diff = (ranks[:, None, :].to(target.dtype) - target[:, :, None]).remainder(M)
    dist = torch.minimum(diff, M - diff)
    return (-dist.pow(2) / temperature).softmax(-1)


CONTENT_MAX = 10.0
"""The largest content logit of write_new='allocate' (a perfect match at full strength)."""


def attention(a: Address, cand: Tensor, gate: Tensor, slots: Tensor, usage: Tensor, age: Tensor,
              pos: Tensor) -> Tensor:
    if a.allocate:  # a bounded match: cosine similarity times a learned strength in (0, CONTENT_MAX)
        sim = F.normalize(a.q(cand), dim=-1) @ F.normalize(a.k(slots), dim=-1).transpose(1, 2)  # (B, C, M)
        return content_or_allocate(a, cand, gate, CONTENT_MAX * torch.sigmoid(a.sharpness) * sim, usage, age)
    logits = a.q(cand) @ a.k(slots).transpose(1, 2) / math.sqrt(cand.shape[-1])  # (B, C, M)
    content = NORMALISE[a.weights](logits * a.sharpness.exp())
    M = slots.shape[1]
    target = gate_mass_before(gate).remainder(M)
    alloc = rank_weights(freeness_ranks(usage, age, a.age_weight), target, a.temperature)
    beta = torch.sigmoid(a.mix(cand))  # (B, C, 1)
    return beta * content + (1 - beta) * alloc


def content_or_allocate(a: Address, cand: Tensor, gate: Tensor, logits: Tensor, usage: Tensor,
                        age: Tensor) -> Tensor:
    """write_new='allocate': softmax over [content logits on written slots; a "new fact" logit],
    the "new" mass allocated to the next free slot, counting only selected new candidates."""
    M = logits.shape[-1]
    u = usage.detach()
    # (B, M): 0 for a written slot, log(u / 0.1) for a partly written one, -inf for a slot never written
    occupied = torch.where(u >= 1e-4, (u / 0.1).clamp(1e-4, 1.0).log(), float("-inf"))
    p = torch.cat([logits + occupied[:, None, :], a.mix(cand)], dim=-1).softmax(-1)  # (B, C, M+1)
    content, new = p[..., :M], p[..., M:]  # (B, C, M), (B, C, 1)
    selected = (gate.detach() > 0.5).to(gate.dtype) * (new[..., 0].detach() > 0.5).to(gate.dtype)
    target = (selected.cumsum(1) - selected).remainder(M)  # (B, C) selected new facts before t
    alloc = rank_weights(freeness_ranks(usage, age, a.age_weight), target, a.temperature)
    return content + new * alloc


def fifo(a: Address, cand: Tensor, gate: Tensor, slots: Tensor, usage: Tensor, age: Tensor,
         pos: Tensor) -> Tensor:
    M = slots.shape[1]
    head = age.argmax(dim=1, keepdim=True)  # (B, 1) oldest slot; index 0 when all are equal
    slot = (head + gate_mass_before(gate).detach().floor().long()).remainder(M)  # (B, C)
    return one_hot(slot, M, cand.dtype)


def random(a: Address, cand: Tensor, gate: Tensor, slots: Tensor, usage: Tensor, age: Tensor,
           pos: Tensor) -> Tensor:
    M = slots.shape[1]
    h = (pos * 2654435761 + (a.layer_idx + 1) * 40503).remainder(2**31)  # Knuth hash
    return one_hot(h.remainder(M), M, cand.dtype)


ADDRESS = {"attention": attention, "fifo": fifo, "random": random}


class Address(nn.Module):
    """Candidates (B, C, d_mem) + gates (B, C) + memory at segment start -> w (B, C, M)."""

    def __init__(self, cfg: SelmemConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.fn = ADDRESS[cfg.address]
        self.layer_idx, self.temperature = layer_idx, cfg.alloc_temperature
        self.weights, self.age_weight = cfg.address_weights, cfg.age_weight
        self.allocate = cfg.write_new == "allocate"
        if cfg.address == "attention":
            self.q = nn.Linear(cfg.d_mem, cfg.d_mem, bias=False)
            self.k = nn.Linear(cfg.d_mem, cfg.d_mem, bias=False)
            self.mix = nn.Linear(cfg.d_mem, 1)  # the content/allocation mix, or the "new fact" logit
            if self.allocate:  # "new" starts as likely as all M written slots together
                nn.init.constant_(self.mix.bias, math.log(cfg.slots))
            # learned log inverse temperature (allocate: the logit of the content strength)
            self.sharpness = nn.Parameter(torch.zeros(()))

    @property
    def row_axes(self) -> dict[str, int]:
        """What the batched write (memory/stacked.py) gives one value per row (B,) + shape, then
        as many singleton axes as named here: the sharpness scales the logits (B, C, M), and the
        random address hashes the layer index with the positions (B, C)."""
        return {"sharpness": 2, **({"layer_idx": 1} if self.fn is random else {})}

    def forward(self, cand: Tensor, gate: Tensor, slots: Tensor, usage: Tensor, age: Tensor,
                pos: Tensor) -> Tensor:
        """pos (B, C) long: absolute input position of each candidate."""
        w = self.fn(self, cand, gate, slots, usage, age, pos)
        if self.weights == "top1":  # one slot per candidate; the soft weights carry the gradient
            w = straight_through(one_hot(w.argmax(-1), w.shape[-1], w.dtype), w)
        return w
