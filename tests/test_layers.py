"""Shared layers: the hand-written short convolution equals torch's depthwise Conv1d, and is causal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selmem.layers import ShortConv


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
