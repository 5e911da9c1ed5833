"""SelectiveMemoryTransformer end to end: streaming == whole sequence, causality, gradient paths
across segments and BPTT windows, every option combination, long streams (input errors: test_model_inputs.py), and the
pitfalls of a segment-recurrent memory (read-before-write, short last segment, ...)."""

from __future__ import annotations

import itertools
from dataclasses import fields

import pytest
import torch

from selmem import SelectiveMemoryTransformer
from tests.helpers import assert_close, grads, tiny_model, tokens

# A few configurations that between them touch every option of every part.
VARIANTS = [
    pytest.param(dict(), id="default"),
    pytest.param(
        dict(select="topk", compress="avgpool", address="fifo", cache_transform="none"),
        id="topk-avgpool-fifo",
    ),
    pytest.param(
        dict(
            select="threshold",
            compress="attnpool",
            address="random",
            meta_cache=True,
            slot_decay=True,
        ),
        id="threshold-attnpool-random-meta-decay",
    ),
    pytest.param(
        dict(select="hard", compress="maxpool", read="off", short_conv=2),
        id="hard-maxpool-readoff-conv2",
    ),
    pytest.param(dict(select="all", compress="none", short_conv=0), id="all-none-noconv"),
]


def state_equal(a, b, atol: float = 0.0) -> None:
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x.is_floating_point():
            assert_close(f"state.{f.name}", x, y, atol=atol)
        else:
            assert torch.equal(x, y), f"state.{f.name} differs"


def stream(model, x, seg, state=None):
    """Segment-by-segment forward, written out by hand: (logits (B, N, V), final state)."""
    state = state if state is not None else model.init_state(x.shape[0])
    logits = []
    for start in range(0, x.shape[1], seg):
        out = model(x[:, start : start + seg], state)
        state = out.state
        logits.append(out.logits)
    return torch.cat(logits, 1), state


# --- shapes --------------------------------------------------------------------------------------
def test_output_shapes_and_stats():
    model = tiny_model()
    cfg = model.cfg
    out = model(tokens(3, 6))
    assert out.logits.shape == (3, 6, cfg.vocab_size)
    assert out.state.position.tolist() == [6, 6, 6]
    assert len(out.stats["layers"]) == cfg.n_layers
    layer = out.stats["layers"][0]
    assert layer["gate"].shape == layer["score"].shape == (3, 6)
    assert layer["write"].shape == layer["contrib"].shape == (3, 6, cfg.slots)
    R = cfg.slots  # cache transform hints, no meta-cache
    assert layer["read"].shape == (3, 6, cfg.slots + R)
    assert set(out.losses) == {"sparsity", "reconstruction", "infonce", "score_bound", "aux"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())


