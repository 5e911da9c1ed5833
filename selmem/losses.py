"""Training signals of DESIGN.md section 3, as pure functions.

loss = task + lambda_sparse * sparsity + lambda_rec * reconstruction + lambda_nce * infonce
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sparsity(gates: list[Tensor], kind: str, rate: float) -> Tensor:
    """gates: per-layer (B, T) gate values. 'target': mean over layers of (mean g_l - rate)^2,
    so every layer is held near the rate (a pooled mean would let one layer close and another
    open to compensate); 'budget': mean over layers of relu(mean g_l - rate)^2, a ceiling only
    (when fewer tokens matter than the rate allows, a target would force the rest to be written);
    'l1': mean g."""
    if kind == "target":
        return torch.stack([(x.mean() - rate) ** 2 for x in gates]).mean()
    if kind == "budget":
        return torch.stack([(x.mean() - rate).clamp_min(0) ** 2 for x in gates]).mean()
    return torch.cat([x.reshape(-1) for x in gates]).mean()


def score_bound(scores: list[Tensor], margin: float) -> Tensor:
    """scores: per-layer (B, T) head-B scores. mean over layers of mean relu(|s| - margin)^2: zero
    while every gate is within sigmoid(+-margin), growing as one saturates. A saturated sigmoid
    passes no gradient to its score; this term does, so a closed (or stuck open) gate can move."""
    return torch.stack([(s.abs() - margin).clamp_min(0).pow(2).mean() for s in scores]).mean()


def reconstruction(decoded: Tensor, feature: Tensor, gate: Tensor) -> Tensor:
    """Gate-weighted MSE between decoded candidates (..., B, C, d) and the (detached) features they
    compress (..., B, C, d), gates (..., B, C): only what is written needs to be recoverable.
    Leading axes (layers) are kept: () for (B, C, d). The gate weighs but is not
    trained by this loss (detached): otherwise it learns to write what is easy to reconstruct,
    which on recall is the repetitive noise rather than the rare keys and values."""
    err = (decoded - feature.detach()).pow(2).mean(-1)  # (..., B, C)
    gate = gate.detach()
    return (gate * err).sum((-2, -1)) / gate.sum((-2, -1)).clamp_min(1e-6)


def infonce(memory: Tensor, future: Tensor, temperature: float) -> Tensor:
    """Predictive InfoNCE (van den Oord et al. 2018): memory summaries (B, p) must pick out their
    own sequence's next segment (B, p) among the batch's. Zero for batches of one."""
    if memory.shape[0] < 2:
        return memory.sum() * 0.0
    logits = F.normalize(memory, dim=-1) @ F.normalize(future, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(memory.shape[0], device=memory.device))
