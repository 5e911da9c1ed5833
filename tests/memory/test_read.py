"""The read's recency bias (read_recency='rank', memory/read.py)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selmem.config import SelmemConfig
from selmem.memory.read import Read, age_rank


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=12))
def test_age_rank_orders_the_slots_newest_first_shares_ties_and_stays_in_0_1(ages):
    age = torch.tensor([ages], dtype=torch.float64)
    r = age_rank(age)[0]
    assert bool(((r >= 0) & (r <= 1)).all())
    for i, a in enumerate(ages):
        for j, b in enumerate(ages):
            if a < b:
                assert r[i] < r[j]
            if a == b:
                assert r[i] == r[j]
    assert torch.isclose(r.mean(), torch.tensor(0.5, dtype=torch.float64))  # ranks are a permutation, ties averaged


def test_age_rank_does_not_grow_with_the_ages_scale():
    """The bias an old fact pays is the same at the trained length and a thousand times it."""
    age = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.equal(age_rank(age), age_rank(age * 1000))
    assert torch.equal(age_rank(torch.zeros(1, 5)), torch.full((1, 5), 0.5))


def test_of_two_slots_alike_the_newer_gets_the_larger_read_logit_and_hints_none():
    cfg = SelmemConfig(read_recency="rank").validate()
    read = Read(cfg)
    usage = torch.ones(1, 4)
    b = read.bias(usage, 2, torch.tensor([[3.0, 0.5, 2.0, 1.0]]))
    assert b.shape == (1, 6) and torch.equal(b[0, 4:], torch.zeros(2))
    assert b[0, 1] > b[0, 3] > b[0, 2] > b[0, 0]
    assert torch.equal(read.bias(usage, 0, torch.zeros(1, 4)), torch.full((1, 4), -0.5))  # fresh: no preference
    b.sum().backward()
    assert read.beta.grad is not None  # beta is learned


def test_without_the_option_there_is_no_bias_and_no_parameter():
    read = Read(SelmemConfig().validate())
    assert read.beta is None and read.bias(torch.ones(1, 4), 0, torch.zeros(1, 4)) is None