# --- streaming == whole sequence -----------------------------------------------------------------
@pytest.mark.parametrize("seg", [4, 7, 23], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("overrides", VARIANTS)
def test_streaming_equals_forward_sequence(overrides, seg):
    """N=23 streamed segment by segment equals forward_sequence, for T that divide N and not."""
    model = tiny_model(**overrides).eval()
    x = tokens(2, 23)
    whole = model.forward_sequence(x, segment_len=seg)
    logits, state = stream(model, x, seg)
    assert_close("logits", whole.logits, logits, atol=1e-12)
    state_equal(whole.state, state, atol=1e-12)
    assert len(whole.stats["segments"]) == -(-23 // seg)


# --- fast path == diagnostic path ----------------------------------------------------------------
FAST_VARIANTS = [
    *VARIANTS[:4],  # read on (hints, no hints, meta-cache) and off
    pytest.param(dict(read_bias="usage"), id="read-bias"),  # a prefix bias rides in SDPA's extra channel
    pytest.param(dict(read_bias="usage", cache_transform="none", credit="read"), id="bias-nohints-readcredit"),
    pytest.param(dict(read_recency="rank", read_bias="usage"), id="recency-and-usage-bias"),
]


@pytest.mark.parametrize("overrides", FAST_VARIANTS)
def test_sdpa_attention_equals_the_explicit_path(overrides):
    """attention='sdpa' (training's path) and 'explicit' (the diagnostic softmax) give the same
    logits, final state, read maps, losses and gradients over a streamed sequence, in float64."""
    x = tokens(2, 19)
    answer = torch.zeros(2, 19, dtype=torch.bool)
    answer[:, -3:] = True
    outs, gs = [], []
    for impl in ("sdpa", "explicit"):
        torch.manual_seed(0)
        model = tiny_model(attention=impl, **overrides)
        out = model.forward_sequence(x, segment_len=5, answer_mask=answer, answer_targets=x)
        (out.logits.square().mean() + out.losses["aux"]).backward()
        outs.append(out)
        gs.append(grads(model))
    fast, ref = outs
    assert_close("logits", ref.logits, fast.logits, atol=1e-12)
    state_equal(ref.state, fast.state, atol=1e-12)
    for k in ref.losses:
        assert_close(f"loss {k}", ref.losses[k], fast.losses[k], atol=1e-12)
    for s_ref, s_fast in zip(ref.stats["segments"], fast.stats["segments"], strict=True):
        for l_ref, l_fast in zip(s_ref["layers"], s_fast["layers"], strict=True):
            assert (l_ref["read"] is None) == (l_fast["read"] is None) == (overrides.get("read") == "off")
            if l_ref["read"] is not None:
                assert_close("read map", l_ref["read"], l_fast["read"], atol=1e-12)
    assert gs[0].keys() == gs[1].keys()
    for name in gs[1]:
        assert_close(f"grad {name}", gs[1][name], gs[0][name], atol=1e-10)


@pytest.mark.parametrize("overrides", VARIANTS[:3])
def test_prefix_then_rest_equals_one_call(overrides):
    """8 tokens, then the rest with the returned state, equals one forward_sequence call."""
    model = tiny_model(**overrides).eval()
    x = tokens(2, 21)
    whole = model.forward_sequence(x, segment_len=8)
    first = model.forward_sequence(x[:, :8], segment_len=8)
    rest = model.forward_sequence(x[:, 8:], segment_len=8, state=first.state)
    assert_close("logits", whole.logits, torch.cat([first.logits, rest.logits], 1), atol=1e-12)
    state_equal(whole.state, rest.state, atol=1e-12)


def test_read_off_segments_are_independent():
    """Without reads nothing crosses a segment boundary: every segment's logits equal those of a
    fresh model run on that segment alone (so positions are segment-relative too)."""
    model = tiny_model(read="off").eval()
    x = tokens(2, 15)
    whole = model.forward_sequence(x, segment_len=4)
    alone = torch.cat([model(x[:, s : s + 4]).logits for s in range(0, 15, 4)], 1)
    assert_close("logits", alone, whole.logits, atol=1e-12)


def test_batch_rows_are_independent():
    model = tiny_model().eval()
    x = tokens(2, 12)
    y = x.clone()
    y[1] = tokens(1, 12)[0]
    a, b = model.forward_sequence(x, 5), model.forward_sequence(y, 5)
    assert_close("logits row 0", a.logits[0], b.logits[0], atol=1e-12)
    assert_close("slots row 0", a.state.slots[:, 0], b.state.slots[:, 0], atol=1e-12)
    assert not torch.allclose(a.logits[1], b.logits[1])


# --- causality -----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", VARIANTS)
@pytest.mark.parametrize("p", [1, 5], ids=lambda p: f"pos{p}")
def test_causal_within_segment(overrides, p):
    model = tiny_model(**overrides).eval()
    x = tokens(2, 8)
    state = model.forward_sequence(tokens(2, 8), 8).state  # a non-trivial memory
    y = x.clone()
    y[:, p] = (y[:, p] + 1) % model.cfg.vocab_size
    a, b = model(x, state).logits, model(y, state).logits
    assert_close("earlier logits", a[:, :p], b[:, :p], atol=1e-12)
    assert not torch.allclose(a[:, p:], b[:, p:])


@pytest.mark.parametrize("overrides", VARIANTS)
def test_causal_across_segments(overrides):
    """Changing segment 2 never changes segment 1; changing segment 1 changes segment 2 exactly
    when the model reads its memory."""
    model = tiny_model(**overrides).eval()
    x = tokens(2, 16)
    y, z = x.clone(), x.clone()
    y[:, 10] = (y[:, 10] + 1) % model.cfg.vocab_size
    z[:, :8] = (z[:, :8] + 1) % model.cfg.vocab_size
    a, b, c = (model.forward_sequence(t, 8).logits for t in (x, y, z))
    assert_close("segment 1 logits", a[:, :8], b[:, :8], atol=1e-12)
    assert_close("segment 2 before the change", a[:, 8:10], b[:, 8:10], atol=1e-12)
    if model.cfg.read == "on":
        assert not torch.allclose(a[:, 8:], c[:, 8:]), (
            "segment 2 does not see segment 1 through memory"
        )
    else:
        assert_close("segment 2 without reads", a[:, 8:], c[:, 8:], atol=1e-12)


# --- gradient paths ------------------------------------------------------------------------------
WRITE_PARAMS = ("select.", "compress.", "address.")


def segment2_grads(model, x, cut: bool) -> dict[str, torch.Tensor]:
    """Gradients of a loss on segment 2's logits only; ``cut`` detaches the state in between."""
    model.zero_grad()
    state = model(x[:, :8]).state
    out = model(x[:, 8:], state.detach() if cut else state)
    (out.logits * torch.randn_like(out.logits)).sum().backward()
    return grads(model)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(dict(), id="soft-attention"),
        pytest.param(dict(select="hard", slot_decay=True, meta_cache=True), id="hard-decay-meta"),
        pytest.param(dict(select="topk", compress="attnpool"), id="topk-attnpool"),
    ],
)
def test_gradients_cross_the_segment_boundary(overrides):
    """Segment 1's write path (select, compress, address, slot decay) reaches segment 2's loss
    only through the state: nonzero gradient through it, exactly zero when it is detached.
    The cache transform also works inside segment 2, so there the two gradients must differ."""
    model = tiny_model(**overrides)
    x = tokens(2, 16)
    torch.manual_seed(1)
    full = segment2_grads(model, x, cut=False)
    torch.manual_seed(1)
    cut = segment2_grads(model, x, cut=True)
    L = model.cfg.n_layers
    names = [f"select.{l}.score.{i}.weight" for l in range(L) for i in (0, 2)]
    names += [f"address.{l}.{p}.weight" for l in range(L) for p in ("q", "k", "mix")]
    names += [f"compress.{l}.proj.weight" for l in range(L)] + ["init_slots"]
    names += ["slot_decay"] if model.cfg.slot_decay else []
    for name in names:
        assert full[name].abs().sum() > 0, f"no gradient reaches {name} through the memory"
    for name, g in cut.items():
        if name.startswith(WRITE_PARAMS) or name in ("slot_decay", "init_slots"):
            assert g.abs().sum() == 0, f"{name} gets gradient although the state was detached"
    ct = [n for n in full if n.startswith("cache_transform.")]
    assert ct and all(full[n].abs().sum() > 0 for n in ct)
    assert any(not torch.allclose(full[n], cut[n]) for n in ct), (
        "cache transform: no path through segment 1"
    )


