"""Our `txl` and `rmt` against the public implementations users know.

- x-transformers' XL recurrence (``TransformerWrapper(max_mem_len=...)`` called with
  ``mems=..., return_mems=True``) is the same architecture as our `txl` once configured as below,
  so with our weights copied in it must give the same logits and the same memories.
- lucidrains' ``recurrent-memory-transformer-pytorch`` differs in its block (hyper-connections,
  value residuals, a null key, GEGLU feed-forward), so the comparison is structural: same memory
  shape and state size, comparable parameter count, the same causal and recurrent behaviour.

Skipped when the packages are missing (``pip install selmem[compare]``).
"""

from __future__ import annotations

import pytest
import torch

from selmem.baselines import build_model, params, state_size
from selmem.config import SelmemConfig

V, B, N, SEG = 11, 2, 13, 4


def tiny() -> SelmemConfig:
    """No short convolution: neither peer has one."""
    return SelmemConfig(vocab_size=V, d_model=16, n_layers=2, n_heads=2, mlp_ratio=2,
                        short_conv=0, max_segment_len=8, slots=6, d_mem=8)


# --- Transformer-XL vs x-transformers ---------------------------------------------------------
def xl_peer(cfg: SelmemConfig):
    """x-transformers' model equivalent to our `txl` for ``cfg`` (built by the compare adapter):
    pre-norm RMSNorm decoder with full-width rotary positions, GELU MLP with biases, no absolute
    positions, mem_len = slots."""
    pytest.importorskip("x_transformers")
    return build_model("txl-xtransformers", cfg).net


def copy_into_xl_peer(ours: torch.nn.Module, peer: torch.nn.Module) -> None:
    """Load our txl's weights into the x-transformers model built by ``xl_peer``."""
    d = ours.cfg.d_model

    def norm(dst, src) -> None:  # x-transformers' RMSNorm may store gain - 1 (unit_offset)
        dst.g.copy_(src.weight - float(dst.unit_offset))

    with torch.no_grad():
        peer.token_emb.emb.weight.copy_(ours.embed.weight)
        for l, block in enumerate(ours.blocks):
            (attn_norm, *_), attn, _ = peer.attn_layers.layers[2 * l]
            (ff_norm, *_), ff, _ = peer.attn_layers.layers[2 * l + 1]
            norm(attn_norm, block.norm1)
            norm(ff_norm, block.norm2)
            w = block.attn.qkv.weight
            attn.to_q.weight.copy_(w[:d])
            attn.to_k.weight.copy_(w[d : 2 * d])
            attn.to_v.weight.copy_(w[2 * d :])
            attn.to_out.weight.copy_(block.attn.out.weight)
            ff.ff[0][0].weight.copy_(block.mlp.up.weight)
            ff.ff[0][0].bias.copy_(block.mlp.up.bias)
            ff.ff[2].weight.copy_(block.mlp.down.weight)
            ff.ff[2].bias.copy_(block.mlp.down.bias)
        norm(peer.attn_layers.final_norm, ours.norm)
        peer.to_logits.weight.copy_(ours.head.weight)


def test_txl_matches_x_transformers_xl_recurrence() -> None:
    cfg = tiny()
    peer = xl_peer(cfg).double().eval()
    ours = build_model("txl", cfg).double()
    assert params(peer) == params(ours)  # the very same architecture
    copy_into_xl_peer(ours, peer)
    x = torch.randint(0, V, (B, N))
    out = ours.forward_sequence(x, segment_len=SEG)
    mems, logits = None, []
    for start in range(0, N, SEG):
        lg, mems = peer(x[:, start : start + SEG], mems=mems, return_mems=True)
        logits.append(lg)
    # the two RMSNorms differ only in where their epsilon sits (ours 1e-6 inside the rsqrt)
    torch.testing.assert_close(torch.cat(logits, 1), out.logits, atol=1e-5, rtol=1e-5)
    assert len(mems) == cfg.n_layers
    for l, mem in enumerate(mems):
        torch.testing.assert_close(mem, out.state.memory[l], atol=1e-5, rtol=1e-5)
    assert sum(m.numel() for m in mems) // B == state_size("txl", cfg)


