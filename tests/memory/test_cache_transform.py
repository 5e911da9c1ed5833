"""Cache transform: no hints when disabled, cross-layer hints, one meta-cache hint per layer."""

from __future__ import annotations

import pytest
import torch

from selmem.memory.cache_transform import CacheTransform
from tests.helpers import assert_close, tiny_cfg, tiny_model, tokens

L, M, D = 2, 4, 16


def transform(**kw) -> CacheTransform:
    return CacheTransform(tiny_cfg(**kw)).double()


def slots(B: int = 2) -> torch.Tensor:
    return torch.randn(L, B, M, D, dtype=torch.float64)


@pytest.mark.parametrize(
    "overrides", [dict(cache_transform="none"), dict(read="off")], ids=["none", "read-off"]
)
def test_disabled_gives_no_hints(overrides):
    assert transform(**overrides)(slots()) is None
    assert not list(transform(**overrides).parameters())


def test_model_without_hints_reads_only_its_slots():
    out = tiny_model(cache_transform="none")(tokens(2, 5))
    assert out.stats["layers"][0]["read"].shape == (2, 5, M)


@pytest.mark.parametrize("meta", [False, True], ids=["plain", "meta"])
def test_hint_shapes(meta):
    hints = transform(meta_cache=meta)(slots())
    assert hints.shape == (L, 2, M + int(meta), D)
    assert torch.isfinite(hints).all()
    if meta:  # the pooled meta-cache hint is shared by every layer
        assert torch.equal(hints[0, :, -1], hints[1, :, -1])


@pytest.mark.parametrize("layers", [1, 2], ids=lambda n: f"depth{n}")
def test_hints_are_cross_layer(layers):
    """Layer 0's hints depend on layer 1's slots (top-down) and vice versa."""
    ct = transform(cache_transform_layers=layers)
    s = slots()
    s2 = s.clone()
    s2[1] += torch.randn_like(s2[1])
    h, h2 = ct(s), ct(s2)
    assert not torch.allclose(h[0], h2[0])
    s3 = s.clone()
    s3[0] += torch.randn_like(s3[0])
    assert not torch.allclose(h[1], ct(s3)[1])


def test_hints_are_per_sequence():
    ct = transform(meta_cache=True)
    s = slots()
    s2 = s.clone()
    s2[:, 1] = torch.randn_like(s2[:, 1])
    assert_close("row 0 hints", ct(s)[:, 0], ct(s2)[:, 0], atol=1e-12)


def test_meta_cache_adds_one_hint_per_layer_to_the_read():
    out = tiny_model(meta_cache=True)(tokens(2, 5))
    assert out.stats["layers"][1]["read"].shape == (2, 5, M + M + 1)
