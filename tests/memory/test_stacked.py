"""stacked.py: all layers' writes as one batched call equal one write per layer (the diagnostic
path), in float64, on outputs, state, stats, losses and gradients."""

from __future__ import annotations

import pytest
import torch

from selmem import SelectiveMemoryTransformer
from tests.helpers import assert_close, grads, tiny_cfg, tokens

OPTIONS = [
    pytest.param({}, id="default"),
    pytest.param(dict(select="topk", compress="maxpool", slot_decay=True, read_bias="usage"), id="topk-maxpool-decay"),
    pytest.param(dict(select="threshold", compress="attnpool", address_weights="sparsemax", meta_cache=True),
                 id="threshold-attnpool-sparsemax"),
    pytest.param(dict(select="all", compress="avgpool", address="fifo", cache_transform="none"), id="all-avgpool-fifo"),
    pytest.param(dict(select="hard", compress="none", address="random", address_weights="softmax", n_layers=3),
                 id="hard-none-random-L3"),
]


def pair(**overrides) -> tuple[SelectiveMemoryTransformer, SelectiveMemoryTransformer]:
    """The same weights with batched and with per-layer writes."""
    batched = SelectiveMemoryTransformer(tiny_cfg(writes="batched", **overrides)).double()
    with torch.no_grad():  # distinct per-layer weights everywhere, so a mixed-up layer shows
        for p in batched.parameters():
            p.add_(0.1 * torch.randn_like(p))
    per_layer = SelectiveMemoryTransformer(tiny_cfg(writes="per_layer", **overrides)).double()
    per_layer.load_state_dict(batched.state_dict())
    return batched, per_layer


@pytest.mark.parametrize("overrides", OPTIONS)
def test_batched_writes_equal_per_layer_writes(overrides):
    batched, per_layer = pair(**overrides)
    if overrides.get("select") == "hard":  # training draws the noise of all layers at once
        batched.eval(), per_layer.eval()
    x = tokens(3, 21)
    outs = [m.forward_sequence(x, segment_len=8) for m in (batched, per_layer)]
    for out in outs:
        (out.logits.pow(2).mean() + out.losses["aux"]).backward()
    fast, slow = outs
    assert_close("logits", slow.logits, fast.logits, atol=1e-12)
    for name in ("slots", "usage", "age"):
        assert_close(name, getattr(slow.state, name), getattr(fast.state, name), atol=1e-12)
    assert torch.equal(slow.state.provenance, fast.state.provenance)
    for name in slow.losses:
        assert_close(f"loss {name}", slow.losses[name], fast.losses[name], atol=1e-12)
    for s_fast, s_slow in zip(fast.stats["segments"], slow.stats["segments"], strict=True):
        for l, (a, b) in enumerate(zip(s_fast["layers"], s_slow["layers"], strict=True)):
            for key, v in b.items():
                if v is not None:
                    assert_close(f"segment stat {key} of layer {l}", v, a[key], atol=1e-12)
    g_fast, g_slow = grads(batched), grads(per_layer)
    for name, g in g_slow.items():
        assert_close(f"grad {name}", g, g_fast[name], atol=1e-10)


def test_batched_writes_equal_per_layer_writes_with_padding():
    batched, per_layer = pair(select="topk", read_bias="usage")
    x = tokens(3, 8)
    mask = torch.tensor([[True] * 8, [True] * 5 + [False] * 3, [True] * 2 + [False] * 6])
    fast, slow = (m(x, m.init_state(3), mask) for m in (batched, per_layer))
    assert_close("logits", slow.logits[mask], fast.logits[mask], atol=1e-12)
    for name in ("slots", "usage", "age"):
        assert_close(name, getattr(slow.state, name), getattr(fast.state, name), atol=1e-12)


def test_batched_writes_decode_as_forward():
    """The decoder writes through the same model.write when a segment fills."""
    batched, per_layer = pair()
    x = tokens(2, 12)
    want = per_layer.forward_sequence(x, segment_len=5).logits
    cache, parts = None, []
    for chunk in x.split(3, dim=1):
        logits, cache = batched.decode(chunk, cache, segment_len=5)
        parts.append(logits)
    assert_close("decoded logits", want, torch.cat(parts, 1), atol=1e-12)


@pytest.mark.parametrize("overrides", [dict(select="threshold", compress="attnpool"),
                                       dict(address="random", n_layers=3)], ids=["threshold-attnpool", "random-L3"])
def test_the_stand_ins_are_built_from_the_part_modules(overrides):
    """Each part's stand-in holds its modules' options, and every parameter (and the layer index
    the random address hashes) once per row, (L*B, ...): nothing is listed by hand in stacked.py."""
    model = SelectiveMemoryTransformer(tiny_cfg(writes="batched", **overrides))
    L, B = model.cfg.n_layers, 2
    parts = model.write_parts(B, "cpu")
    for name in ("select", "compress", "address"):
        stand_in, first = getattr(parts, name), getattr(model, name)[0]
        for key, value in vars(first).items():
            if not key.startswith("_") and key not in getattr(first, "row_axes", {}):
                assert getattr(stand_in, key) is value, f"{name}.{key}"
        for key, p in first.named_parameters(recurse=False):
            rows = torch.stack([getattr(m, key) for m in getattr(model, name)]).repeat_interleave(B, 0)
            assert torch.equal(getattr(stand_in, key).reshape(rows.shape), rows), f"{name}.{key}"
    if overrides.get("address") == "random":
        assert parts.address.layer_idx.flatten().tolist() == [l for l in range(L) for _ in range(B)]
