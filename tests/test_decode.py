"""Decoding with a cache equals one forward pass: a prefill of awkward length, then token by
token, gives forward_sequence's logits and, flushed, its final state (fla's and HF's generation
equivalence tests; float64)."""

from __future__ import annotations

import pytest
import torch

from selmem.decode import flush
from tests.helpers import assert_close, tiny_model, tokens

VARIANTS = [
    pytest.param({}, id="default"),
    pytest.param(dict(select="topk", compress="avgpool", read_bias="usage", slot_decay=True), id="topk-avgpool"),
    pytest.param(dict(address="fifo", meta_cache=True, short_conv=0), id="fifo-meta-noconv"),
    pytest.param(dict(read="off"), id="read-off"),
]


@pytest.mark.parametrize("prefill", [7, 33], ids=lambda n: f"prefill{n}")
@pytest.mark.parametrize("overrides", VARIANTS)
def test_prefill_then_token_by_token_equals_forward(overrides, prefill):
    model = tiny_model(**overrides).eval()
    x = tokens(2, 45)
    with torch.no_grad():
        whole = model.forward_sequence(x, segment_len=16)
        logits, cache = model.decode(x[:, :prefill], segment_len=16)
        steps = [logits]
        for t in range(prefill, x.shape[1]):
            out, cache = model.decode(x[:, t : t + 1], cache)
            steps.append(out)
        state = flush(model, cache)
    assert_close("logits", whole.logits, torch.cat(steps, 1), atol=1e-10)
    for name in ("slots", "usage", "age"):
        assert_close(name, getattr(whole.state, name), getattr(state, name), atol=1e-10)
    assert torch.equal(whole.state.position, state.position)


def test_cache_stays_bounded():
    """The cache holds at most one segment: its size after 9 segments equals that after 1."""
    model = tiny_model().eval()
    with torch.no_grad():
        _, cache = model.decode(tokens(1, 8 + 5), segment_len=8)
        small = cache.num_floats()
        _, cache = model.decode(tokens(1, 8 * 8), cache)
    assert cache.length == 5 and cache.num_floats() == small


def test_decode_checks_batch_size():
    model = tiny_model().eval()
    _, cache = model.decode(tokens(2, 3), segment_len=8)
    with pytest.raises(ValueError, match="cache holds 2 streams"):
        model.decode(tokens(3, 1), cache)
