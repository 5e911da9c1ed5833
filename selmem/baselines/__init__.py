"""Baselines of DESIGN §5, each with SelectiveMemoryTransformer's interface and config.

Every model is built from the same ``SelmemConfig`` so a comparison uses one config; each class
documents which fields it uses. ``forward(tokens, state) -> Output``, ``init_state``,
``forward_sequence`` and ``state_size`` behave as in ``selmem.model``.

    model = build_model("armt", SelmemConfig(d_model=64, n_layers=2, slots=16, d_mem=32))
    params(model), state_size("armt", cfg)        # parameters, floats carried per sequence
"""

from __future__ import annotations

from torch import nn

from selmem.baselines.armt import AssociativeRecurrentMemoryTransformer
from selmem.baselines.full import FullAttentionTransformer
from selmem.baselines.local import LocalTransformer
from selmem.baselines.lstm import LSTMLanguageModel
from selmem.baselines.peers import LucidrainsRMT, XTransformersXL
from selmem.baselines.rmt import RecurrentMemoryTransformer
from selmem.baselines.txl import TransformerXL
from selmem.config import SelmemConfig
from selmem.model import SelectiveMemoryTransformer

# every model with the full interface, under the name its class declares (``arch``), in the
# order tables show them: selmem, its bounds, then the memories it is compared with
MODELS: dict[str, type[nn.Module]] = {cls.arch: cls for cls in (
    SelectiveMemoryTransformer,
    FullAttentionTransformer,  # KV cache of the whole input: upper bound
    LocalTransformer,  # no memory: lower bound
    TransformerXL,  # cached layer inputs, mem_len = slots
    RecurrentMemoryTransformer,  # slots memory tokens
    AssociativeRecurrentMemoryTransformer,  # d_mem x d_model associative matrix per layer
    LSTMLanguageModel,  # width matched to selmem's parameter count
)}

# the public implementations of txl and rmt (optional packages), trainable by compare; they stream
# with forward_sequence only, so they are not in MODELS, whose members share the full interface
PEERS: dict[str, type[nn.Module]] = {cls.arch: cls for cls in (XTransformersXL, LucidrainsRMT)}

# every name a run may give as its arch (ExperimentConfig.arch): MODELS, then PEERS
ARCHS: dict[str, type[nn.Module]] = {**MODELS, **PEERS}

# which config field sizes each model's carried state, as its class declares (None: not adjustable)
STATE_KNOB: dict[str, str | None] = {name: cls.state_knob for name, cls in ARCHS.items()}


def build_model(name: str, cfg: SelmemConfig) -> nn.Module:
    """The model registered as ``name`` (in MODELS or PEERS), built from ``cfg``."""
    if name not in ARCHS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS) + sorted(PEERS)}")
    return ARCHS[name](cfg)


def params(model: nn.Module) -> int:
    """Number of parameters the model runs with. selmem's credit probe (``probe.*``) is left out: it
    is a train-time teacher that inference never touches (``train_only_params`` counts it)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("probe."))


def train_only_params(model: nn.Module) -> int:
    """Parameters used in training only (selmem's credit probe); 0 for the other models."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("probe."))


def state_size(name: str, cfg: SelmemConfig, seq_len: int | None = None) -> int:
    """Floats model ``name`` carries per sequence between segments under ``cfg``, without
    building it. ``seq_len`` (tokens streamed so far) is needed by ``full`` only, whose KV cache
    grows with the input; the other models' states are constant."""
    if name not in ARCHS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS) + sorted(PEERS)}")
    return ARCHS[name].state_floats(cfg, seq_len)


__all__ = ["ARCHS", "MODELS", "PEERS", "STATE_KNOB", "build_model", "params", "state_size"]
