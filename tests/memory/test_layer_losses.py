"""MemoryStack.losses, the auxiliary losses and head B's teacher for a memory hosted in another
model (issue 27, item 2): with the built-in model's parameters they are the model's own losses,
and they train head B and the probe."""

from __future__ import annotations

import copy

import pytest
import torch

from selmem import MemoryStack, SelectiveMemoryTransformer
from selmem.tasks import MQARTask
from tests.helpers import assert_close, tiny_cfg
from tests.memory.test_layer import stack_like

RECALL = MQARTask(num_pairs=2, num_keys=4, num_values=4, segment_len=8, num_segments=3, noise_vocab=2,
                  placement="random", noise="shared", marked=True)  # vocab 13 < tiny 16, rows of 24


def run_prefix(model: SelectiveMemoryTransformer, stack: MemoryStack, x: torch.Tensor, seg: int) -> list[list[dict]]:
    """The stack inside the model's own blocks (prefix mode), segment by segment -> every
    segment's per-layer stats."""
    state, segments = stack.init_state(x.shape[0]), []
    for part in x.split(seg, dim=1):
        hints = stack.hints(state)
        h, layers = model.embed(part), []
        for block, memory in zip(model.blocks, stack, strict=True):
            prefix, bias = memory.prefix(state, hints)
            h, read = block(h, prefix, prefix_bias=bias)
            h, state, stats = memory(h, state, hints, read_attn=read)
            layers.append(stats)
        segments.append(layers)
    return segments


@pytest.mark.parametrize("overrides", [{}, dict(sparsity="target", credit_grad="head", probe_target="sum")],
                         ids=["default", "target-head-sum"])
def test_stack_losses_are_the_models_losses_but_infonce(overrides):
    model = SelectiveMemoryTransformer(tiny_cfg(lambda_score=0.1, score_margin=0.1, **overrides)).double().train()
    stack = stack_like(model)
    stack.probe = copy.deepcopy(model.probe)  # the model's teacher, weights and all
    batch = RECALL.batch("train", 0, 4)
    want = model.forward_sequence(batch.tokens, 8, answer_mask=batch.loss_mask, answer_targets=batch.targets).losses
    got = stack.losses(run_prefix(model, stack, batch.tokens, 8), batch.tokens, batch.loss_mask, batch.targets)
    for name in ("sparsity", "reconstruction", "score_bound", "probe", "credit"):
        assert_close(name, want[name], got[name], atol=1e-12)
    assert_close("aux", want["aux"] - model.cfg.lambda_nce * want["infonce"], got["aux"], atol=1e-12)
    assert float(got["credit"].detach()) > 0 and float(got["score_bound"].detach()) > 0  # the comparison is not 0 == 0


def test_stack_losses_train_head_b_and_the_probe_in_cross_mode():
    cfg = tiny_cfg(vocab_size=RECALL.vocab_size)
    stack = MemoryStack(cfg, probe=True).double()
    batch = RECALL.batch("train", 0, 4)
    embed = torch.nn.Embedding(cfg.vocab_size, cfg.d_model).double()  # a stand-in host
    state, segments = stack.init_state(4), []
    for part in batch.tokens.split(8, dim=1):
        hints, h, layers = stack.hints(state), embed(part), []
        for memory in stack:
            h, state, stats = memory(h, state, hints)
            layers.append(stats)
        segments.append(layers)
    plain = stack.losses(segments)  # the self-supervised terms only
    assert "probe" not in plain and "credit" not in plain
    plain["aux"].backward(retain_graph=True)
    assert stack.probe.q.weight.grad is None  # no answers, no teacher
    stack.zero_grad()
    out = stack.losses(segments, batch.tokens, batch.loss_mask, batch.targets)
    out["aux"].backward()
    assert stack[0].select.score[0].weight.grad.abs().sum() > 0
    assert stack.probe.q.weight.grad.abs().sum() > 0
    assert_close("aux", plain["aux"] + cfg.lambda_credit * (out["probe"] + out["credit"]), out["aux"], atol=1e-12)


def test_stack_losses_say_what_the_teacher_needs():
    stack = MemoryStack(tiny_cfg())
    state = stack.init_state(2)
    segments = []
    for _ in range(2):
        h, layers = torch.randn(2, 6, 32), []
        for memory in stack:
            h, state, stats = memory(h, state)
            layers.append(stats)
        segments.append(layers)
    x, mask = torch.randint(0, 16, (2, 12)), torch.zeros(2, 12, dtype=torch.bool)
    mask[:, 9] = True
    with pytest.raises(ValueError, match=r"MemoryStack\(cfg, probe=True\)"):
        stack.losses(segments, x, mask, x)
    with pytest.raises(ValueError, match="needs credit='probe'"):
        MemoryStack(tiny_cfg(credit="none"), probe=True)
    taught = MemoryStack(tiny_cfg(), probe=True)
    with pytest.raises(ValueError, match=r"window's shape \(2, 12\)"):
        taught.losses(segments, x[:, :8], mask, x)
    with pytest.raises(ValueError, match=r"vocab_size=16"):
        taught.losses(segments, x + 16, mask, x)
    with pytest.raises(ValueError, match="per-segment lists"):
        taught.losses([segments[0][:1]])
