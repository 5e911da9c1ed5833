"""update.py's vectorised write against reference.py's loops, and the invariants of (1)."""

from __future__ import annotations

import pytest
import torch

from selmem.memory.reference import update_reference
from selmem.memory.update import update
from tests.helpers import assert_close

B, C, M, D = 2, 6, 4, 3


def make_inputs(kind: str, decay: bool) -> dict[str, torch.Tensor | float | None]:
    """Random float64 write inputs; ``kind`` shapes the write strengths a (B, C, M)."""
    dt = torch.float64
    if kind == "soft":
        a = torch.rand(B, C, 1, dtype=dt) * torch.randn(B, C, M, dtype=dt).softmax(-1)
    elif kind == "hard":  # one-hot addresses, gates exactly 0 or 1, repeated slots in a segment
        slot = torch.tensor([[0, 1, 0, 2, 0, 3], [3, 3, 1, 1, 2, 0]])
        gate = torch.tensor([[1, 1, 1, 0, 1, 1], [1, 0, 1, 1, 0, 1]], dtype=dt)
        a = gate[..., None] * torch.nn.functional.one_hot(slot, M).to(dt)
    else:  # mixed: hard writes interleaved with soft ones
        a = torch.rand(B, C, 1, dtype=dt) * torch.randn(B, C, M, dtype=dt).softmax(-1)
        a[:, 1] = 0.0
        a[0, 1, 2] = 1.0
        a[1, 3] = 0.0
        a[1, 3, 0] = 1.0
        a[0, 4] = 0.0  # a gate-0 candidate
    return dict(
        slots=torch.randn(B, M, D, dtype=dt),
        usage=torch.rand(B, M, dtype=dt),
        age=torch.rand(B, M, dtype=dt) * 5,
        provenance=torch.randint(-1, 50, (B, M)),
        cand=torch.randn(B, C, D, dtype=dt),
        a=a,
        cand_pos=torch.arange(C).expand(B, C) + 100,
        read_mass=torch.rand(B, M, dtype=dt),
        usage_decay=0.9,
        slot_decay=torch.rand(M, dtype=dt) * 0.5 + 0.4 if decay else None,
        gate=torch.rand(B, C, dtype=dt),
    )


DIFFERENTIABLE = ["slots", "usage", "age", "cand", "a", "slot_decay", "gate"]
CASES = [
    pytest.param(k, d, id=f"{k}{'-decay' if d else ''}")
    for k in ("soft", "hard", "mixed")
    for d in (False, True)
]


def outputs_and_grads(fn, inputs, weights):
    inputs = {
        k: (v.clone().requires_grad_(True) if k in DIFFERENTIABLE and v is not None else v)
        for k, v in inputs.items()
    }
    out = fn(**inputs)
    loss = sum((getattr(out, k) * w).sum() for k, w in weights.items())
    wrt = [k for k in DIFFERENTIABLE if inputs[k] is not None]
    g = torch.autograd.grad(loss, [inputs[k] for k in wrt])
    return out, dict(zip(wrt, g, strict=True))


@pytest.mark.parametrize("kind, decay", CASES)
def test_fast_path_matches_reference(kind, decay):
    inputs = make_inputs(kind, decay)
    dt = torch.float64
    weights = {
        "slots": torch.randn(B, M, D, dtype=dt),
        "usage": torch.randn(B, M, dtype=dt),
        "age": torch.randn(B, M, dtype=dt),
        "kept": torch.randn(B, M, dtype=dt),
        "contrib": torch.randn(B, C, M, dtype=dt),
    }
    ref, ref_g = outputs_and_grads(update_reference, inputs, weights)
    out, out_g = outputs_and_grads(update, inputs, weights)
    for name in ("slots", "usage", "age", "kept", "contrib"):
        assert_close(name, getattr(ref, name), getattr(out, name), atol=1e-12)
    assert torch.equal(ref.provenance, out.provenance), (
        f"provenance {out.provenance} != {ref.provenance}"
    )
    for name in ref_g:
        assert_close(f"d/d{name}", ref_g[name], out_g[name], atol=1e-12)


def test_hard_writes_place_candidates_exactly():
    """A gate-1 one-hot write replaces the slot by the candidate; the last write to a slot wins."""
    x = make_inputs("hard", decay=False)
    out = update(**x)
    assert torch.equal(
        out.slots[0, 0], x["cand"][0, 5 - 1]
    )  # slot 0 last written by t=4 (t=5 goes to 3)
    assert torch.equal(out.slots[0, 1], x["cand"][0, 1])
    assert torch.equal(out.slots[0, 2], x["slots"][0, 2])  # its only write had gate 0
    assert out.provenance[0].tolist() == [104, 101, int(x["provenance"][0, 2]), 105]
    assert out.age[0].tolist() == [0.0, 0.0, float(x["age"][0, 2]) + 1, 0.0]