@pytest.mark.parametrize(
    "K, loss_segment, reaches",
    [
        pytest.param(0, 3, True, id="K0-all-segments"),
        pytest.param(1, 3, False, id="K1-cut"),
        pytest.param(2, 3, False, id="K2-new-window"),
        pytest.param(2, 2, True, id="K2-same-window"),
        pytest.param(1, 2, False, id="K1-next-segment"),
        pytest.param(3, 3, True, id="K3-same-window"),
    ],
)
def test_bptt_window(K, loss_segment, reaches):
    """Each segment uses its own token ids, so the embedding rows of segment 1 carry gradient only
    through the memory: a loss on segment ``loss_segment`` reaches them iff it lies in segment 1's
    window of K segments (0 = all)."""
    model = tiny_model(bptt_segments=K)
    T = 4
    x = torch.cat(
        [tokens(2, T, lo=T * i, vocab=T * (i + 1)) for i in range(3)], 1
    )  # ids 0-3 | 4-7 | 8-11
    out = model.forward_sequence(x, segment_len=T)
    seg = out.logits[:, T * (loss_segment - 1) : T * loss_segment]
    (seg * torch.randn_like(seg)).sum().backward()
    g = model.embed.weight.grad
    assert (g[:T].abs().sum() > 0) == reaches
    assert (model.init_slots.grad.abs().sum() > 0) == reaches
    assert g[T * (loss_segment - 1) : T * loss_segment].abs().sum() > 0  # the segment's own tokens


