"""One harness for every model of the comparison (selmem and the baselines of DESIGN §5):
shapes, causality, streaming == whole, full attention == one shot, backward, gradient across
segments, state-size accounting, input errors. Plus the few model-specific relations.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from selmem.baselines import MODELS, build_model, params, state_size
from selmem.baselines.armt import AssociativeMemory, dpfp_nu
from selmem.baselines.attention import Block, causal_mask
from selmem.baselines.lstm import lstm_hidden, lstm_params
from selmem.baselines.rmt import rmt_mask
from selmem.config import SelmemConfig
from selmem.layers import Block as LayersBlock
from tests.helpers import assert_close

NAMES = list(MODELS)
V, N = 11, 13  # vocabulary, sequence length of the tests


def tiny(**overrides) -> SelmemConfig:
    base = dict(vocab_size=V, d_model=16, n_layers=2, n_heads=2, mlp_ratio=2, max_segment_len=8,
                slots=4, d_mem=8)
    return SelmemConfig(**{**base, **overrides})


def make(name: str, dtype: torch.dtype = torch.float64, **overrides) -> torch.nn.Module:
    return build_model(name, tiny(**overrides)).to(dtype)


def tokens(B: int = 2, n: int = N) -> Tensor:
    return torch.randint(0, V, (B, n))


def carried_floats(state) -> int:
    """Floats a state actually carries per sequence: numel of its floating tensors / batch."""
    ts = [getattr(state, f.name) for f in dataclasses.fields(state)]
    B = state.position.shape[0]
    return sum(t.numel() for t in ts if isinstance(t, Tensor) and t.is_floating_point()) // B


def float_fields(state) -> dict[str, Tensor]:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if getattr(state, f.name).is_floating_point()}


TIGHT = 1e-10  # float64 streaming vs whole: the same sums in another order


# --- the shared harness -----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_shapes(name: str) -> None:
    model = make(name, torch.float32)
    x = tokens(3, 5)
    out = model(x, model.init_state(3))
    assert out.logits.shape == (3, 5, V)
    assert out.state.position.tolist() == [5, 5, 5]
    assert out.losses["aux"].dim() == 0
    out = model.forward_sequence(tokens(3, N), segment_len=4)
    assert out.logits.shape == (3, N, V)
    assert out.state.position.tolist() == [N] * 3
    assert len(out.stats["segments"]) == 4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pos", [5, 8, 12], ids=["mid-segment", "segment-start", "last"])
def test_causal(name: str, pos: int) -> None:
    """Changing token ``pos`` leaves every earlier logit unchanged, in its own segment and in
    earlier ones (segments of 4: pos 5 is inside the second, 8 starts the third)."""
    model = make(name)
    x = tokens()
    y = x.clone()
    y[:, pos] = (y[:, pos] + 1) % V
    a = model.forward_sequence(x, segment_len=4).logits
    b = model.forward_sequence(y, segment_len=4).logits
    assert_close("earlier logits", a[:, :pos], b[:, :pos], atol=0.0)
    assert not torch.allclose(a[:, pos:], b[:, pos:]), "the changed token must matter somewhere"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seg", [4, 5], ids=["divides", "ragged"])
def test_streaming_equals_sequence(name: str, seg: int) -> None:
    model = make(name)
    x = tokens(n=12)
    whole = model.forward_sequence(x, segment_len=seg)
    state, parts = model.init_state(2), []
    for start in range(0, 12, seg):
        out = model(x[:, start : start + seg], state)
        state, parts = out.state, parts + [out.logits]
    assert_close("logits", whole.logits, torch.cat(parts, dim=1), TIGHT)
    for k, t in float_fields(whole.state).items():
        assert_close(f"state.{k}", t, getattr(state, k), TIGHT)


@pytest.mark.parametrize("conv", [0, 4], ids=["no-conv", "conv4"])
@pytest.mark.parametrize("seg", [1, 4, 5, N], ids=["seg1", "seg4", "seg5", "one-segment"])
def test_full_streaming_equals_one_shot(seg: int, conv: int) -> None:
    """The KV cache with absolute rotary positions (and the short convolution's carried inputs)
    reproduces one pass over the whole input, in outputs and in gradients."""
    model = make("full", max_segment_len=16, short_conv=conv)
    x = tokens()
    ref = model(x)
    ref.logits.square().mean().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model.forward_sequence(x, segment_len=seg)
    out.logits.square().mean().backward()
    assert_close("logits", ref.logits, out.logits, TIGHT)
    assert_close("keys", ref.state.keys, out.state.keys, TIGHT)
    assert_close("conv inputs", ref.state.conv, out.state.conv, TIGHT)
    for n, p in model.named_parameters():
        assert_close(f"grad {n}", ref_grads[n], p.grad, TIGHT)


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = make(name, torch.float32)
    x = tokens()
    out = model.forward_sequence(x, segment_len=4)
    logits, target = out.logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits, target)
    (loss + out.losses["aux"]).backward()
    # an unused parameter is dead weight in the parameter count and breaks DDP
    # (selmem's credit probe learns only from answers: tests/memory/test_credit.py)
    missing = [n for n, p in model.named_parameters()
               if (p.grad is None or not p.grad.abs().sum() > 0) and not n.startswith("probe.")]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# Does the loss of a later segment reach the state carried from an earlier one? Transformer-XL
# stores its cache without gradient (SG in Dai et al. 2019); the others backpropagate through time.
CROSSES = {"selmem": True, "full": True, "txl": False, "rmt": True, "armt": True, "lstm": True}


@pytest.mark.parametrize("name", [n for n in NAMES if n != "local"])
def test_gradient_across_segments(name: str) -> None:
    model = make(name)
    x = tokens(n=12)
    state = model(x[:, :4]).state.detach()
    leaves = float_fields(state)
    for t in leaves.values():
        t.requires_grad_(True)
    state = dataclasses.replace(state, **leaves)
    state = model(x[:, 4:8], state).state
    model(x[:, 8:], state).logits.square().sum().backward()  # loss of the third segment only
    reached = any(t.grad is not None and t.grad.abs().sum() > 0 for t in leaves.values())
    assert reached == CROSSES[name]


@pytest.mark.parametrize("bptt, reached", [(0, True), (2, False)], ids=["bptt-all", "bptt-2"])
def test_forward_sequence_cuts_bptt_every_k_segments(bptt: int, reached: bool) -> None:
    """RMT's learned initial memory enters through the first segment only: the last segment's
    loss reaches it unless the state was detached on the way (every bptt_segments)."""
    model = make("rmt", bptt_segments=bptt)
    model.forward_sequence(tokens(), segment_len=4).logits[:, 12:].square().sum().backward()
    grad = model.init_memory.grad
    assert (grad is not None and grad.abs().sum() > 0) == reached


@pytest.mark.parametrize("name", NAMES)
def test_state_size_counts_carried_floats(name: str) -> None:
    """state_size() == floats in the state tensors / batch, after enough tokens to fill every
    bounded cache (txl's mem_len = slots = 4 < 13)."""
    model, cfg = make(name, torch.float32), tiny()
    state = model.forward_sequence(tokens(), segment_len=5).state
    carried = carried_floats(state)
    reported = model.state_size() if name == "selmem" else model.state_size(seq_len=N)
    assert reported == carried == state_size(name, cfg, seq_len=N)


BAD_TOKENS = [
    pytest.param(lambda: torch.full((2, 4), V), ValueError, "token ids", id="out-of-vocab"),
    pytest.param(lambda: torch.full((2, 4), -1), ValueError, "token ids", id="negative-id"),
    pytest.param(lambda: torch.zeros(2, 4), TypeError, "integer", id="float-dtype"),
    pytest.param(lambda: [[1, 2]], TypeError, "torch.Tensor", id="not-a-tensor"),
    pytest.param(lambda: torch.zeros(4, dtype=torch.long), ValueError, "shape", id="rank-1"),
    pytest.param(lambda: torch.zeros(2, 0, dtype=torch.long), ValueError, "empty",
                 id="empty-segment"),
    pytest.param(lambda: torch.zeros(2, 9, dtype=torch.long), ValueError, "max_segment_len",
                 id="too-long"),
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("make_tokens, error, match", BAD_TOKENS)
def test_bad_tokens(name: str, make_tokens, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make(name, torch.float32)(make_tokens())


@pytest.mark.parametrize("name", NAMES)
def test_bad_state(name: str) -> None:
    model = make(name, torch.float32)
    x = tokens(2, 4)
    with pytest.raises(ValueError, match="batch size 3"):
        model(x, model.init_state(3))
    with pytest.raises(TypeError, match="state must be a"):
        model(x, {"position": torch.zeros(2)})
    with pytest.raises(ValueError, match="segment_len"):
        model.forward_sequence(x, segment_len=9)
    with pytest.raises(ValueError, match="batch_size"):
        model.init_state(0)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "local"])  # local: nothing to misfit
def test_state_of_another_config_is_rejected(name: str) -> None:
    other = make(name, torch.float32, slots=6, d_mem=12, d_model=24, n_heads=2)
    with pytest.raises(ValueError, match="state does not fit"):
        make(name, torch.float32)(tokens(2, 4), other.init_state(2))


# --- model-specific relations -----------------------------------------------------------------
def test_block_is_layers_block_without_a_past() -> None:
    """The baselines' block computes what selmem.layers.Block computes on a bare segment."""
    ours = Block(16, 2, 2, conv_kernel=4).double()
    ref = LayersBlock(16, 2, 2, prefix=False, conv_kernel=4).double()
    ours.load_state_dict(ref.state_dict())  # strict: the same parameters under the same names
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    assert_close("block", ref(x)[0], ours(x, causal_mask(7))[0], TIGHT)


def test_rmt_mask() -> None:
    M, T = 2, 3
    m = rmt_mask(M, T)
    read, seg, write = slice(0, M), slice(M, M + T), slice(M + T, 2 * M + T)
    assert m[:, read].all()  # everyone reads the memory
    assert not m[read, seg].any() and not m[read, write].any()  # memory never sees the segment
    assert torch.equal(m[seg, seg], torch.ones(T, T, dtype=torch.bool).tril())  # causal segment
    assert not m[seg, write].any()  # segment tokens never see the write tokens
    assert m[write].all()  # write tokens see everything


@pytest.mark.parametrize("d_mem, nu", [(6, 1), (8, 1), (12, 2), (16, 2), (24, 3), (32, 2), (36, 3)])
def test_dpfp_feature_width_is_d_mem_and_keys_get_gradients(d_mem: int, nu: int) -> None:
    assert dpfp_nu(d_mem) == nu
    mem = AssociativeMemory(tiny(d_mem=d_mem, d_model=32))
    phi = mem.phi(mem.q(torch.randn(5, 32)))
    assert phi.shape == (5, d_mem)
    phi.square().mul(torch.randn(d_mem)).sum().backward()  # any loss: W_q must feel it
    assert mem.q.weight.grad.abs().sum() > 1e-6


@pytest.mark.parametrize("d_mem", [7, 4, 2])
def test_armt_rejects_d_mem_without_a_useful_feature_map(d_mem: int) -> None:
    with pytest.raises(ValueError, match="even d_mem >= 6"):
        build_model("armt", tiny(d_mem=d_mem, cache_transform="none"))


def test_armt_delta_rule_stores_overwrites_and_is_idempotent() -> None:
    """One memory token, write strength ~1: A stores its value under its key; writing the same
    pair again changes nothing (the delta is zero and z's correction is zero); writing a new
    value under the same key replaces the old one, which plain linear attention cannot do."""
    mem = AssociativeMemory(tiny(d_model=16, d_mem=8)).double()
    with torch.no_grad():
        mem.beta.bias.fill_(50.0)  # beta = 1
        mem.q.weight.copy_(mem.k.weight)  # read with the write key
    m = torch.randn(1, 1, 16, dtype=torch.float64)
    A, z = torch.zeros(1, 8, 16, dtype=torch.float64), torch.zeros(1, 8, dtype=torch.float64)
    A1, z1 = mem.write(m, A, z)
    v = mem.v(mem.write_norm(m))
    assert_close("recall", v, mem.read(m, A1, z1), atol=1e-4)
    A2, z2 = mem.write(m, A1, z1)
    assert_close("A idempotent", A1, A2, atol=1e-4)
    assert_close("z idempotent", z1, z2, atol=1e-12)
    with torch.no_grad():
        mem.v.weight.mul_(-2.0)  # a new value for the same key
    A3, z3 = mem.write(m, A2, z2)
    assert_close("overwrite", mem.v(mem.write_norm(m)), mem.read(m, A3, z3), atol=1e-3)


def test_lstm_width_matches_selmem_parameters() -> None:
    cfg = tiny()
    H = lstm_hidden(cfg)
    lstm, selmem = build_model("lstm", cfg), build_model("selmem", cfg)
    assert params(lstm) == lstm_params(cfg, H)
    target = params(selmem)
    best_neighbour = min(abs(lstm_params(cfg, h) - target) for h in (H - 1, H + 1))
    assert abs(params(lstm) - target) <= best_neighbour


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        build_model("mamba", tiny())
    with pytest.raises(ValueError, match="seq_len"):
        state_size("full", tiny())
    assert state_size("full", tiny(), seq_len=0) == 0
