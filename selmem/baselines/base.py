"""What every baseline shares: its state's bookkeeping, the input checks, the segment loop.

Legend: B batch, T segment length, N sequence length, L layers, d model width, V vocabulary.

A baseline subclasses ``SegmentModel`` and writes three things: ``init_state``, ``step`` (one
segment -> logits and the next state) and ``state_floats`` (the floats it carries between
segments, as a formula of the config). ``forward``, ``forward_sequence`` and ``state_size`` then
behave exactly like ``SelectiveMemoryTransformer``'s, so one training loop drives every model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from selmem.baselines.attention import Block
from selmem.config import SelmemConfig
from selmem.layers import RMSNorm
from selmem.model import Output, run_segments


@dataclass
class BaselineState:
    """Base of every baseline's state: a dataclass of tensors whose dim 1 (dim 0 for
    ``position``) is the batch. Subclasses add their own tensor fields.

    position: (B,) long, tokens streamed so far (absolute position of the next segment's start).
    """

    position: Tensor

    @property
    def batch_size(self) -> int:
        return self.position.shape[0]

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def num_floats(self) -> int:
        """Floats carried per sequence: numel of every floating-point field / batch size."""
        total = sum(t.numel() for t in self.tensors().values() if t.is_floating_point())
        return total // self.batch_size

    def detach(self) -> BaselineState:
        """The truncated-BPTT boundary: same values, no graph to earlier segments."""
        return replace(self, **{k: t.detach() for k, t in self.tensors().items()})

    def to(self, device: torch.device | str) -> BaselineState:
        return replace(self, **{k: t.to(device) for k, t in self.tensors().items()})


class SegmentModel(nn.Module):
    """A model that streams an input segment by segment, with ``SelectiveMemoryTransformer``'s
    interface. Subclasses set ``state_type`` and implement ``init_state``, ``step``,
    ``state_floats`` and (optionally) ``state_shapes``."""

    state_type: type[BaselineState] = BaselineState
    arch: ClassVar[str]
    """The name runs and commands know the model by (``baselines.MODELS``, ``ExperimentConfig.arch``)."""
    state_knob: ClassVar[str | None] = None
    """The config field that sizes the carried state, which ``selmem compare`` sets so that the
    model carries about as many floats as selmem (None: its state does not follow one)."""
    sequence_inputs: ClassVar[frozenset[str]] = frozenset()
    """The keyword inputs of ``forward_sequence`` beyond selmem's first three that the training
    loop may hand it (as ``SelectiveMemoryTransformer.sequence_inputs``): none."""

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()

    # --- what a subclass writes ---------------------------------------------------------------
    def init_state(self, batch_size: int,
                   device: torch.device | str | None = None) -> BaselineState:
        raise NotImplementedError

    def step(self, tokens: Tensor, state: BaselineState) -> tuple[Tensor, BaselineState]:
        """One checked segment: tokens (B, T) -> logits (B, T, V), the state after the segment."""
        raise NotImplementedError

    @staticmethod
    def state_floats(cfg: SelmemConfig, seq_len: int | None = None) -> int:
        """Floats carried per sequence between segments (after ``seq_len`` tokens, where the
        state grows with the input)."""
        raise NotImplementedError

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int | None, ...]]:
        """Expected shape of each state tensor (None = any size), checked at the boundary."""
        return {}

    # --- the shared interface -----------------------------------------------------------------
    def state_size(self, seq_len: int | None = None) -> int:
        """Floats carried per sequence between segments (``seq_len`` only matters to models whose
        state grows with the input, such as ``full``)."""
        return self.state_floats(self.cfg, seq_len)

    def forward(self, tokens: Tensor, state: BaselineState | None = None) -> Output:
        """Process one segment. tokens (B, T) integer ids, T <= max_segment_len."""
        state = self._check(tokens, state)
        logits, new_state = self.step(tokens.long(), state)
        zero = logits.new_zeros(())
        return Output(logits, new_state, {"start": state.position.clone()}, {"aux": zero})

    def forward_sequence(self, tokens: Tensor, segment_len: int | None = None,
                         state: BaselineState | None = None) -> Output:
        """Stream a whole sequence (B, N) through ``forward`` in segments of ``segment_len``
        (default max_segment_len; the last may be shorter), detaching the state every
        ``bptt_segments`` segments. Logits (B, N, V); losses averaged over segments."""
        return run_segments(self, tokens, segment_len, state)

    def _check(self, tokens: Tensor, state: BaselineState | None) -> BaselineState:
        check_tokens(tokens, self.cfg)
        B = tokens.shape[0]
        if state is None:
            return self.init_state(B, tokens.device)
        if not isinstance(state, self.state_type):
            raise TypeError(f"state must be a {self.state_type.__name__} (from model.init_state), "
                            f"got {type(state).__name__}")
        if state.batch_size != B:
            raise ValueError(f"state was made for batch size {state.batch_size}, "
                             f"but tokens have batch size {B}")
        for name, want in self.state_shapes(B).items():
            got = tuple(getattr(state, name).shape)
            fits = len(got) == len(want) and all(
                w is None or g == w for g, w in zip(got, want, strict=True))
            if not fits:
                shown = tuple("*" if w is None else w for w in want)
                raise ValueError(f"state does not fit this model: {name} {got}, expected {shown}")
        return state


def check_tokens(tokens: Any, cfg: SelmemConfig) -> None:
    """Validate a segment at the boundary, with messages that say what to pass (as model._check)."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
        raise TypeError(f"tokens must be an integer tensor of token ids, got dtype {tokens.dtype}")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape (batch, segment_len), got {tuple(tokens.shape)}")
    T = tokens.shape[1]
    if T == 0:
        raise ValueError("empty segment: tokens has length 0 along the segment axis")
    if T > cfg.max_segment_len:
        raise ValueError(f"segment of length {T} exceeds max_segment_len={cfg.max_segment_len}; "
                         "use forward_sequence(tokens, segment_len) to stream a longer input")
    if tokens.shape[0] == 0:
        raise ValueError("empty batch: tokens has batch size 0")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= cfg.vocab_size:
        raise ValueError(f"token ids must lie in [0, vocab_size={cfg.vocab_size}), "
                         f"got range [{lo}, {hi}]")


def zero_position(batch_size: int, device: torch.device | str | None) -> Tensor:
    """(B,) long zeros: the position of a fresh stream. Raises on a batch size below 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.zeros(batch_size, dtype=torch.long, device=device)


class TransformerLM(SegmentModel):
    """embed -> Blocks -> RMSNorm -> Linear head: selmem's stack without the memory parts.
    Subclasses decide what the blocks see besides the segment. Uses vocab_size, d_model,
    n_layers, n_heads, mlp_ratio, short_conv, max_segment_len."""

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__(cfg)
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.mlp_ratio, layer_idx=l,
                                          conv_kernel=cfg.short_conv)
                                    for l in range(cfg.n_layers))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)

    def _like(self) -> dict[str, Any]:
        """dtype and device of the parameters, for fresh state tensors."""
        return {"dtype": self.head.weight.dtype, "device": self.head.weight.device}
