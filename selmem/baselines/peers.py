"""The public implementations our `txl` and `rmt` are checked against, behind our interface, so
that ``selmem compare`` trains them in the same loop, on the same batches, for the same budget:

    selmem compare --config configs/recall.yaml --compare.models txl txl-xtransformers rmt rmt-lucidrains

- ``txl-xtransformers``: x-transformers' ``TransformerWrapper`` with ``max_mem_len = slots``,
  configured as our `txl` (tests/baselines/test_peers.py shows the two give the same logits with
  the same weights).
- ``rmt-lucidrains``: lucidrains' ``recurrent-memory-transformer-pytorch`` with ``slots`` memory
  tokens, the peer closest to our `rmt` (its block differs: hyper-connections, value residuals,
  GEGLU feed-forward).

Optional: ``pip install 'selmem[compare]'``; building one without its package raises an
ImportError that says so. Neither has a short convolution, so ``short_conv`` is ignored here;
both carry the same state as ours.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from selmem.baselines.rmt import RecurrentMemoryTransformer
from selmem.baselines.txl import TransformerXL
from selmem.config import SelmemConfig
from selmem.model import Output


def _need(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this peer model needs the {package} package: pip install 'selmem[compare]'") from None


class _Peer(nn.Module):
    """Streams a peer package's model over segments; the carried memory is the peer's own."""

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.net = self.build(cfg)

    def build(self, cfg: SelmemConfig) -> nn.Module:
        raise NotImplementedError

    def segment(self, tokens: Tensor, mem: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def state_size(self, seq_len: int | None = None) -> int:
        return self.state_floats(self.cfg, seq_len)

    def forward_sequence(self, tokens: Tensor, segment_len: int | None = None, state: Any = None) -> Output:
        """(B, N) -> logits (B, N, V), streaming segments of ``segment_len`` through the peer and
        detaching its memory every ``bptt_segments`` segments, as ``run_segments`` does for ours."""
        seg = segment_len or self.cfg.max_segment_len
        if not 1 <= seg <= self.cfg.max_segment_len:
            raise ValueError(f"segment_len must be in [1, max_segment_len={self.cfg.max_segment_len}], got {seg}")
        K, mem, logits = self.cfg.bptt_segments, state, []
        for i, start in enumerate(range(0, tokens.shape[1], seg)):
            if K and i and i % K == 0:
                mem = _detach(mem)
            lg, mem = self.segment(tokens[:, start : start + seg].long(), mem)
            logits.append(lg)
        zero = logits[0].new_zeros(())
        return Output(torch.cat(logits, 1), mem, {}, {"aux": zero})


def _detach(mem: Any) -> Any:
    if mem is None:
        return None
    if isinstance(mem, Tensor):
        return mem.detach()
    return [m.detach() for m in mem]


class XTransformersXL(_Peer):
    """x-transformers' XL recurrence: each layer attends to its cached inputs of the last
    ``slots`` positions (no gradient into the cache, as in Transformer-XL)."""

    state_floats = staticmethod(TransformerXL.state_floats)

    def build(self, cfg: SelmemConfig) -> nn.Module:
        xt = _need("x_transformers", "x-transformers")
        D = cfg.d_model // cfg.n_heads
        return xt.TransformerWrapper(
            num_tokens=cfg.vocab_size, max_seq_len=cfg.max_segment_len, max_mem_len=cfg.slots,
            use_abs_pos_emb=False,
            attn_layers=xt.Decoder(dim=cfg.d_model, depth=cfg.n_layers, heads=cfg.n_heads, attn_dim_head=D,
                                   ff_mult=cfg.mlp_ratio, use_rmsnorm=True, rotary_pos_emb=True,
                                   rotary_emb_dim=D))

    def segment(self, tokens: Tensor, mem: Any) -> tuple[Tensor, Any]:
        logits, mems = self.net(tokens, mems=mem, return_mems=True)
        return logits, mems


class LucidrainsRMT(_Peer):
    """recurrent-memory-transformer-pytorch with ``slots`` read/write memory tokens whose outputs
    are carried (with gradient) to the next segment."""

    state_floats = staticmethod(RecurrentMemoryTransformer.state_floats)

    def build(self, cfg: SelmemConfig) -> nn.Module:
        rmtp = _need("recurrent_memory_transformer_pytorch", "recurrent-memory-transformer-pytorch")
        return rmtp.RecurrentMemoryTransformer(
            cfg.d_model, num_tokens=cfg.vocab_size, depth=cfg.n_layers, num_memory_tokens=cfg.slots,
            seq_len=cfg.max_segment_len, heads=cfg.n_heads, dim_head=cfg.d_model // cfg.n_heads,
            ff_mult=cfg.mlp_ratio, abs_pos_emb=False, rotary_pos_emb=True, use_xl_memories=False,
            num_residual_streams=1, add_write_to_next_write_mem=True, next_write_mem_stop_grad=False,
            emb_gradient_frac=1.0)

    def segment(self, tokens: Tensor, mem: Any) -> tuple[Tensor, Any]:
        logits, mem, _ = self.net(tokens, mem)
        return logits, mem
