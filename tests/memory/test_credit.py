"""Read credit: tokens whose slots the answers read more than other tokens did earn credit; the
loss pushes head B's scores toward that sign; the model adds it only when asked."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from selmem.memory.credit import answer_positions, credit_loss, read_credit
from tests.helpers import tiny_model, tokens


def seg(start, T, M, contrib=None, cand_pos=None, kept=None, read=None):
    """One segment's stats for one layer (B = 1)."""
    C = 0 if contrib is None else len(contrib)
    return {"start": torch.tensor([start]), "layers": [{
        "gate": torch.zeros(1, T),
        "contrib": torch.tensor([contrib]) if contrib is not None else torch.zeros(1, 0, M),
        "cand_pos": torch.tensor([cand_pos]) if cand_pos is not None else torch.zeros(1, C, dtype=torch.long),
        "kept": torch.tensor([kept]) if kept is not None else torch.ones(1, M),
        "read": torch.tensor([read]) if read is not None else None,
    }]}


def test_credit_goes_to_what_the_answers_read_more_than_the_rest():
    # segment 0 (positions 0-2): position 1 fills slot 0, position 2 fills slot 1
    s0 = seg(0, 3, 2, contrib=[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], cand_pos=[0, 1, 2],
             kept=[0.0, 0.0], read=[[0.5, 0.5]] * 3)
    # segment 1 (positions 3-4): the answer (3) reads slot 0, the other token reads slot 1
    s1 = seg(3, 2, 2, contrib=[[0.0, 0.0], [0.0, 0.0]], cand_pos=[3, 4], read=[[0.8, 0.0], [0.0, 0.8]])
    answers = torch.tensor([[False, False, False, True, False]])
    (credit,) = read_credit({"segments": [s0, s1]}, answers)
    assert credit[0].tolist() == pytest.approx([0.0, 0.8, -0.8, 0.0, 0.0])


def test_credit_follows_the_share_that_survived():
    # position 0 fills slot 0; segment 1 overwrites half of it; segment 2's answer reads slot 0
    s0 = seg(0, 1, 1, contrib=[[1.0]], cand_pos=[0], kept=[0.0], read=[[1.0]])
    s1 = seg(1, 1, 1, contrib=[[0.5]], cand_pos=[1], kept=[0.5], read=[[0.3]])
    s2 = seg(2, 2, 1, contrib=[[0.0], [0.0]], cand_pos=[2, 3], read=[[1.0], [0.0]])
    answers = torch.tensor([[False, False, True, False]])
    (credit,) = read_credit({"segments": [s0, s1, s2]}, answers)
    # segment 1 has no answer: no credit there; in segment 2 adv = 1.0 - 0.0 on slot 0
    assert credit[0].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])


def test_diffuse_reads_earn_nothing():
    s0 = seg(0, 1, 2, contrib=[[1.0, 0.0]], cand_pos=[0], kept=[0.0, 1.0], read=[[0.5, 0.5]])
    s1 = seg(1, 3, 2, contrib=[[0.0, 0.0]] * 3, cand_pos=[1, 2, 3], read=[[0.3, 0.2]] * 3)
    (credit,) = read_credit({"segments": [s0, s1]}, torch.tensor([[False, True, False, False]]))
    assert credit.abs().max() < 1e-7


def test_credit_loss_pushes_scores_toward_the_credit_sign():
    s = torch.zeros(1, 3, requires_grad=True)
    loss = credit_loss([s], [torch.tensor([[2.0, -1.0, 0.0]])], answers=1)
    loss.backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 1] and s.grad[0, 2] == 0  # descent raises 0, lowers 1
    assert credit_loss([s], [torch.zeros(1, 3)], answers=1) == 0


def test_model_adds_the_credit_loss_only_when_asked():
    torch.manual_seed(0)
    model = tiny_model(torch.float32, credit="read")
    x = tokens(2, 24)
    answers = torch.zeros(2, 24, dtype=torch.bool)
    answers[:, -3:] = True
    out = model.forward_sequence(x, 8, answer_mask=answers)
    assert "credit" in out.losses and out.losses["credit"] > 0
    plain = model.forward_sequence(x, 8)
    assert "credit" not in plain.losses
    assert torch.equal(out.logits, plain.logits), "the credit is a loss, never a change to the forward pass"
    out.losses["credit"].backward()
    head_b = sum(p.grad.abs().sum() for p in model.select.parameters() if p.grad is not None)
    assert head_b > 0
    # the credit is a target on the scores: it reaches head B and the features it scores, never
    # what lies after the scores (the output head, the reconstruction decoder)
    for name in ("head", "decoder"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name) and p.grad is not None]
        assert all(g.abs().sum() == 0 for g in grads), name
    with pytest.raises(ValueError, match="answer_mask has shape"):
        model.forward_sequence(x, 8, answer_mask=answers[:, :5])


