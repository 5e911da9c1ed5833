"""torch.compile gives the eager model's numbers: logits, final state and gradients of a
streamed sequence (model.compile() compiles forward in place, so forward_sequence's segment
calls run compiled, which is what train.compile does)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from tests.helpers import assert_close, grads, tiny_model, tokens


def run(model, x):
    model.zero_grad(set_to_none=True)
    out = model.forward_sequence(x, 6)
    (out.logits.square().mean() + out.losses["aux"]).backward()
    return out, grads(model)


@pytest.mark.parametrize("backend", [
    # graph capture and AOT autograd without code generation: seconds
    pytest.param("aot_eager", id="aot_eager"),
    # the real thing: generated C++ kernels, about two minutes on a small CPU, so opt-in
    pytest.param("inductor", id="inductor", marks=[
        pytest.mark.slow,
        pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                           reason="inductor needs a C++ compiler on CPU"),
        pytest.mark.skipif(os.environ.get("SELMEM_TEST_INDUCTOR") != "1",
                           reason="minutes of code generation; SELMEM_TEST_INDUCTOR=1 runs it")]),
])
def test_compiled_model_gives_the_eager_numbers(backend):
    torch._dynamo.reset()
    model = tiny_model(torch.float32)  # 2 layers: their writes run batched (memory/stacked.py)
    x = tokens(2, 12)
    ref, g_ref = run(model, x)
    model.compile(backend=backend)
    out, g = run(model, x)
    assert_close("logits", ref.logits, out.logits, atol=1e-5)
    assert_close("slots", ref.state.slots, out.state.slots, atol=1e-5)
    for name in g_ref:
        assert_close(f"grad {name}", g_ref[name], g[name], atol=1e-4)
