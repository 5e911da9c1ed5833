"""`lstm`: an LSTM language model, the recurrent baseline of DESIGN §5.

Legend: L layers, B batch, T segment length, H hidden width, V vocabulary.

embed (V -> H) -> nn.LSTM (L layers, width H) -> Linear head (H -> V). H is chosen so that the
parameter count matches SelectiveMemoryTransformer's for the same config as closely as an
integer width allows (``lstm_hidden``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from selmem.baselines.base import BaselineState, SegmentModel, zero_position
from selmem.config import SelmemConfig


def lstm_params(cfg: SelmemConfig, hidden: int) -> int:
    """Parameters of LSTMLanguageModel at width ``hidden``: embedding + head 2VH, and per layer
    4 gates x (input and recurrent weights 2H^2, two biases 2H)."""
    return 2 * cfg.vocab_size * hidden + cfg.n_layers * (8 * hidden * hidden + 8 * hidden)


def lstm_hidden(cfg: SelmemConfig) -> int:
    """The width whose parameter count is closest to selmem's for ``cfg`` (counted on the meta
    device: nothing is allocated)."""
    from selmem.model import SelectiveMemoryTransformer  # the model the comparison is against

    with torch.device("meta"):
        model = SelectiveMemoryTransformer(cfg)
        target = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("probe."))
    a, b = 8 * cfg.n_layers, 2 * cfg.vocab_size + 8 * cfg.n_layers  # a H^2 + b H = target
    root = (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    return min(candidates, key=lambda h: abs(lstm_params(cfg, h) - target))


@dataclass
class LSTMState(BaselineState):
    """h: (L, B, H) hidden states; c: (L, B, H) cell states."""

    h: Tensor
    c: Tensor


class LSTMLanguageModel(SegmentModel):
    """LSTM LM. Uses vocab_size, n_layers, max_segment_len, and the whole config to size H
    (``lstm_hidden``); d_model, n_heads, mlp_ratio, short_conv, slots and d_mem do not apply
    to its layers. Carries 2 * n_layers * H floats."""

    arch = "lstm"
    state_type = LSTMState

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__(cfg)
        H = self.hidden = lstm_hidden(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, H)
        self.lstm = nn.LSTM(H, H, num_layers=cfg.n_layers, batch_first=True)
        self.head = nn.Linear(H, cfg.vocab_size, bias=False)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> LSTMState:
        w = self.head.weight
        device = device or w.device
        shape = (self.cfg.n_layers, batch_size, self.hidden)
        zeros = torch.zeros(shape, dtype=w.dtype, device=device)
        return LSTMState(position=zero_position(batch_size, device), h=zeros, c=zeros.clone())

    @staticmethod
    def state_floats(cfg: SelmemConfig, seq_len: int | None = None) -> int:
        return 2 * cfg.n_layers * lstm_hidden(cfg)

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int | None, ...]]:
        shape = (self.cfg.n_layers, batch_size, self.hidden)
        return {"h": shape, "c": shape}

    def step(self, tokens: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        hc = (state.h.contiguous(), state.c.contiguous())
        y, (h, c) = self.lstm(self.embed(tokens), hc)  # (B, T, H)
        return self.head(y), LSTMState(position=state.position + tokens.shape[1], h=h, c=c)