def test_probe_looks_only_at_earlier_segments():
    from selmem.memory.credit import RetrievalProbe
    from tests.helpers import tiny_cfg

    probe = RetrievalProbe(tiny_cfg(vocab_size=10))
    answers = torch.zeros(2, 12, dtype=torch.bool)
    answers[0, [2, 9]] = answers[1, 5] = True
    logits, attn = probe(torch.randint(0, 10, (2, 12)), 4, answers)
    assert logits.shape == (3, 10) and attn.shape == (3, 12)
    # answer at position 2 (segment 0) has no past: all on the null entry; 9 sees 0-7, 5 sees 0-3
    assert (attn[0] == 0).all()
    assert (attn[1, 8:] == 0).all() and attn[1, :8].sum() > 0
    assert (attn[2, 4:] == 0).all() and attn[2, :4].sum() > 0
    assert (attn.sum(-1) <= 1 + 1e-6).all()


def test_probe_credit_trains_head_b_and_leaves_the_forward_pass_alone():
    torch.manual_seed(0)
    model = tiny_model(torch.float32, credit="probe")
    torch.manual_seed(0)
    plain = tiny_model(torch.float32)
    x = tokens(2, 24)
    answers = torch.zeros(2, 24, dtype=torch.bool)
    answers[:, -3:] = True
    targets = tokens(2, 24)
    out = model.forward_sequence(x, 8, answer_mask=answers, answer_targets=targets)
    assert torch.equal(out.logits, plain.forward_sequence(x, 8).logits), "same init, same forward"
    assert {"probe", "credit"} <= set(out.losses)
    out.losses["credit"].backward(retain_graph=True)
    assert sum(p.grad.abs().sum() for p in model.select.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in model.probe.parameters()), "head B's target is detached"
    out.losses["probe"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.probe.parameters())
    with pytest.raises(ValueError, match="answer_targets"):
        model.forward_sequence(x, 8, answer_mask=answers)


def test_answer_positions_with_a_count_are_nonzeros():
    """Given the count (the trainer's, from the host batch) the sync-free nonzero_static finds the
    same answers in the same order as nonzero."""
    mask = torch.rand(3, 11) < 0.3
    mask[1] = False  # a row without answers
    want = mask.nonzero(as_tuple=True)
    got = answer_positions(mask, int(mask.sum()))
    assert all(torch.equal(w, g) for w, g in zip(want, got, strict=True))


def test_credit_grad_head_keeps_the_teacher_out_of_the_trunk():
    """credit_grad='head': the credit loss trains head B's weights and sends nothing into the
    blocks; 'trunk' (the default) reaches them. The loss value is the same either way."""
    from selmem.config import SelmemConfig
    from selmem.model import SelectiveMemoryTransformer

    losses, grads = {}, {}
    for where in ("trunk", "head"):
        torch.manual_seed(0)
        cfg = SelmemConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=2, slots=4, d_mem=8,
                           max_segment_len=8, credit_grad=where)
        model = SelectiveMemoryTransformer(cfg)
        tokens = torch.randint(1, 20, (2, 16), generator=torch.Generator().manual_seed(1))
        answers = torch.zeros(2, 16, dtype=torch.bool)
        answers[:, -2:] = True
        out = model.forward_sequence(tokens, 8, answer_mask=answers, answer_targets=tokens)
        out.losses["credit"].backward()
        losses[where] = out.losses["credit"].item()
        grads[where] = (model.blocks[0].attn.qkv.weight.grad, model.select[0].score[0].weight.grad)
    assert losses["trunk"] == pytest.approx(losses["head"])
    assert grads["trunk"][0] is not None and grads["trunk"][0].abs().sum() > 0
    assert grads["head"][0] is None  # no path from the teacher into the blocks
    assert grads["head"][1].abs().sum() > 0  # head B still learns from it


