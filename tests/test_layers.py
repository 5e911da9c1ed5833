"""Shared layers: the hand-written short convolution equals torch's depthwise Conv1d, and is causal;
the fused (SDPA) attention equals the written-out softmax; cached tables equal fresh ones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selmem.layers import Attention, ShortConv, prefix_causal_mask, rotary, rotary_table
from tests.helpers import assert_close


@pytest.mark.parametrize("T", [1, 3, 9], ids=lambda t: f"T{t}")
def test_short_conv_equals_depthwise_conv1d(T):
    conv = ShortConv(6, 4).double()
    x = torch.randn(2, T, 6, dtype=torch.double, requires_grad=True)
    ref = conv.conv(F.pad(x.transpose(1, 2), (3, 0))).transpose(1, 2)
    out = conv(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g_out = torch.autograd.grad(out.square().sum(), [x, conv.conv.weight])
    g_ref = torch.autograd.grad(ref.square().sum(), [x, conv.conv.weight])
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_short_conv_is_causal():
    conv = ShortConv(4, 3)
    x = torch.randn(1, 8, 4)
    y = x.clone()
    y[:, 5] += 1.0
    torch.testing.assert_close(conv(x)[:, :5], conv(y)[:, :5], rtol=0, atol=0)
    assert not torch.allclose(conv(x)[:, 5:8], conv(y)[:, 5:8])


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("prefix, bias", [(False, False), (True, False), (True, True)],
                         ids=["no-prefix", "prefix", "prefix+bias"])
@pytest.mark.parametrize("prefix_rope", [True, False], ids=["rotary-read", "plain-read"])
def test_sdpa_attention_equals_the_explicit_softmax(causal, prefix, bias, prefix_rope):
    """The fused path (F.scaled_dot_product_attention, the read map carried in an extra channel)
    gives the written-out softmax's output, read map and every gradient, in float64."""
    attn = Attention(32, 4, causal=causal, prefix_rope=prefix_rope).double()
    x = torch.randn(3, 7, 32, dtype=torch.double, requires_grad=True)
    p = torch.randn(3, 5, 32, dtype=torch.double, requires_grad=True) if prefix else None
    b = torch.randn(3, 5, dtype=torch.double, requires_grad=True) if bias else None
    inputs = [t for t in (x, p, b) if t is not None] + list(attn.parameters())
    results = []
    for fast in (True, False):
        attn.fast = fast
        y, read = attn(x, p, prefix_bias=b)
        # a loss on the read map too: the memory's usage trains through it
        loss = y.sin().sum() + (read * torch.arange(5.0, dtype=torch.double)).sum() if prefix else y.sin().sum()
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        results.append((y, read, grads))
    (y, read, grads), (y_ref, read_ref, grads_ref) = results
    assert_close("output", y_ref, y, atol=1e-12)
    assert (read is None) == (not prefix)
    if prefix:
        assert_close("read", read_ref, read, atol=1e-12)
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref, strict=True)):
        if g_ref is None:
            assert g is None
        else:
            assert_close(f"grad {i}", g_ref, g, atol=1e-12)


def test_cached_rotary_table_and_mask_equal_fresh_ones():
    """The per-process caches return what building afresh gives, and plain (non-inference)
    tensors even when first built under inference_mode."""
    with torch.inference_mode():
        rotary(torch.zeros(1, 1, 9, 8, dtype=torch.double))  # the first call fills the cache
    cos, sin = rotary_table(0, 9, 8, torch.double, "cpu")
    cos, sin = cos[:, 0::2], sin[:, 1::2]  # one entry per channel pair
    x = torch.randn(2, 3, 9, 8, dtype=torch.double, requires_grad=True)
    out = rotary(x)
    out.sum().backward()  # a cached inference tensor could not be saved for backward
    x1, x2 = x[..., 0::2], x[..., 1::2]
    ref = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    assert torch.equal(out, ref)
    mask = prefix_causal_mask(3, 2, "cpu")
    assert mask.tolist() == [[True, True, True, False, False], [True, True, True, True, False],
                             [True, True, True, True, True]]


@pytest.mark.parametrize("prefix_rope", [True, False], ids=["rotary-read", "plain-read"])
def test_step_equals_forward_and_a_plain_read_ignores_the_position(prefix_rope):
    """Token-by-token ``step`` gives ``forward``'s numbers for either read query; with the plain
    query (read_query='plain') a token's read map does not depend on its place in the segment."""
    attn = Attention(32, 4, fast=False, prefix_rope=prefix_rope).double()
    x = torch.randn(2, 6, 32, dtype=torch.double)
    p = torch.randn(2, 5, 32, dtype=torch.double)
    y, read = attn(x, p)
    pkv, past, ys = attn.prefix_kv(p), None, []
    for t in range(6):
        yt, _, past = attn.step(x[:, t : t + 1], pkv, past)
        ys.append(yt)
    assert_close("step", y, torch.cat(ys, 1), atol=1e-12)
    one = Attention(32, 1, fast=False, prefix_rope=prefix_rope).double()  # one head: the read renormalised
    same = x[:, :1].expand(2, 6, 32)  # one token repeated: only its position differs
    _, read = one(same, p)
    share = read / read.sum(-1, keepdim=True)  # over the prefix is its softmax over the prefix logits
    moved = (share - share[:, :1]).abs().max().item()
    assert (moved < 1e-12) == (not prefix_rope)
