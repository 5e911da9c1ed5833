"""Shared test helpers: tiny configs, models and tensor comparison with readable failures."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from selmem import SelectiveMemoryTransformer, SelmemConfig

TINY: dict[str, Any] = dict(
    vocab_size=16,
    d_model=32,
    n_layers=2,
    n_heads=2,
    mlp_ratio=2,
    max_segment_len=32,
    slots=4,
    d_mem=16,
    topk=3,
    pool_window=3,
    attnpool_queries=3,
)


def tiny_cfg(**overrides: Any) -> SelmemConfig:
    """The smallest config that exercises every part (HF-tester sized: width 32, 2 layers)."""
    cfg = {**TINY, **overrides}
    if cfg.get("compress") == "none" and "d_mem" not in overrides:
        cfg["d_mem"] = cfg["d_model"]  # 'none' writes raw features
    return SelmemConfig(**cfg).validate()


def tiny_model(dtype: torch.dtype = torch.float64, **overrides: Any) -> SelectiveMemoryTransformer:
    """A tiny model in ``dtype`` (float64 by default, for tight comparisons)."""
    return SelectiveMemoryTransformer(tiny_cfg(**overrides)).to(dtype)


def tokens(batch: int, length: int, vocab: int = TINY["vocab_size"], lo: int = 0) -> Tensor:
    """Random token ids in [lo, vocab), from the test's seeded global generator."""
    return torch.randint(lo, vocab, (batch, length))


def assert_close(name: str, ref: Tensor, out: Tensor, atol: float, rtol: float = 0.0) -> None:
    """Fail with max abs and max relative error when |out - ref| > atol + rtol |ref| anywhere,
    or when either side holds NaN/inf (allclose would quietly accept NaN == NaN with equal_nan)."""
    assert ref.shape == out.shape, (
        f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    )
    ref, out = ref.detach().double(), out.detach().double()
    assert torch.isfinite(ref).all(), f"{name}: reference has NaN/inf"
    assert torch.isfinite(out).all(), f"{name}: output has NaN/inf"
    err = (out - ref).abs()
    rel = err / ref.abs().clamp_min(1e-12)
    bad = err > atol + rtol * ref.abs()
    assert not bad.any(), (
        f"{name}: max abs err {err.max().item():.3e}, max rel err "
        f"{rel.max().item():.3e} (atol {atol:g}, rtol {rtol:g}; "
        f"{int(bad.sum())}/{bad.numel()} elements out of tolerance)"
    )


def grads(module: torch.nn.Module) -> dict[str, Tensor]:
    """name -> gradient of every parameter, zeros where autograd left None (unused in the graph)."""
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in module.named_parameters()
    }


def grad_norm(module: torch.nn.Module) -> float:
    """Total gradient norm over ``module``'s parameters (0 where no gradient arrived)."""
    return float(sum(g.double().pow(2).sum() for g in grads(module).values()) ** 0.5)
