"""Auxiliary losses on hand-built inputs."""

from __future__ import annotations

import math

import pytest
import torch

from selmem import losses
from tests.helpers import assert_close

t = torch.tensor


@pytest.mark.parametrize(
    "kind, rate, want",
    [
        # per layer: layer 0 mean 0.75, layer 1 mean 0.0
        pytest.param("target", 0.25, ((0.75 - 0.25) ** 2 + (0.0 - 0.25) ** 2) / 2, id="target"),
        # pooled over all 5 gates the mean is 0.6: a pooled target would be hit, per layer it is not
        pytest.param("target", 0.6, ((0.75 - 0.6) ** 2 + 0.6**2) / 2, id="target-per-layer"),
        pytest.param("l1", 0.25, 0.6, id="l1"),
    ],
)
def test_sparsity(kind, rate, want):
    gates = [
        t([[0.0, 1.0], [1.0, 1.0]]),
        t([[0.0]]),
    ]  # per-layer (B, T); 3 ones in 5 gates: mean 0.6
    assert math.isclose(float(losses.sparsity(gates, kind, rate)), want, abs_tol=1e-7)


def test_sparsity_target_is_zero_when_every_layer_hits_it():
    gates = [t([[0.0, 1.0], [1.0, 0.0]]), t([[0.5, 0.5]])]
    assert float(losses.sparsity(gates, "target", 0.5)) == 0.0


def test_reconstruction_zero_when_decoded_is_feature():
    f = torch.randn(2, 3, 8)
    assert float(losses.reconstruction(f.clone(), f, torch.rand(2, 3))) == 0.0


def test_reconstruction_is_gate_weighted_mse():
    dec, f = torch.zeros(1, 2, 4), t([[[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]])
    g = t([[1.0, 0.0]])
    assert float(losses.reconstruction(dec, f, g)) == 1.0  # the gate-0 candidate does not count
    g = t([[1.0, 1.0]])
    assert float(losses.reconstruction(dec, f, g)) == 2.5
    assert float(losses.reconstruction(dec, f, torch.zeros(1, 2))) == 0.0  # nothing written: finite


def test_reconstruction_does_not_move_the_feature():
    dec, f = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 3, 4, requires_grad=True)
    losses.reconstruction(dec, f, torch.rand(2, 3)).backward()
    assert f.grad is None and dec.grad.abs().sum() > 0


def test_reconstruction_does_not_train_the_gate():
    # a gate trained by this loss would learn to write what is easy to reconstruct (on recall: the
    # noise), so the loss weighs by the gate without moving it
    dec, f = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 3, 4)
    g = torch.rand(2, 3, requires_grad=True)
    losses.reconstruction(dec, f, g).backward()
    assert g.grad is None and dec.grad.abs().sum() > 0


def test_score_bound_is_zero_inside_the_margin_and_quadratic_outside():
    inside = [t([[3.9, -3.9, 0.0]])]
    assert float(losses.score_bound(inside, 4.0)) == 0.0
    scores = [t([[6.0, -4.0]]), t([[-9.0, 1.0]])]  # excess 2 and 0; 5 and 0
    assert math.isclose(float(losses.score_bound(scores, 4.0)), ((4 + 0) / 2 + (25 + 0) / 2) / 2)


def test_score_bound_moves_a_saturated_score_back():
    # at s = -20 the sigmoid passes ~2e-9 of any gradient; the bound passes 2 * (20 - 4) / 2 per token
    s = t([[-20.0, 0.0]], requires_grad=True)
    losses.score_bound([s], 4.0).backward()
    assert torch.sigmoid(t(-20.0)) < 1e-8
    assert s.grad[0, 0] == -16.0 and s.grad[0, 1] == 0.0  # descent raises the closed gate's score


def test_infonce_prefers_aligned_pairs():
    mem = torch.randn(8, 16)
    aligned = losses.infonce(mem, mem + 0.1 * torch.randn(8, 16), 0.1)
    shuffled = losses.infonce(mem, mem[torch.roll(torch.arange(8), 1)], 0.1)
    assert aligned < shuffled
    assert aligned < math.log(8) < shuffled


def test_infonce_uninformative_is_log_batch():
    future = torch.ones(5, 4)  # every sequence's future looks the same: chance level
    assert_close("loss", t(math.log(5)), losses.infonce(torch.randn(5, 4), future, 0.1), atol=1e-5)


def test_infonce_zero_for_batch_of_one():
    mem = torch.randn(1, 4, requires_grad=True)
    loss = losses.infonce(mem, torch.randn(1, 4), 0.1)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(mem.grad, torch.zeros_like(mem))


def test_sparsity_budget_is_a_ceiling_per_layer():
    low, high = torch.full((2, 8), 0.1), torch.full((2, 8), 0.5)
    assert losses.sparsity([low, low], "budget", 0.25) == 0  # writing less than the budget is free
    assert losses.sparsity([low, high], "budget", 0.25).item() == pytest.approx(0.25**2 / 2)
    assert losses.sparsity([low, low], "target", 0.25) > 0  # the target would push both up
