"""SelectiveMemory, the standalone layer: in prefix mode inside selmem's own blocks it is the
built-in model (same parts, same numbers); in cross mode it starts as the identity."""

from __future__ import annotations

import pytest
import torch

from selmem import MemoryStack, SelectiveMemory, SelectiveMemoryTransformer
from selmem.memory.layer import StreamState
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


def three_slots(state):
    """The state with 3 slots where the memory has 4, consistently in every field."""
    import dataclasses

    return dataclasses.replace(state, slots=state.slots[:, :, :3], usage=state.usage[:, :, :3],
                               age=state.age[:, :, :3], provenance=state.provenance[:, :, :3])


@pytest.mark.parametrize("change, match", [
    pytest.param(dict(position=lambda s: s.position.double()), "state: position must be torch.int64",
                 id="position-float"),
    pytest.param(dict(position=lambda s: s.position[:, None]), r"state: position must be .* shape \(2,\)",
                 id="position-(B,1)"),
    pytest.param(dict(usage=lambda s: s.usage.float()), "state: usage must be torch.float64", id="usage-float32"),
    pytest.param(three_slots, r"state's slots are .* \(\d, 2, 3, 16\), but this memory holds torch.float64 "
                 r"\(slots, d_mem\) = \(4, 16\)", id="3-slots"),
])
def test_a_state_that_does_not_fit_is_named_by_the_layer_and_the_one_line_layer(change, match):
    """A position or slot count of the wrong shape failed deep inside torch, or ran on (issue 28)."""
    import dataclasses

    def changed(state):
        if callable(change):
            return change(state)
        return dataclasses.replace(state, **{name: f(state) for name, f in change.items()})

    stack = MemoryStack(tiny_cfg()).double()
    with pytest.raises(ValueError, match=f"^{match}") as err:
        stack[0](torch.randn(2, 6, 32, dtype=torch.float64), changed(stack.init_state(2)))
    assert "\n" not in str(err.value)
    layer = one_line()
    memory = changed(layer.init_state(2).memory)
    for length in (3, 20):  # a part-filled segment only reads the memory; a full one writes it too
        with pytest.raises(ValueError, match=f"^{match.replace('state', 'state(.memory)?', 1)}"):
            layer(torch.randn(2, length, 32, dtype=torch.float64), StreamState(memory))


# --- the one-line layer (issue 27, item 3): SelectiveMemory(dim, ...)(x, state) -> (out, state) ---

ONE_LINE = dict(slots=4, d_mem=16, n_heads=2, max_segment_len=16)


def one_line(**fields) -> SelectiveMemory:
    """A float64 one-line layer whose read is live (its zero-initialised output made nonzero)."""
    layer = SelectiveMemory(32, **{**ONE_LINE, **fields}).double()
    torch.nn.init.normal_(layer.cross.out.weight, std=0.2)
    return layer


def test_one_line_layer_builds_a_one_layer_config_from_the_width_and_fields():
    layer = SelectiveMemory(32, slots=4, d_mem=16, n_heads=2, max_segment_len=16)
    cfg = layer.cfg
    assert (cfg.d_model, cfg.n_layers, cfg.slots, cfg.credit) == (32, 1, 4, "none")
    assert layer.segment_len == 16  # default: max_segment_len
    out, state = layer(torch.randn(2, 20, 32))
    assert out.shape == (2, 20, 32) and torch.equal(out, out)
    assert state.pending.shape == (2, 4, 32) and state.memory.position.tolist() == [16, 16]
    assert SelectiveMemory(tiny_cfg(n_layers=1), segment_len=8).segment_len == 8  # the config form of it
    with pytest.raises(TypeError, match="takes no SelmemConfig fields"):
        SelectiveMemory(tiny_cfg(), slots=4)
    with pytest.raises(TypeError, match="slotz"):
        SelectiveMemory(32, slotz=4)
    with pytest.raises(ValueError, match="needs n_layers=1 and read='cross'"):
        SelectiveMemory(tiny_cfg(), segment_len=8)
    with pytest.raises(ValueError, match="segment_len must be in"):
        SelectiveMemory(32, segment_len=99, **ONE_LINE)
    with pytest.raises(ValueError, match="state holds 2 streams"):
        layer(torch.randn(3, 5, 32), state)
    with pytest.raises(ValueError, match="needs the stack's MemoryState"):
        MemoryStack(tiny_cfg())[0](torch.randn(2, 6, 32))


@pytest.mark.parametrize("splits", [[7], [8], [3, 1, 13], [1] * 6], ids=["mid-segment", "at-boundary", "awkward",
                                                                        "token-by-token-start"])
def test_one_line_layer_continues_the_stream_across_calls(splits):
    layer = one_line(segment_len=8, select="topk", slot_decay=True)
    x = torch.randn(2, 21, 32, dtype=torch.float64, requires_grad=True)
    whole, want = layer(x)
    grads = torch.autograd.grad(whole.pow(2).sum() + want.memory.slots.sum(), [x, *layer.parameters()],
                                allow_unused=True)
    outs, state, start = [], None, 0
    for n in [*splits, 21 - sum(splits)]:
        out, state = layer(x[:, start : start + n], state)
        outs.append(out)
        start += n
    out = torch.cat(outs, dim=1)
    assert_close("out", whole, out, atol=1e-12)
    for name in ("slots", "usage", "age"):
        assert_close(name, getattr(want.memory, name), getattr(state.memory, name), atol=1e-12)
    assert torch.equal(want.memory.position, state.memory.position)
    assert_close("pending", want.pending, state.pending, atol=0)  # 21 = 2 segments + 5 open tokens
    split = torch.autograd.grad(out.pow(2).sum() + state.memory.slots.sum(), [x, *layer.parameters()],
                                allow_unused=True)
    names = ["x", *(name for name, _ in layer.named_parameters())]
    for name, g, s in zip(names, grads, split, strict=True):
        if g is not None:
            assert_close(f"grad {name}", g, s, atol=1e-10)
    trained = {name for name, g in zip(names, grads, strict=True) if g is not None and g.abs().sum() > 0}
    assert {"x", "select.score.0.weight", "cross.q.weight", "init_slots"} <= trained  # head B and the read learn


def test_one_line_layer_is_a_one_layer_stack_run_segment_by_segment():
    layer = one_line(segment_len=8)
    stack = MemoryStack(layer.cfg).double()
    params = {(k if k.startswith("cache_transform.") else f"layers.0.{k}"): v for k, v in layer.state_dict().items()}
    stack.load_state_dict(params)
    x = torch.randn(2, 24, 32, dtype=torch.float64)
    out, state = layer(x)
    memory, want = stack.init_state(2), []
    for seg in x.split(8, dim=1):
        h, memory, _ = stack[0](seg, memory, stack.hints(memory))
        want.append(h)
    assert_close("out", torch.cat(want, dim=1), out, atol=1e-12)
    assert_close("slots", memory.slots, state.memory.slots, atol=1e-12)
    assert state.pending is None and state.memory.position.tolist() == [24, 24]
