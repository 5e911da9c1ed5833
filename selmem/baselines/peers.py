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

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from selmem.baselines.base import check_tokens
from selmem.baselines.rmt import RecurrentMemoryTransformer
from selmem.baselines.txl import TransformerXL
from selmem.config import SelmemConfig
from selmem.model import Output, run_segments


def _need(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this peer model needs the {package} package: pip install 'selmem[compare]'") from None


@dataclass
class PeerState:
    """A peer package's own carried memory: a tensor, a list of tensors, or None (fresh)."""

    memory: Any = None

    def detach(self) -> PeerState:
        m = self.memory
        if m is None or isinstance(m, Tensor):
            return PeerState(None if m is None else m.detach())
        return PeerState([x.detach() for x in m])


class _Peer(nn.Module):
    """A peer package's model behind our segment interface; ``forward_sequence`` is the same
    ``run_segments`` loop as ours (segments, truncated BPTT, concatenated logits)."""

    arch: ClassVar[str]
    """The name runs and commands know the model by (``baselines.PEERS``)."""
    state_knob: ClassVar[str | None] = "slots"
    """The config field that sizes the carried state, as SegmentModel's."""
    sequence_inputs: ClassVar[frozenset[str]] = frozenset()
    """The training loop's extra inputs to ``forward_sequence``, as SegmentModel's: none."""

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

    def forward(self, tokens: Tensor, state: PeerState | None = None) -> Output:
        """One segment (B, T) -> logits (B, T, V) and the peer's memory after it."""
        check_tokens(tokens, self.cfg)
        logits, mem = self.segment(tokens.long(), None if state is None else state.memory)
        return Output(logits, PeerState(mem), {}, {"aux": logits.new_zeros(())})

    def forward_sequence(self, tokens: Tensor, segment_len: int | None = None,
                         state: PeerState | None = None) -> Output:
        return run_segments(self, tokens, segment_len, state)


class XTransformersXL(_Peer):
    """x-transformers' XL recurrence: each layer attends to its cached inputs of the last
    ``slots`` positions (no gradient into the cache, as in Transformer-XL)."""

    arch = "txl-xtransformers"

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

    arch = "rmt-lucidrains"

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
