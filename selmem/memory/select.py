"""Selection (head B): a per-token "worth caching" gate g_t in [0, 1].

Legend: B batch, T segment length, d model width.

Every option scores tokens the same way, s_t = w . f(y_t) with f a small MLP, and differs in
how the score becomes a gate:

- soft:      g = sigmoid(s).
- hard:      Gumbel-sigmoid straight-through (Jang et al. 2017; Bengio et al. 2013): the forward
             value is 0/1, the gradient is the relaxed sigmoid's. At eval, g = [s > 0].
- topk:      the k highest scores of the segment get 1, the rest 0 (write budget k), with the
             sigmoid's gradient passed straight through.
- threshold: g = [s > tau] with a learned tau; gradient of sigmoid(s - tau).
- all:       g = 1 (ablation: write everything).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from selmem.config import SelmemConfig


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Forward value ``hard``, gradient of ``soft``. The brackets matter: (soft - soft) is exactly 0,
    whereas (hard + soft) - soft rounds, giving gates like 1 + 2^-52 that break the convex update."""
    return hard + (soft - soft.detach())


def soft(s: Tensor, head: Select) -> Tensor:
    return torch.sigmoid(s)


def hard(s: Tensor, head: Select) -> Tensor:
    if not head.training:
        return (s > 0).to(s.dtype)
    u = torch.rand_like(s).clamp(1e-6, 1 - 1e-6)
    relaxed = torch.sigmoid((s + torch.log(u) - torch.log1p(-u)) / head.gumbel_tau)  # logistic noise
    return straight_through((relaxed > 0.5).to(s.dtype), relaxed)


def topk(s: Tensor, head: Select) -> Tensor:
    idx = s.topk(min(head.k, s.shape[1]), dim=1).indices
    return straight_through(torch.zeros_like(s).scatter(1, idx, 1.0), torch.sigmoid(s))


def threshold(s: Tensor, head: Select) -> Tensor:
    return straight_through((s > head.threshold).to(s.dtype), torch.sigmoid(s - head.threshold))


def all_tokens(s: Tensor, head: Select) -> Tensor:
    return torch.ones_like(s)


def budget(gate: Tensor, k: int) -> Tensor:
    """Candidate gates (B, C) -> the same gates with all but the k largest of each row zeroed
    (straight-through: the kept ones pass their gradient). select='topk' budgets tokens, but a
    pooling compressor (attnpool) can spread k selected tokens over many candidates: applied to
    the candidates, this keeps the write mass of a segment <= k whatever the compressor."""
    if k >= gate.shape[1]:
        return gate
    idx = gate.detach().topk(k, dim=1).indices
    return gate * torch.zeros_like(gate).scatter(1, idx, 1.0)


SELECT = {"soft": soft, "hard": hard, "topk": topk, "threshold": threshold, "all": all_tokens}


class Select(nn.Module):
    """Head B: y (B, T, d) -> gate g (B, T) in [0, 1] and score s (B, T)."""

    # the batched write (memory/stacked.py) gives each parameter one value per row, (B,) + shape,
    # then as many singleton axes as named here: threshold is compared with the scores (B, T)
    row_axes: ClassVar[dict[str, int]] = {"threshold": 1}

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__()
        self.gate = SELECT[cfg.select]
        self.k, self.gumbel_tau = cfg.topk, cfg.gumbel_tau
        self.score: nn.Sequential | None = None  # 'all' scores nothing: its score is 0
        if cfg.select != "all":
            self.score = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model // 2), nn.GELU(),
                                       nn.Linear(cfg.d_model // 2, 1))
            # start writing at a moderate rate (sigmoid(0.5) ~ 0.62) so early training sees memory
            nn.init.constant_(self.score[-1].bias, 0.5)
        # learned tau of 'threshold' (only there: an unused parameter breaks DDP)
        self.threshold = nn.Parameter(torch.zeros(())) if cfg.select == "threshold" else None

    def forward(self, y: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """valid (B, T) bool or None: padding (False) gets gate 0, and never a place in topk's budget."""
        s = self.score(y).squeeze(-1) if self.score is not None else y.new_zeros(y.shape[:2])  # (B, T)
        if valid is None:
            return self.gate(s, self), s
        masked = s.masked_fill(~valid, torch.finfo(s.dtype).min / 2)  # sigmoid -> exactly 0
        return self.gate(masked, self) * valid.to(s.dtype), s