# --- every combination of options ----------------------------------------------------------------
SELECTS = ["soft", "hard", "topk", "threshold", "all"]
COMPRESSES = ["linear", "avgpool", "maxpool", "attnpool", "none"]
ADDRESSES = ["attention", "fifo", "random"]
# (read, cache_transform, meta_cache) cycled over the select x compress x address product; with
# read='off' the cache transform is off too, so that row needs no partners. 4 is coprime to 75.
OUTER = [
    ("on", "transformer", False),
    ("on", "transformer", True),
    ("on", "none", False),
    ("off", "none", False),
]


def combo(i: int, select: str, compress: str, address: str):
    read, ct, meta = OUTER[i % len(OUTER)]
    overrides = dict(
        select=select,
        compress=compress,
        address=address,
        read=read,
        cache_transform=ct,
        meta_cache=meta,
    )
    return pytest.param(
        overrides, id=f"{select}-{compress}-{address}-read{read}-ct{ct}{'-meta' * meta}"
    )


COMBOS = [combo(i, *sca) for i, sca in enumerate(itertools.product(SELECTS, COMPRESSES, ADDRESSES))]


@pytest.mark.parametrize("overrides", COMBOS)
def test_every_option_combination_runs(overrides):
    """Constructs, streams 3 segments (the last one short), backpropagates; everything finite, and
    the write path gets gradient through the memory whenever the model reads it."""
    model = tiny_model(torch.float32, **overrides)
    state0 = model.init_state(2)
    out = model.forward_sequence(tokens(2, 10), segment_len=4)
    assert torch.isfinite(out.logits).all()
    assert all(
        getattr(out.state, f.name).shape == getattr(state0, f.name).shape for f in fields(state0)
    )
    (out.logits * torch.randn_like(out.logits)).mean().backward(retain_graph=True)  # task loss only
    for name, g in grads(model).items():
        assert torch.isfinite(g).all(), f"non-finite gradient in {name}"
    if model.cfg.read == "on":
        g = grads(model)
        if model.cfg.select != "all":
            assert g["select.0.score.0.weight"].abs().sum() > 0
        if model.cfg.address == "attention":
            assert g["address.0.q.weight"].abs().sum() > 0
        assert g["init_slots"].abs().sum() > 0
    out.losses["aux"].backward()
    assert all(torch.isfinite(g).all() for g in grads(model).values())
    # the credit probe is trained by forward_sequence(..., answer_mask=, answer_targets=) only, which the
    # training loop always passes (tests/memory/test_credit.py checks that it reaches the probe)
    unused = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith("probe.")]
    assert not unused, f"parameters outside the graph (break DDP, skew param counts): {unused}"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(dict(slot_decay=True), id="slot_decay"),
        pytest.param(dict(short_conv=0), id="no-short-conv"),
        pytest.param(dict(usage_decay=0.0), id="usage_decay0"),
        pytest.param(dict(usage_decay=1.0), id="usage_decay1"),
        pytest.param(dict(bptt_segments=1), id="bptt1"),
        pytest.param(dict(bptt_segments=2, cache_transform_layers=2), id="bptt2-ct2"),
        pytest.param(
            dict(sparsity="l1", lambda_sparse=0.0, lambda_rec=0.0, lambda_nce=0.0), id="l1-no-aux"
        ),
    ],
)
def test_other_options_run(overrides):
    model = tiny_model(torch.float32, **overrides)
    out = model.forward_sequence(tokens(2, 13), segment_len=4)
    (out.logits.square().mean() + out.losses["aux"]).backward()
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(g).all() for g in grads(model).values())
    if model.cfg.slot_decay:
        assert model.slot_decay.grad.abs().sum() > 0


