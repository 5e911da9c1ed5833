"""Head B: every option's gate lies in [0, 1]; hard options are exactly 0/1 forward and pass the
sigmoid's gradient straight through to the score."""

from __future__ import annotations

import pytest
import torch

from selmem.memory.select import Select
from tests.helpers import assert_close, tiny_cfg

OPTIONS = ["soft", "hard", "topk", "threshold", "all"]
HARD = ["hard", "topk", "threshold"]


def head(select: str, **kw) -> Select:
    return Select(tiny_cfg(select=select, **kw)).double()


def features(B: int = 3, T: int = 7) -> torch.Tensor:
    return torch.randn(B, T, 32, dtype=torch.float64)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("select", OPTIONS)
def test_gate_in_unit_interval(select, train):
    h = head(select).train(train)
    g, s = h(features())
    assert g.shape == s.shape == (3, 7)
    assert ((g >= 0) & (g <= 1)).all()


@pytest.mark.parametrize("select", HARD)
def test_hard_gates_are_binary_with_straight_through_gradient(select):
    h = head(select).train()
    g, _ = h(features())
    assert ((g == 0) | (g == 1)).all()
    (g * torch.randn_like(g)).sum().backward()
    for name, p in h.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, (
            f"no straight-through gradient to {name}"
        )


def test_soft_is_sigmoid_of_score():
    g, s = head("soft")(features())
    assert_close("gate", torch.sigmoid(s), g, atol=0)


def test_all_is_ones_and_has_no_parameters():
    h = head("all")
    g, s = h(features())
    assert torch.equal(g, torch.ones_like(g)) and torch.equal(s, torch.zeros_like(s))
    assert not list(h.parameters())


@pytest.mark.parametrize("T, k", [(7, 3), (3, 3), (2, 3)], ids=["T7-k3", "T3-k3", "T2-k3"])
def test_topk_selects_the_k_highest_per_row(T, k):
    h = head("topk", topk=k)
    g, s = h(features(T=T))
    assert (g.sum(1) == min(k, T)).all()
    chosen_min = s.masked_fill(g == 0, float("inf")).amin(1)
    rejected_max = s.masked_fill(g == 1, float("-inf")).amax(1)
    assert (chosen_min > rejected_max).all()


def test_threshold_gates_scores_above_tau():
    h = head("threshold")
    with torch.no_grad():
        h.threshold.fill_(0.3)
    g, s = h(features())
    assert torch.equal(g, (s > 0.3).double())


def test_hard_eval_is_deterministic_sign_of_score():
    h = head("hard").eval()
    y = features()
    (g1, s), (g2, _) = h(y), h(y)
    assert torch.equal(g1, g2) and torch.equal(g1, (s > 0).double())


def test_hard_train_samples_at_rate_sigmoid_of_score():
    """Gumbel-sigmoid with logistic noise: P(g = 1) = sigmoid(s)."""
    h = head("hard").train()
    y = features(B=1).expand(4000, 7, 32)
    g, s = h(y)
    assert_close("P(g=1)", torch.sigmoid(s[0]), g.mean(0), atol=0.05)
    assert 0 < g.mean() < 1


@pytest.mark.parametrize("compress", ["linear", "avgpool", "maxpool", "attnpool"])
def test_topk_budget_bounds_the_write_mass_whatever_the_compressor(compress):
    """The defect: select='topk' budgeted tokens, but attnpool spread k selected tokens over all
    its queries (k = 2 wrote a mass of 8 per segment). The budget now holds on the candidates."""
    from selmem.model import SelectiveMemoryTransformer
    from tests.helpers import tiny_cfg

    k = 2
    model = SelectiveMemoryTransformer(tiny_cfg(select="topk", topk=k, compress=compress, attnpool_queries=8))
    out = model(torch.randint(0, 16, (3, 24)))
    for layer in out.stats["layers"]:
        assert (layer["cand_gate"].sum(1) <= k + 1e-6).all()
        assert (layer["write"].sum((1, 2)) <= k + 1e-6).all()


def test_budget_keeps_the_k_largest_and_passes_their_gradient():
    from selmem.memory.select import budget

    g = torch.tensor([[0.25, 0.75, 0.5, 0.625]], requires_grad=True)
    out = budget(g, 2)
    assert out.tolist() == [[0.0, 0.75, 0.0, 0.625]]
    out.sum().backward()
    assert g.grad.tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert budget(g, 4) is g  # a budget at least the candidate count changes nothing
