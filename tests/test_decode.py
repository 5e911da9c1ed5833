"""Decoding with a cache equals one forward pass: a prefill of awkward length, then token by
token, gives forward_sequence's logits and, flushed, its final state (fla's and HF's generation
equivalence tests; float64); greedy decoding gives the argmax chain of forward_sequence; the
cache's buffers are allocated once per stream."""

from __future__ import annotations

import pytest
import torch

from selmem.decode import flush, new_cache, step
from selmem.generate import sample
from tests.helpers import assert_close, tiny_model, tokens

VARIANTS = [
    pytest.param({}, id="default"),
    pytest.param(dict(select="topk", compress="avgpool", read_bias="usage", slot_decay=True), id="topk-avgpool"),
    pytest.param(dict(address="fifo", meta_cache=True, short_conv=0), id="fifo-meta-noconv"),
    pytest.param(dict(read="off"), id="read-off"),
    pytest.param(dict(read_query="plain", read_bias="usage"), id="plain-query-bias"),
    pytest.param(dict(read_query="plain", read_recency="rank", write_new="allocate"), id="plain-recency-allocate"),
    pytest.param(dict(short_conv=2, cache_transform="none"), id="conv2-no-hints"),
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


@pytest.mark.parametrize("chunks", [[1, 2, 13, 1, 20, 3, 5], [16, 16, 8, 5], [45]], ids=lambda c: "-".join(map(str, c)))
def test_any_chunking_equals_forward(chunks):
    """Chunks that start, end and cross segments anywhere, through the unchecked step."""
    model = tiny_model(read_bias="usage").eval()
    x = tokens(3, sum(chunks))
    whole = model.forward_sequence(x, segment_len=16)
    cache, parts, start = new_cache(model, 3, 16), [], 0
    for n in chunks:
        parts.append(step(model, x[:, start : start + n], cache))
        start += n
    assert_close("logits", whole.logits, torch.cat(parts, 1), atol=1e-10)
    assert_close("slots", whole.state.slots, flush(model, cache).slots, atol=1e-10)


@pytest.mark.parametrize("overrides", VARIANTS[:3])
def test_greedy_decoding_is_the_argmax_chain_of_forward(overrides):
    """The decoded tokens are those of recomputing the whole sequence at every step, across
    segment boundaries (a prompt of 11, then 40 tokens in segments of 8)."""
    prompt = tokens(1, 11)  # drawn first: the seed's prompt whatever the model draws
    model = tiny_model(**overrides).eval()
    out = [tok for tok, _ in sample(model, prompt, 40, temperature=0, segment_len=8)]
    with torch.no_grad():
        logits = model.forward_sequence(torch.cat([prompt, torch.tensor([out[:-1]])], 1), segment_len=8).logits
    assert out == logits[0, 10:].argmax(-1).tolist()
    assert len(set(out)) > 1  # not a degenerate constant continuation


def test_buffers_are_allocated_once_per_stream():
    """The open segment's buffers keep their storage across segments: no token allocates one, and
    the cache holds the same floats after 1 segment as after 9."""
    model = tiny_model().eval()
    with torch.no_grad():
        _, cache = model.decode(tokens(1, 8 + 5), segment_len=8)
        before = [x.data_ptr() for lc in cache.layers for x in lc.tensors()]
        small = cache.num_floats()
        for _ in range(8 * 8):
            step(model, tokens(1, 1), cache)
    assert cache.length == 5 and cache.num_floats() == small
    assert [x.data_ptr() for lc in cache.layers for x in lc.tensors()] == before


def test_decode_checks_batch_size_and_tokens():
    model = tiny_model().eval()
    _, cache = model.decode(tokens(2, 3), segment_len=8)
    with pytest.raises(ValueError, match="cache holds 2 streams"):
        model.decode(tokens(3, 1), cache)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, vocab_size=16\), got range \[0, 16\]"):
        model.decode(torch.tensor([[0] * 9 + [16]] * 2), cache)  # out of range after the first segment
    with pytest.raises(ValueError, match=r"shape \(batch, length >= 1\)"):
        model.decode(tokens(2, 0), cache)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.bfloat16, 0.15)], ids=["float32", "bfloat16"])
def test_decode_in_lower_precision(dtype, atol):
    """float32 takes the single-token path (its rotary turn is a complex multiply); bfloat16,
    which has no complex type, the chunk path for every token: both give forward's logits."""
    model = tiny_model(dtype).eval()
    x = tokens(1, 40)
    whole = model.forward_sequence(x, segment_len=16).logits
    cache = new_cache(model, 1, 16)
    steps = [step(model, x[:, :5], cache)] + [step(model, x[:, t : t + 1], cache) for t in range(5, 40)]
    assert (cache.turn is None) == (dtype == torch.bfloat16)
    assert_close("logits", whole.float(), torch.cat(steps, 1).float(), atol=atol)