# --- long streams --------------------------------------------------------------------------------
def slot_bounds(model: SelectiveMemoryTransformer) -> torch.Tensor:
    """(L, M) bound from update.py: every slot is a convex mix of its initial content and
    RMS-normed candidates (norm <= sqrt(d_mem) * max|gain|), so its norm <= the larger of the
    two."""
    cand = torch.stack([c.norm.weight.abs().max() for c in model.compress]) * model.cfg.d_mem**0.5
    return torch.maximum(model.init_slots.norm(dim=-1), cand[:, None]) + 1e-4


def run_stream(model, n_segments: int, T: int = 4, B: int = 2):
    state = model.init_state(B)
    shapes = {f.name: getattr(state, f.name).shape for f in fields(state)}
    floats, bound = state.num_floats(), slot_bounds(model)
    with torch.no_grad():
        for i in range(n_segments):
            state = model(torch.randint(0, model.cfg.vocab_size, (B, T)), state).state
            if i % 50 == 0 or i == n_segments - 1:
                assert {f.name: getattr(state, f.name).shape for f in fields(state)} == shapes
                assert state.num_floats() == floats
                for f in ("slots", "usage", "age"):
                    assert torch.isfinite(getattr(state, f)).all(), f"{f} not finite at segment {i}"
                norms = state.slots.norm(dim=-1)  # (L, B, M)
                assert (norms <= bound[:, None]).all(), (
                    f"slot norm {norms.max():.4f} over its bound at segment {i}"
                )
    assert (state.position == n_segments * T).all()
    return state


STREAM_VARIANTS = [
    pytest.param(dict(), id="default"),
    pytest.param(
        dict(select="all", compress="maxpool", address="random", slot_decay=True),
        id="all-maxpool-random-decay",
    ),
]


def stress_model(overrides: dict) -> SelectiveMemoryTransformer:
    """A float32 eval model with candidate gains beyond 1 (both signs) and initial slots larger
    than any candidate, so both sides of the bound are exercised."""
    model = tiny_model(torch.float32, **overrides).eval()
    with torch.no_grad():
        for c in model.compress:
            c.norm.weight.uniform_(-2.0, 2.0)
        model.init_slots.mul_(3.0)
    return model


