"""SelectiveMemory, the standalone layer: in prefix mode inside selmem's own blocks it is the
built-in model (same parts, same numbers); in cross mode it starts as the identity."""

from __future__ import annotations

import pytest
import torch

from selmem import MemoryStack, SelectiveMemory, SelectiveMemoryTransformer
from tests.helpers import assert_close, tiny_cfg, tokens

PARTS = ("read", "select", "compress", "address", "decoder")


def stack_like(model: SelectiveMemoryTransformer, read: str = "prefix") -> MemoryStack:
    """A MemoryStack holding the model's own memory parameters."""
    stack = MemoryStack(model.cfg, read=read).to(model.init_slots.dtype)
    state = {}
    for key, v in model.state_dict().items():
        head, _, rest = key.partition(".")
        if head in PARTS:
            l, _, name = rest.partition(".")
            state[f"layers.{l}.{head}.{name}"] = v
        elif head == "cache_transform":
            state[key] = v
    for l in range(model.cfg.n_layers):
        state[f"layers.{l}.init_slots"] = model.init_slots[l]
        if model.slot_decay is not None:
            state[f"layers.{l}.slot_decay"] = model.slot_decay[l]
    stack.load_state_dict(state, strict=read == "prefix")
    return stack


@pytest.mark.parametrize("overrides", [{}, dict(select="topk", compress="maxpool", slot_decay=True, read_bias="usage"),
                                       dict(cache_transform="none", address="fifo")],
                         ids=["default", "topk-maxpool-decay", "no-transform-fifo"])
def test_prefix_mode_in_selmem_blocks_is_the_model(overrides):
    model = SelectiveMemoryTransformer(tiny_cfg(**overrides)).double().eval()
    stack = stack_like(model)
    x = tokens(2, 20)
    want = model.forward_sequence(x, segment_len=8)
    state, logits = stack.init_state(2), []
    for seg in x.split(8, dim=1):
        hints = stack.hints(state)
        h = model.embed(seg)
        for block, memory in zip(model.blocks, stack, strict=True):
            prefix, bias = memory.prefix(state, hints)
            h, read = block(h, prefix, prefix_bias=bias)
            h, state, stats = memory(h, state, hints, read_attn=read)
        logits.append(model.head(model.norm(h)))
    assert_close("logits", want.logits, torch.cat(logits, 1), atol=1e-12)
    for name in ("slots", "usage", "age"):
        assert_close(name, getattr(want.state, name), getattr(state, name), atol=1e-12)
    assert torch.equal(want.state.position, state.position)
    assert stats["gate"].shape == (2, 4)


def test_cross_mode_starts_as_identity_and_writes():
    stack = MemoryStack(tiny_cfg()).double()
    state = stack.init_state(2)
    h = torch.randn(2, 6, 32, dtype=torch.float64)
    out, new, stats = stack[0](h, state, stack.hints(state))
    assert torch.equal(out, h)  # zero-initialised read output: the host model is unchanged at insertion
    assert not torch.allclose(new.slots[0], state.slots[0])  # but layer 0 wrote
    assert torch.equal(new.slots[1], state.slots[1])  # and only layer 0
    assert new.position.tolist() == [0, 0]  # the last layer advances the position
    _, last, _ = stack[1](out, new, None)
    assert last.position.tolist() == [6, 6]


def test_cross_mode_gradients_reach_head_b_and_the_read():
    stack = MemoryStack(tiny_cfg()).double()
    torch.nn.init.normal_(stack[0].cross.out.weight)
    state = stack.init_state(2)
    for _ in range(2):  # the second segment reads what the first wrote
        h, state, _ = stack[0](torch.randn(2, 6, 32, dtype=torch.float64), state)
    h.pow(2).sum().backward()
    memory = stack[0]
    assert memory.select.score[0].weight.grad.abs().sum() > 0
    assert memory.cross.q.weight.grad.abs().sum() > 0
    assert memory.init_slots.grad.abs().sum() > 0


def test_layer_checks_its_inputs():
    stack = MemoryStack(tiny_cfg())
    with pytest.raises(ValueError, match="h must have shape"):
        stack[0](torch.randn(2, 6, 8), stack.init_state(2))
    with pytest.raises(ValueError, match=r"expected 2 x 3"):
        stack[0](torch.randn(3, 6, 32), stack.init_state(2))
    with pytest.raises(ValueError, match="layer_idx must be in"):
        SelectiveMemory(tiny_cfg(), layer_idx=5)
