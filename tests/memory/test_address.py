"""Write addressing: rows are distributions; fifo is a ring buffer starting at the oldest slot;
allocation sends the n-th write to the n-th freest slot; random depends on position only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selmem.memory.address import Address, freeness_ranks, gate_mass_before, rank_weights
from selmem.memory.update import update
from tests.helpers import assert_close, tiny_cfg

M, D = 4, 16  # tiny_cfg: slots 4, d_mem 16
dt = torch.float64


def addr(option: str, layer_idx: int = 0, **kw) -> Address:
    return Address(tiny_cfg(address=option, **kw), layer_idx).double()


def memory(B: int = 2) -> dict[str, torch.Tensor]:
    return dict(
        slots=torch.randn(B, M, D, dtype=dt),
        usage=torch.rand(B, M, dtype=dt),
        age=torch.rand(B, M, dtype=dt) * 3,
    )


@pytest.mark.parametrize("option", ["attention", "fifo", "random"])
def test_rows_are_distributions(option):
    C = 7
    w = addr(option)(
        torch.randn(2, C, D, dtype=dt),
        torch.rand(2, C, dtype=dt),
        **memory(),
        pos=torch.arange(C).expand(2, C),
    )
    assert w.shape == (2, C, M) and (w >= 0).all()
    assert_close("row sums", torch.ones(2, C, dtype=dt), w.sum(-1), atol=1e-12)


def test_gate_mass_before():
    g = torch.tensor([[1.0, 0.0, 0.5, 1.0]])
    assert gate_mass_before(g).tolist() == [[0.0, 1.0, 1.0, 1.5]]


def test_fifo_writes_consecutive_gated_candidates_from_the_oldest_slot():
    age = torch.tensor([[0.0, 3.0, 1.0, 2.0]], dtype=dt)  # slot 1 is the oldest: the ring's head
    gate = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]], dtype=dt)
    w = addr("fifo")(
        torch.randn(1, 7, D, dtype=dt),
        gate,
        torch.randn(1, M, D, dtype=dt),
        torch.zeros(1, M, dtype=dt),
        age,
        torch.arange(7)[None],
    )
    written = w.argmax(-1)[gate.bool()]
    assert written.tolist() == [1, 2, 3, 0, 1]  # wraps around the ring
    assert ((w == 0) | (w == 1)).all()


def test_fifo_ring_keeps_values_until_overwritten():
    """(e) One hard write per segment with fifo + update: a value written at segment 0 is still
    in memory, exactly, after M - 1 more segments, and gone after M."""
    a_fifo = addr("fifo")
    slots, usage, age = (
        torch.zeros(1, M, D, dtype=dt),
        torch.zeros(1, M, dtype=dt),
        torch.zeros(1, M, dtype=dt),
    )
    prov = torch.full((1, M), -1)
    values = torch.randn(M + 1, 1, 1, D, dtype=dt)
    history = []
    for seg in range(M + 1):
        gate = torch.ones(1, 1, dtype=dt)
        w = a_fifo(values[seg], gate, slots, usage, age, torch.tensor([[seg]]))
        history.append(int(w.argmax()))
        out = update(
            slots,
            usage,
            age,
            prov,
            values[seg],
            gate[..., None] * w,
            torch.tensor([[seg]]),
            torch.zeros(1, M, dtype=dt),
            0.9,
        )
        slots, usage, age, prov = out.slots, out.usage, out.age, out.provenance
        if seg < M:
            assert any(torch.equal(slots[0, j], values[0, 0, 0]) for j in range(M)), (
                f"lost at segment {seg}"
            )
    assert history == [0, 1, 2, 3, 0]
    assert not any(torch.equal(slots[0, j], values[0, 0, 0]) for j in range(M))
    assert prov[0].tolist() == [4, 1, 2, 3]


def test_freeness_ranks():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.2, 0.2, 0.2, 0.0]])
    age = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 5.0, 0.0, 0.0]])
    assert freeness_ranks(usage, age).tolist() == [[2, 0, 3, 1], [2, 1, 3, 0]]  # ties: older first


def test_empty_memory_ranks_and_weights_are_finite():
    """(d) All-zero usage and age: a permutation (by index), finite normalised weights."""
    ranks = freeness_ranks(torch.zeros(3, M), torch.zeros(3, M))
    assert ranks.tolist() == [list(range(M))] * 3
    w = rank_weights(ranks, torch.tensor([[0.0, 0.5, 3.7]] * 3), 0.1)
    assert torch.isfinite(w).all()
    assert_close("rows", torch.ones(3, 3), w.sum(-1), atol=1e-6)


def test_allocation_sends_nth_write_to_nth_freest_slot():
    """With the content/allocation mix forced to allocation and a cold temperature, the n-th
    hard-gated candidate lands on the slot of freeness rank n (mod M)."""
    a = addr("attention", alloc_temperature=1e-3)
    with torch.no_grad():
        a.mix.weight.zero_()
        a.mix.bias.fill_(-1e4)  # beta = sigmoid(-1e4) = 0: pure allocation
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.3]], dtype=dt)  # freest first: slots 1, 3, 0, 2
    gate = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]], dtype=dt)
    w = a(
        torch.randn(1, 7, D, dtype=dt),
        gate,
        torch.randn(1, M, D, dtype=dt),
        usage,
        torch.zeros(1, M, dtype=dt),
        torch.arange(7)[None],
    )
    written = w[gate.bool()]
    assert written.argmax(-1).tolist() == [1, 3, 0, 2, 1]
    assert (written.amax(-1) > 0.999).all()


def test_content_addressing_ignores_usage_and_allocation_ignores_content():
    a = addr("attention")
    cand, gate, mem = torch.randn(2, 5, D, dtype=dt), torch.rand(2, 5, dtype=dt), memory()
    pos = torch.arange(5).expand(2, 5)
    with torch.no_grad():
        a.mix.weight.zero_()
        a.mix.bias.fill_(1e4)  # beta = 1: pure content
    w1 = a(cand, gate, **mem, pos=pos)
    w2 = a(cand, gate, mem["slots"], torch.rand(2, M, dtype=dt), mem["age"] * 7, pos)
    assert_close("content weights", w1, w2, atol=0)
    with torch.no_grad():
        a.mix.bias.fill_(-1e4)  # beta = 0: pure allocation
    w3 = a(cand, gate, **mem, pos=pos)
    w4 = a(
        torch.randn_like(cand), gate, torch.randn_like(mem["slots"]), mem["usage"], mem["age"], pos
    )
    assert_close("allocation weights", w3, w4, atol=0)


def test_random_is_a_function_of_position_and_layer():
    pos = torch.arange(64).view(2, 32) + 1000
    a0, a1 = addr("random", 0), addr("random", 1)

    def args():  # fresh candidates, gates and memory every call
        return torch.randn(2, 32, D, dtype=dt), torch.rand(2, 32, dtype=dt), *memory().values()

    w = a0(*args(), pos)
    assert torch.equal(w, a0(*args(), pos))  # other candidates, gates, memory: same slots
    assert ((w == 0) | (w == 1)).all()
    cand, gate = (t[:, 1:] for t in args()[:2])
    assert torch.equal(
        a0(cand, gate, *memory().values(), pos[:, 1:]), w[:, 1:]
    )  # not the index in the segment
    assert (w.sum((0, 1)) > 0).all(), "some slot is never addressed"
    assert not torch.equal(w, a1(*args(), pos)), "layers share one random map"
    assert torch.equal(w[0, 3], F.one_hot(w[0, 3].argmax(), M).to(dt))


# --- sharp writes and age (issue: writes smear, age barely counts) ---------------------------
def test_age_counts_in_eviction_against_small_usage_gaps():
    """The defect: age was a tie-breaker below 1e-3, so with usage gaps of 1e-3 ages 0 and 100
    left the ranking unchanged. With age_weight > 0 the stale slot is evicted first."""
    usage = torch.tensor([[0.500, 0.501]], dtype=dt)
    age = torch.tensor([[0.0, 100.0]], dtype=dt)
    assert freeness_ranks(usage, age, age_weight=0.0).tolist() == [[0, 1]]  # usage alone decides
    assert freeness_ranks(usage, age, age_weight=0.05).tolist() == [[1, 0]]  # the old slot goes first
    # a large usage gap still wins over a small age gap
    usage = torch.tensor([[0.1, 1.0]], dtype=dt)
    assert freeness_ranks(usage, torch.tensor([[0.0, 2.0]], dtype=dt), age_weight=0.05).tolist() == [[0, 1]]


def test_empty_memory_ranks_oldest_first_then_by_index():
    assert freeness_ranks(torch.zeros(1, 3), torch.tensor([[0.0, 5.0, 0.0]]), 0.1).tolist() == [[1, 0, 2]]


def test_sparsemax_is_a_sparse_distribution():
    from selmem.memory.address import sparsemax

    z = torch.tensor([[2.0, 1.9, -1.0, -3.0], [0.0, 0.0, 0.0, 0.0]], dtype=dt)
    p = sparsemax(z)
    assert_close("rows sum to 1", torch.ones(2, dtype=dt), p.sum(-1), atol=1e-12)
    assert (p >= 0).all() and p[0, 2:].eq(0).all() and p[0, 0] > p[0, 1] > 0
    assert_close("uniform stays uniform", torch.full((4,), 0.25, dtype=dt), p[1], atol=1e-12)
    # against the closed form on the support {0, 1}: p_i = z_i - (z_0 + z_1 - 1) / 2
    assert_close("closed form", torch.tensor([0.55, 0.45], dtype=dt), p[0, :2], atol=1e-12)


@pytest.mark.parametrize("weights", ["softmax", "sparsemax", "top1"])
def test_write_weights_are_distributions(weights):
    C = 9
    w = addr("attention", address_weights=weights)(torch.randn(2, C, D, dtype=dt), torch.rand(2, C, dtype=dt),
                                                   **memory(), pos=torch.arange(C).expand(2, C))
    assert (w >= 0).all()
    assert_close("row sums", torch.ones(2, C, dtype=dt), w.sum(-1), atol=1e-12)
    if weights == "top1":
        assert ((w == 0) | (w == 1)).all(), "top1 writes exactly one slot"


def test_top1_writes_leave_unchosen_slots_intact_and_pass_gradient():
    """The defect: near-uniform content weights erase a little of every slot at every write, so
    after a 16-token segment only about half of each slot survived. With top1 a slot that no
    candidate chose keeps all of its content (kept == 1), and the gate still gets a gradient."""
    a = addr("attention", address_weights="top1")
    mem = memory(1)
    C = 16
    cand = torch.randn(1, C, D, dtype=dt, requires_grad=True)
    gate = torch.full((1, C), 0.5, dtype=dt, requires_grad=True)
    w = a(cand, gate, **mem, pos=torch.arange(C)[None])
    out = update(mem["slots"], mem["usage"], mem["age"], torch.full((1, M), -1), cand, gate[..., None] * w,
                 torch.arange(C)[None], torch.zeros(1, M, dtype=dt), 0.9)
    chosen = w.sum(1) > 0  # (1, M)
    assert (out.kept[~chosen] == 1).all()
    assert (out.kept[chosen] <= 0.5 + 1e-12).all()
    out.slots.sum().backward()
    assert gate.grad.abs().sum() > 0 and a.q.weight.grad.abs().sum() > 0, "straight-through reaches the scores"


@pytest.mark.parametrize("weights, protected", [("softmax", False), ("top1", True)])
def test_top1_protects_the_most_used_slot_from_a_segment_of_writes(weights, protected):
    """Fresh addressing, 8 slots, slot 0 holds strongly selected content (high usage), and a
    segment writes 6 candidates at gate 0.5. Dense weights erase a share of slot 0 anyway (the
    smear: the issue measured 0.54 surviving a 16-token segment); top1 sends every write to a
    free slot, so slot 0 survives whole and retention counts only the slots that were chosen."""
    torch.manual_seed(0)
    a = Address(tiny_cfg(slots=8, address_weights=weights)).double()
    slots, C = torch.randn(1, 8, D, dtype=dt), 6
    usage = torch.zeros(1, 8, dtype=dt)
    usage[0, 0] = 1.0
    age = torch.ones(1, 8, dtype=dt)
    cand, gate = torch.randn(1, C, D, dtype=dt), torch.full((1, C), 0.5, dtype=dt)
    w = a(cand, gate, slots, usage, age, torch.arange(C)[None])
    out = update(slots, usage, age, torch.full((1, 8), -1), cand, gate[..., None] * w, torch.arange(C)[None],
                 torch.zeros(1, 8, dtype=dt), 0.9)
    assert (out.kept[0, 0] == 1.0) == protected, out.kept
    if not protected:
        assert out.kept[0, 0] < 0.95


def test_allocate_sends_distinct_new_facts_to_distinct_free_slots_and_updates_by_content():
    """write_new='allocate': on an empty memory every selected candidate takes a slot of its own
    (with the learned mix, similar candidates all went to the slot they matched best); a
    candidate that matches a written slot goes there when its content logit beats "new"."""
    a = Address(tiny_cfg(address="attention", address_weights="top1", write_new="allocate"), 0).double()
    B, C = 2, 3
    cand = F.normalize(torch.randn(B, C, D, dtype=dt), dim=-1) * D**0.5
    gate = torch.ones(B, C, dtype=dt)
    empty = dict(slots=torch.randn(B, M, D, dtype=dt), usage=torch.zeros(B, M, dtype=dt),
                 age=torch.zeros(B, M, dtype=dt))
    w = a(cand, gate, **empty, pos=torch.arange(C).expand(B, C))
    assert all(len(set(r.tolist())) == C for r in w.argmax(-1)), "distinct new facts, distinct slots"
    with torch.no_grad():  # make candidate 0 match slot 2's content strongly, and "new" unlikely
        a.q.weight.copy_(torch.eye(D, dtype=dt)), a.k.weight.copy_(torch.eye(D, dtype=dt))
        a.sharpness.fill_(2.0), a.mix.bias.fill_(-5.0)
    full = dict(slots=torch.randn(B, M, D, dtype=dt), usage=torch.ones(B, M, dtype=dt),
                age=torch.zeros(B, M, dtype=dt))
    full["slots"][:, 2] = cand[:, 0]
    w = a(cand, gate, **full, pos=torch.arange(C).expand(B, C))
    assert (w[:, 0].argmax(-1) == 2).all(), "an update goes to the slot that holds its fact"


def test_allocate_content_logits_are_bounded_so_a_fresh_memory_always_takes_new_slots():
    """write_new='allocate' with the content weights grown 100-fold and the strength at its
    largest (what one seed's training reached with a dot-product match: logits of 26 on a fresh
    memory, all of a segment's facts in 1-2 slots): a slot never written is never a content
    target, however well it matches, so distinct new facts still take distinct slots."""
    torch.manual_seed(0)
    a = Address(tiny_cfg(address="attention", address_weights="top1", write_new="allocate"), 0).double()
    with torch.no_grad():
        a.q.weight.mul_(100), a.k.weight.mul_(100), a.sharpness.fill_(20.0)
    B, C = 2, 3
    cand = torch.randn(B, C, D, dtype=dt)
    gate = torch.ones(B, C, dtype=dt)
    slots = cand[:, :1].expand(B, M, D).clone()  # every slot matches candidate 0 perfectly
    w = a(cand, gate, slots, torch.zeros(B, M, dtype=dt), torch.zeros(B, M, dtype=dt), torch.arange(C).expand(B, C))
    assert all(len(set(r.tolist())) == C for r in w.argmax(-1)), w.argmax(-1)