@pytest.mark.parametrize("overrides", STREAM_VARIANTS)
def test_stream_1000_segments_bounded(overrides):
    """1,000 segments (500 for the second variant) of 4 random tokens; the 10,000-segment tier
    below is marked slow (about 60 s on a shared 2-core machine)."""
    state = run_stream(stress_model(overrides), 500 if overrides else 1000)
    assert (state.usage >= 0).all() and (state.age >= 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("overrides", STREAM_VARIANTS)
def test_stream_10000_segments_bounded(overrides):
    run_stream(stress_model(overrides), 10_000)


def test_slot_decay_only_shrinks_unwritten_slots():
    """With slot decay and no writes, every slot's norm decreases monotonically."""
    model = tiny_model(select="threshold", slot_decay=True).eval()
    with torch.no_grad():
        for s in model.select:
            s.threshold.fill_(1e9)  # gates exactly 0
    state = model.init_state(2)
    prev = state.slots.norm(dim=-1)
    for _ in range(5):
        state = model(tokens(2, 4), state).state
        now = state.slots.norm(dim=-1)
        assert (now < prev).all()
        prev = now


@pytest.mark.parametrize("overrides", VARIANTS[:3])
def test_segment_reads_memory_before_its_own_writes(overrides):
    """(a) Writes only affect later segments: perturbing every write parameter leaves segment 1's
    logits bit-identical and changes segment 2's; and segment 2's own write path gets no gradient
    from segment 2's logits."""
    model = tiny_model(**overrides).eval()
    x = tokens(2, 16)
    before = model.forward_sequence(x, 8).logits
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(WRITE_PARAMS) or name == "slot_decay":
                p.add_(torch.randn_like(p))
    after = model.forward_sequence(x, 8).logits
    assert torch.equal(before[:, :8], after[:, :8])
    assert not torch.allclose(before[:, 8:], after[:, 8:])
    model.zero_grad()
    state = model(x[:, :8]).state.detach()
    model(x[:, 8:], state).logits.sum().backward()
    for name, g in grads(model).items():
        if name.startswith(WRITE_PARAMS):
            assert g.abs().sum() == 0, f"{name}: a segment's logits depend on its own writes"


def test_short_last_segment_reads_and_writes():
    """(b) N=10 in segments of 4: the last segment has 2 tokens, still writes (state changes,
    position advances by 2) and still reads (its logits depend on the memory)."""
    model = tiny_model().eval()
    x = tokens(2, 10)
    out = model.forward_sequence(x, 4)
    before = model.forward_sequence(x[:, :8], 4).state
    assert (out.state.position == 10).all() and (before.position == 8).all()
    assert not torch.allclose(before.slots, out.state.slots)
    assert (out.state.age != before.age).any()
    alone = model(x[:, 8:]).logits  # the same 2 tokens with a fresh memory
    assert not torch.allclose(alone, out.logits[:, 8:])
    assert out.stats["segments"][-1]["layers"][0]["write"].shape[1] == 2


def test_initial_slots_learn():
    """(c) The learned initial slots receive gradients from the first segment (read) and later."""
    model = tiny_model()
    out = model.forward_sequence(tokens(2, 12), 4)
    out.logits[:, :4].sum().backward()
    assert model.init_slots.grad.abs().sum() > 0
    off = tiny_model(read="off")
    off.forward_sequence(tokens(2, 12), 4).logits.sum().backward()
    assert off.init_slots.grad is None or off.init_slots.grad.abs().sum() == 0


@pytest.mark.parametrize("fill", [0.0, 1.0], ids=["empty", "all-equal"])
@pytest.mark.parametrize("address", ADDRESSES)
def test_equal_or_empty_slots_stay_finite(fill, address):
    """(d) All-equal or all-zero slots with zero usage and age: ties everywhere, no NaN."""
    model = tiny_model(address=address)
    with torch.no_grad():
        model.init_slots.fill_(fill)
    out = model.forward_sequence(tokens(2, 12), 4)
    (out.logits.square().mean() + out.losses["aux"]).backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.state.slots).all()
    for name, g in grads(model).items():
        assert torch.isfinite(g).all(), f"non-finite gradient in {name}"
    assert model.init_slots.grad.abs().sum() > 0


def test_memory_does_not_decay_without_writes():
    """(e) What segment 1 wrote survives any number of segments that write nothing, bit for bit,
    and the answer to a query segment is the same after 1 or after 40 distractor segments;
    with open gates the distractors do overwrite it (so the test can fail)."""
    model = tiny_model(select="threshold").eval()
    x, query = tokens(2, 8), tokens(2, 8)
    written = model(x).state
    for tau, survives in ((1e9, True), (-1e9, False)):
        with torch.no_grad():
            for s in model.select:
                s.threshold.fill_(tau)  # +inf: gates exactly 0; -inf: gates exactly 1
        state = written
        for _ in range(40):
            state = model(tokens(2, 4), state).state
        assert torch.equal(state.slots, written.slots) == survives
        assert torch.equal(model(query, state).logits, model(query, written).logits) == survives
        if survives:
            assert torch.equal(state.provenance, written.provenance)
            assert torch.allclose(state.age, written.age + 40)