@pytest.mark.parametrize("kind", ["soft", "hard", "mixed"])
def test_convex_mix_invariants(kind):
    """Shares of old content and candidates partition each slot (sum to 1, all >= 0), so a slot's
    norm never exceeds the largest norm it mixes."""
    x = make_inputs(kind, decay=False)
    out = update(**x)
    total = out.kept + out.contrib.sum(1)
    assert_close("kept + sum_t contrib", torch.ones_like(total), total, atol=1e-12)
    assert (out.kept >= 0).all() and (out.contrib >= 0).all()
    bound = torch.maximum(x["slots"].norm(dim=-1), x["cand"].norm(dim=-1).amax(1, keepdim=True))
    assert (out.slots.norm(dim=-1) <= bound + 1e-12).all()


def test_zero_writes_change_only_bookkeeping():
    x = make_inputs("soft", decay=False)
    x["a"] = torch.zeros_like(x["a"])
    out = update(**x)
    assert torch.equal(out.slots, x["slots"]) and torch.equal(out.provenance, x["provenance"])
    assert_close("age", x["age"] + 1, out.age, atol=1e-12)
    assert_close("usage", 0.9 * x["usage"] + x["read_mass"], out.usage, atol=1e-12)


def test_repeated_empty_segments_keep_a_written_value():
    """(e) a value written with a_tj = 1 survives any number of zero-gate segments unchanged."""
    x = make_inputs("hard", decay=False)
    written = update(**x)
    state = written
    for _ in range(100):
        state = update(
            state.slots,
            state.usage,
            state.age,
            state.provenance,
            x["cand"],
            torch.zeros_like(x["a"]),
            x["cand_pos"],
            torch.zeros(B, M, dtype=torch.float64),
            0.9,
        )
    assert torch.equal(state.slots, written.slots)
    assert torch.equal(state.provenance, written.provenance)
    assert_close(
        "usage decays by gamma per segment", 0.9**100 * written.usage, state.usage, atol=1e-12
    )
    assert_close("age counts segments", written.age + 100, state.age, atol=1e-9)


def test_gradcheck_soft():
    x = make_inputs("soft", decay=True)
    names = ["slots", "cand", "a", "slot_decay"]

    def f(slots, cand, a, slot_decay):
        out = update(**{**x, "slots": slots, "cand": cand, "a": a, "slot_decay": slot_decay})
        return out.slots, out.usage, out.age

    assert torch.autograd.gradcheck(f, tuple(x[n].clone().requires_grad_(True) for n in names))


def test_usage_protects_strongly_selected_content_over_more_weakly_written_mass():
    """Slot 0 gets one write with gate 0.9; slot 1 gets four writes with gate 0.3 (more mass).
    Usage ranks slot 0 above slot 1, so allocation evicts the weakly selected slot first."""
    dt = torch.float64
    a = torch.zeros(1, 5, 2, dtype=dt)
    gate = torch.tensor([[0.9, 0.3, 0.3, 0.3, 0.3]], dtype=dt)
    a[0, 0, 0] = 0.9
    a[0, 1:, 1] = 0.3
    out = update(slots=torch.zeros(1, 2, 3, dtype=dt), usage=torch.zeros(1, 2, dtype=dt),
                 age=torch.zeros(1, 2, dtype=dt), provenance=torch.full((1, 2), -1),
                 cand=torch.randn(1, 5, 3, dtype=dt), a=a, cand_pos=torch.arange(5)[None],
                 read_mass=torch.zeros(1, 2, dtype=dt), usage_decay=0.9, gate=gate)
    assert a[0, :, 1].sum() > a[0, :, 0].sum()  # slot 1 received more mass
    assert out.usage[0, 0] > out.usage[0, 1]
    # fully overwriting a slot removes its old usage with its content
    again = update(slots=out.slots, usage=out.usage, age=out.age, provenance=out.provenance,
                   cand=torch.randn(1, 1, 3, dtype=dt), a=torch.tensor([[[1.0, 0.0]]], dtype=dt),
                   cand_pos=torch.tensor([[9]]), read_mass=torch.zeros(1, 2, dtype=dt), usage_decay=0.9,
                   gate=torch.tensor([[0.2]], dtype=dt))
    assert_close("usage of the overwritten slot", torch.tensor(0.2, dtype=dt), again.usage[0, 0], atol=1e-12)