@pytest.mark.parametrize("writes", ["batched", "per_layer"])
def test_gate_grad_teacher_keeps_the_task_out_of_head_b(writes):
    """gate_grad='teacher': the task's loss sends no gradient into head B's score (the write uses
    the gate's value), its teacher still does, and the task still trains the rest of the layer;
    with 'task' (the default) the task's loss reaches head B too."""
    import torch.nn.functional as F

    from selmem.config import SelmemConfig
    from selmem.model import SelectiveMemoryTransformer

    grads = {}
    for how in ("task", "teacher"):
        torch.manual_seed(0)
        cfg = SelmemConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=2, slots=4, d_mem=8,
                           max_segment_len=8, gate_grad=how, writes=writes)
        model = SelectiveMemoryTransformer(cfg)
        tokens = torch.randint(1, 20, (2, 24), generator=torch.Generator().manual_seed(1))
        answers = torch.zeros(2, 24, dtype=torch.bool)
        answers[:, -2:] = True
        out = model.forward_sequence(tokens, 8, answer_mask=answers, answer_targets=tokens)
        head, compress = model.select[0].score[0].weight, model.compress[0].proj.weight
        task = F.cross_entropy(out.logits[:, -4:].flatten(0, 1), tokens[:, -4:].flatten())
        grads[how] = torch.autograd.grad(task, [head, compress], allow_unused=True, retain_graph=True)
        grads[how + "/credit"] = torch.autograd.grad(out.losses["credit"], head)[0]
    assert grads["task"][0].abs().sum() > 0
    assert grads["teacher"][0] is None or grads["teacher"][0].abs().sum() == 0
    assert grads["teacher"][1].abs().sum() > 0  # what is written still learns from the task
    assert grads["teacher/credit"].abs().sum() > 0


def test_gate_grad_teacher_needs_a_teacher():
    from selmem.config import SelmemConfig

    with pytest.raises(ValueError, match="gate_grad='teacher'.*credit"):
        SelmemConfig(gate_grad="teacher", credit="none").validate()


def test_probe_target_sum_and_max_agree_where_each_token_serves_one_answer():
    """'sum' clamps the answers' summed attention at 1, 'max' takes the largest single answer's:
    equal when each token is retrieved by at most one answer (one answer per row here), apart
    where many answers share the tokens (every position an answer: language modelling)."""
    import torch.nn.functional as F

    from selmem.memory.credit import RetrievalProbe, probe_losses
    from tests.helpers import tiny_cfg

    torch.manual_seed(0)
    probe = RetrievalProbe(tiny_cfg(vocab_size=10))
    x = torch.randint(0, 10, (2, 12))
    scores = [torch.randn(2, 12)]  # at 0 the BCE is log 2 whatever the target
    one = torch.zeros(2, 12, dtype=torch.bool)
    one[:, -1] = True
    bce = {r: probe_losses(probe, x, scores, 4, one, x, reduce=r)[1] for r in ("sum", "max")}
    assert bce["sum"] == pytest.approx(bce["max"].item())
    every = torch.ones(2, 12, dtype=torch.bool)
    _, attn = probe(x, 4, every)
    want = attn.view(2, 12, 12).amax(1)  # (B, N): each token's largest attention from any answer
    summed = attn.view(2, 12, 12).sum(1).clamp(max=1)
    for reduce, target in (("max", want), ("sum", summed)):
        got = probe_losses(probe, x, scores, 4, every, x, reduce=reduce)[1]
        assert got == pytest.approx(F.binary_cross_entropy_with_logits(scores[0], target).item(), rel=1e-5)
    assert (summed >= want).all() and (summed > want + 0.1).any()
    # auto (the default): max where more than half of the positions are answers, else sum
    for mask, like in ((every, "max"), (one, "sum")):
        auto = probe_losses(probe, x, scores, 4, mask, x)[1]
        assert auto.item() == probe_losses(probe, x, scores, 4, mask, x, reduce=like)[1].item()
    assert probe_losses(probe, x, scores, 4, every, x)[1].item() != pytest.approx(
        probe_losses(probe, x, scores, 4, every, x, reduce="sum")[1].item())


