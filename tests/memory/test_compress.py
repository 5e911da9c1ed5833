"""Compression: candidate counts, pooled gates, bounded candidate norms, gate-0 tokens stay out."""

from __future__ import annotations

import math

import pytest
import torch

from selmem.memory.compress import Compress
from tests.helpers import assert_close, tiny_cfg

OPTIONS = ["linear", "avgpool", "maxpool", "attnpool", "none"]


def module(compress: str) -> Compress:
    m = Compress(tiny_cfg(compress=compress)).double()
    with torch.no_grad():  # gains beyond 1 and of both signs: the bound must use max |gain|
        m.norm.weight.uniform_(-2.0, 2.0)
    return m


def inputs(T: int, d: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, T, d, dtype=torch.float64), torch.rand(2, T, dtype=torch.float64)


def expected_count(compress: str, T: int) -> int:
    cfg = tiny_cfg(compress=compress)
    return {
        "avgpool": math.ceil(T / cfg.pool_window),
        "maxpool": math.ceil(T / cfg.pool_window),
        "attnpool": cfg.attnpool_queries,
    }.get(compress, T)


@pytest.mark.parametrize("T", [6, 7, 1], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("compress", OPTIONS)
def test_shapes_gates_positions(compress, T):
    m = module(compress)
    y, g = inputs(T, d=m.norm.weight.shape[0] if compress == "none" else 32)
    c = m(y, g)
    C = expected_count(compress, T)
    d_mem = m.norm.weight.shape[0]
    assert c.values.shape == (2, C, d_mem) and c.gate.shape == c.position.shape == (2, C)
    assert c.feature.shape == (2, C, y.shape[-1])
    assert ((c.gate >= 0) & (c.gate <= 1)).all()
    assert ((c.position >= 0) & (c.position < T)).all() and c.position.dtype == torch.long


@pytest.mark.parametrize("compress", OPTIONS)
def test_candidate_norm_bound(compress):
    m = module(compress)
    y, g = inputs(7, d=32)
    y = y * 100  # large features: the RMSNorm, not the input scale, sets the norm
    d_mem = m.norm.weight.shape[0]
    norms = m(y, g).values.norm(dim=-1)
    assert (norms <= d_mem**0.5 * m.norm.weight.abs().max() + 1e-9).all()


@pytest.mark.parametrize("compress", ["linear", "none"])
def test_tokenwise_keeps_gates_and_positions(compress):
    m = module(compress)
    y, g = inputs(5)
    c = m(y, g)
    assert torch.equal(c.gate, g) and c.position.tolist() == [list(range(5))] * 2
    assert torch.equal(c.feature, y)


@pytest.mark.parametrize("compress", ["avgpool", "maxpool"])
def test_pooled_gate_is_window_max(compress):
    m = module(compress)
    y, g = inputs(7)  # r = 3: windows [0, 3), [3, 6), [6, 7)
    c = m(y, g)
    want = torch.stack([g[:, 0:3].amax(1), g[:, 3:6].amax(1), g[:, 6:7].amax(1)], 1)
    assert torch.equal(c.gate, want)
    assert torch.equal(
        c.position,
        torch.stack([g[:, 0:3].argmax(1), 3 + g[:, 3:6].argmax(1), torch.full((2,), 6)], 1),
    )


def test_avgpool_is_gate_weighted_mean():
    m = module("avgpool")
    y, g = inputs(6)
    c = m(y, g)
    w = g[:, :3, None]
    assert_close("feature", (w * y[:, :3]).sum(1) / (w.sum(1) + 1e-6), c.feature[:, 0], atol=1e-12)


@pytest.mark.parametrize("compress", ["avgpool", "maxpool", "attnpool"])
def test_gate_zero_tokens_do_not_reach_pooled_candidates(compress):
    """Changing a token whose gate is 0 leaves every pooled candidate (nearly, for attnpool's
    log(g + 1e-6)) unchanged; changing a gated token does change one."""
    m = module(compress)
    y, g = inputs(6)
    g[:, 1] = 0.0
    base = m(y, g).values
    y2 = y.clone()
    y2[:, 1] = torch.randn_like(y2[:, 1]) * 3
    assert_close("candidates", base, m(y2, g).values, atol=1e-4 if compress == "attnpool" else 0.0)
    y3 = y.clone()
    y3[:, 2] += 3.0
    assert not torch.allclose(base, m(y3, g).values)


def test_attnpool_gate_is_attention_mean_of_gates():
    m = module("attnpool")
    y, g = inputs(6)
    g[0] = 0.0
    g[1] = 1.0
    c = m(y, g)
    assert (c.gate[0] < 1e-4).all()
    assert_close("all gates 1", torch.ones_like(c.gate[1]), c.gate[1], atol=1e-12)


def test_maxpool_a_gated_out_token_never_wins_a_negative_dimension():
    """The defect: max(g * y) let a gate-0 token (g * y = 0) beat selected tokens wherever their
    features are negative. The max now runs over selected tokens only."""
    m = module("maxpool")
    r = tiny_cfg().pool_window
    y = -torch.rand(1, r, 32, dtype=torch.float64) - 0.5  # every feature negative
    g = torch.zeros(1, r, dtype=torch.float64)
    g[0, 0] = 1.0  # only token 0 is selected
    c = m(y, g)
    assert_close("feature = the selected token's", y[:, 0], c.feature[:, 0], atol=0.0)
    y[:, 1:] = -100.0
    assert_close("unselected values do not matter", c.values, m(y, g).values, atol=0.0)


def test_maxpool_of_an_unselected_window_is_zero_and_not_written():
    m = module("maxpool")
    y, g = inputs(3)
    g.zero_()
    c = m(y, g)
    assert (c.feature == 0).all() and (c.gate == 0).all()