# --- RMT vs recurrent-memory-transformer-pytorch ----------------------------------------------
def rmt_peer(cfg: SelmemConfig):
    """lucidrains' RMT closest to our `rmt` for ``cfg`` (built by the compare adapter): M = slots
    memory tokens, rotary positions only, one residual stream, no XL memories;
    ``add_write_to_next_write_mem`` makes its write tokens start from the carried memory, as in
    the paper and in ours."""
    pytest.importorskip("recurrent_memory_transformer_pytorch")
    return build_model("rmt-lucidrains", cfg).net


def _stream_peer(peer, x):
    mem, logits = None, []
    for start in range(0, x.shape[1], SEG):
        lg, mem, _ = peer(x[:, start : start + SEG], mem)
        logits.append(lg)
    return torch.cat(logits, 1), mem


def test_rmt_structure_matches_recurrent_memory_transformer_pytorch() -> None:
    cfg = tiny()
    peer = rmt_peer(cfg).double().eval()
    ours = build_model("rmt", cfg).double()
    assert 0.8 < params(peer) / params(ours) < 1.25, (params(peer), params(ours))
    x = torch.randint(0, V, (B, N))
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % V  # inside the second segment
    for run in (lambda t: _stream_peer(peer, t), lambda t: _ours(ours, t)):
        (lx, mem), (ly, _) = run(x), run(y)
        assert lx.shape == (B, N, V)
        assert mem.shape == (B, cfg.slots, cfg.d_model)  # the carried state
        assert mem.numel() // B == state_size("rmt", cfg)
        torch.testing.assert_close(lx[:, :6], ly[:, :6], atol=0.0, rtol=0.0)  # causal
        assert not torch.allclose(lx[:, 8:], ly[:, 8:])  # the memory carries segment 2 into 3


def test_rmt_gradient_flows_through_memory_in_both() -> None:
    """Both backpropagate a later segment's loss into the memory carried from an earlier one."""
    cfg = tiny()
    x = torch.randint(0, V, (B, 2 * SEG))
    peer = rmt_peer(cfg)
    _, mem, _ = peer(x[:, :SEG])
    mem = mem.detach().requires_grad_(True)
    peer(x[:, SEG:], mem)[0].square().sum().backward()
    assert mem.grad.abs().sum() > 0
    ours = build_model("rmt", cfg)
    state = ours(x[:, :SEG]).state.detach()
    state.memory.requires_grad_(True)
    ours(x[:, SEG:], state).logits.square().sum().backward()
    assert state.memory.grad.abs().sum() > 0


def _ours(model, x):
    out = model.forward_sequence(x, segment_len=SEG)
    return out.logits, out.state.memory


# --- the peers behind our interface, as compare trains them ---------------------------------
def test_xtransformers_peer_streams_like_our_txl() -> None:
    pytest.importorskip("x_transformers")
    cfg = tiny()
    ours, peer = build_model("txl", cfg).double(), build_model("txl-xtransformers", cfg).double().eval()
    copy_into_xl_peer(ours, peer.net)
    x = torch.randint(0, V, (B, N))
    out = peer.forward_sequence(x, segment_len=SEG)
    torch.testing.assert_close(out.logits, ours.forward_sequence(x, segment_len=SEG).logits, atol=1e-5, rtol=1e-5)
    assert peer.state_size() == state_size("txl", cfg) == state_size("txl-xtransformers", cfg)


@pytest.mark.parametrize("name", ["txl-xtransformers", "rmt-lucidrains"])
def test_peer_trains_in_compare(name, tmp_path) -> None:
    pytest.importorskip({"txl-xtransformers": "x_transformers",
                         "rmt-lucidrains": "recurrent_memory_transformer_pytorch"}[name])
    from selmem.analysis.compare import CompareConfig, compare
    from tests.analysis.test_compare import smoke

    threads = torch.get_num_threads()
    try:
        out_dir, _ = compare(smoke(tmp_path, steps=2, eval_every=2, batch_size=4),
                             CompareConfig(models=[name], seeds=[0], workers=1, name="c"))
    finally:
        torch.set_num_threads(threads)
    assert (out_dir / f"{name}-s0" / "results.json").is_file()
    assert f"| {name} |" in (out_dir / "results.md").read_text()


@pytest.mark.parametrize("name, module", [("txl-xtransformers", "x_transformers"),
                                          ("rmt-lucidrains", "recurrent_memory_transformer_pytorch")])
def test_missing_peer_package_says_how_to_install_it(name, module, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail, installed or not
    with pytest.raises(ImportError, match=r"pip install 'selmem\[compare\]'"):
        build_model(name, tiny())