def test_probe_target_peak_is_each_answers_attention_over_its_own_largest_entry():
    """'peak': an answer's attention divided by its largest entry, the null one included, then
    the largest over answers. A binding split over two tokens gets 1 on both (where 'sum' and
    'max' give each half); an answer whose mass sits on the null gives every token little."""
    import torch.nn.functional as F

    from selmem.memory import credit

    class Fixed(torch.nn.Module):  # a probe whose retrieval attention is given
        def __init__(self, attn):
            super().__init__()
            self.attn = attn

        def forward(self, tokens, segment_len, answers, count=None, with_null=False):
            return torch.zeros(self.attn.shape[0], 10), (self.attn if with_null else self.attn[:, 1:])

    N = 8
    split = torch.zeros(1 + N)
    split[[0, 2, 3]] = torch.tensor([0.1, 0.45, 0.45])  # null 0.1, tokens 1 and 2 (a key and its value)
    null = torch.zeros(1 + N)
    null[[0, 5]] = torch.tensor([0.9, 0.1])  # nothing in the past helps (0.1 on token 4)
    attn = torch.stack([split, null])  # (A=2, 1+N): the answers at positions 6 and 7 of row 0
    answers = torch.zeros(1, N, dtype=torch.bool)
    answers[0, 6:] = True
    tokens = torch.zeros(1, N, dtype=torch.long)
    scores = [torch.randn(1, N)]
    want = torch.zeros(1, N)
    want[0, 1] = want[0, 2] = 1.0
    want[0, 4] = 0.1 / 0.9
    got = credit.probe_losses(Fixed(attn), tokens, scores, 4, answers, tokens, reduce="peak")
    assert got[1].item() == pytest.approx(F.binary_cross_entropy_with_logits(scores[0], want).item(), rel=1e-6)
    assert torch.equal(got[2], attn[:, 1:])  # the read teacher still gets the plain attention
    summed = credit.probe_losses(Fixed(attn), tokens, scores, 4, answers, tokens, reduce="sum")[1]
    assert summed.item() != pytest.approx(got[1].item())


def test_read_teacher_pulls_the_read_toward_the_slot_holding_the_probes_target():
    """read_teacher_loss: one answer in segment 1 whose probe attention is all on position 1,
    which slot 2 holds: reading slot 2 costs less than reading slot 0, and an answer in
    segment 0 (nothing written yet) adds nothing."""
    from selmem.memory.credit import read_teacher_loss

    B, T, M, N = 1, 2, 4, 4
    contrib = torch.zeros(B, T, M)
    contrib[0, 1, 2] = 1.0  # position 1 wrote all of slot 2
    lay = dict(contrib=contrib, kept=torch.ones(B, M), cand_pos=torch.arange(T)[None])
    stats = {"segments": [{"layers": [lay]}, {"layers": [dict(lay, cand_pos=torch.arange(T, 2 * T)[None])]}]}
    attn = torch.zeros(2, N)
    attn[0, 1] = 1.0  # answer at position 3 retrieves position 1
    row, pos = torch.tensor([0, 0]), torch.tensor([3, 1])

    def loss(slot: int) -> float:
        read = torch.full((B, N, M + 1), 0.01)
        read[0, 3, slot] = 1.0
        return read_teacher_loss(stats, [read], attn, row, pos, T, M).item()

    assert loss(2) < loss(0)
    assert loss(2) == pytest.approx(-torch.tensor(1.0 / 1.03).log().item(), rel=1e-5)


def test_read_target_top1_is_the_slot_holding_most_of_what_the_probe_retrieves_alone():
    """read_target='top1': the probe retrieves positions 0 and 1 (0.3, 0.7), held by slots 1 and 2.
    'share' asks the read for 0.3 / 0.7 (a floor at their entropy); 'top1' for slot 2 alone, so a
    read all on slot 2 costs nearly nothing and one on slot 1 costs more than under 'share'."""
    from selmem.memory.credit import read_teacher_loss

    B, T, M, N = 1, 2, 4, 4
    contrib = torch.zeros(B, T, M)
    contrib[0, 0, 1] = contrib[0, 1, 2] = 1.0
    lay = dict(contrib=contrib, kept=torch.ones(B, M), cand_pos=torch.arange(T)[None])
    stats = {"segments": [{"layers": [lay]}, {"layers": [dict(lay, cand_pos=torch.arange(T, 2 * T)[None])]}]}
    attn = torch.zeros(1, N)
    attn[0, 0], attn[0, 1] = 0.3, 0.7
    row, pos = torch.tensor([0]), torch.tensor([3])

    def loss(slot: int, top1: bool) -> float:
        read = torch.full((B, N, M), 1e-6)
        read[0, 3, slot] = 1.0
        return read_teacher_loss(stats, [read], attn, row, pos, T, M, top1=top1).item()

    assert loss(2, True) < 1e-4 < 0.3 < loss(2, False)
    assert loss(1, True) > loss(1, False)


def test_read_mass_teaches_how_much_to_read_the_memory_not_only_which_slot():
    """read_mass: the slot target renormalises the read over the slots, so a read with 0.1 of its
    attention on the right slot costs as much as one with 0.9 there. With the mass term the
    stronger read costs less where the memory holds the fact (m = 1), and the weaker one where
    it holds none of it (m = 0: the slot that would hold it was never written)."""
    from selmem.memory.credit import read_teacher_loss

    B, T, M, N = 1, 2, 4, 4
    attn = torch.zeros(1, N)
    attn[0, 1] = 1.0  # the answer at position 3 retrieves position 1
    row, pos = torch.tensor([0]), torch.tensor([3])

    def loss(on_slot: float, held: float, mass_term: bool) -> float:
        contrib = torch.zeros(B, T, M)
        contrib[0, 1, 2] = held  # position 1's share of slot 2
        lay = dict(contrib=contrib, kept=torch.ones(B, M), cand_pos=torch.arange(T)[None])
        stats = {"segments": [{"layers": [lay]}, {"layers": [dict(lay, cand_pos=torch.arange(T, 2 * T)[None])]}]}
        read = torch.zeros(B, N, M + 1)
        read[0, 3, 2] = on_slot  # the rest of the read is on the segment's own tokens
        return read_teacher_loss(stats, [read], attn, row, pos, T, M, mass_term=mass_term).item()

    assert loss(0.1, 1.0, False) == pytest.approx(loss(0.9, 1.0, False), abs=1e-6)
    assert loss(0.9, 1.0, True) < loss(0.1, 1.0, True)
    assert loss(0.1, 0.0, True) < loss(0.9, 0.0, True)


def test_read_mass_without_the_read_teacher_is_refused():
    from selmem.config import SelmemConfig

    with pytest.raises(ValueError, match="read_mass is a term of the read teacher"):
        SelmemConfig(credit="probe", read_mass=True).validate()
    SelmemConfig(credit="probe", lambda_read=1.0, read_mass=True).validate()


def test_probe_window_wide_enough_is_the_full_retrieval_and_narrow_looks_only_back_that_far():
    """probe_window=W: with W >= the number of segments the windowed retrieval gives the full one's
    logits and attention (and gradients); with W = 1 an answer in segment s attends only to the
    null and segment s - 1, so its attention elsewhere is 0."""
    from selmem.config import SelmemConfig
    from selmem.memory.credit import RetrievalProbe

    torch.manual_seed(0)
    T, N = 4, 16
    cfg = SelmemConfig(vocab_size=11, d_model=16, n_heads=2, credit="probe")
    full = RetrievalProbe(cfg)
    wide = RetrievalProbe(replace(cfg, probe_window=N // T))
    wide.load_state_dict(full.state_dict())
    narrow = RetrievalProbe(replace(cfg, probe_window=1))
    narrow.load_state_dict(full.state_dict())
    tokens = torch.randint(0, 11, (2, N))
    answers = torch.rand(2, N) < 0.5
    answers[0, 1] = answers[1, 13] = True
    (lf, af), (lw, aw) = full(tokens, T, answers, with_null=True), wide(tokens, T, answers, with_null=True)
    assert torch.allclose(lf, lw, atol=1e-5) and torch.allclose(af, aw, atol=1e-6)
    gf = torch.autograd.grad(lf.square().sum(), full.q.weight)[0]
    gw = torch.autograd.grad(lw.square().sum(), wide.q.weight)[0]
    assert torch.allclose(gf, gw, atol=1e-4)
    an = narrow(tokens, T, answers, with_null=True)[1].detach()
    row, pos = answers.nonzero(as_tuple=True)
    for a, p in enumerate(pos.tolist()):
        s = p // T
        inside = torch.zeros(1 + N, dtype=torch.bool)
        inside[0] = True
        inside[1 + max(0, s - 1) * T : 1 + s * T] = True
        assert float(an[a][~inside].abs().sum()) == 0.0 and an[a].sum().item() == pytest.approx(1.0, abs=1e-5)
