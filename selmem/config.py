"""SelmemConfig: every option of DESIGN.md section 2 as one typed, validated field; the training
objective's (the auxiliary losses, head B's teacher) in an ObjectiveConfig of their own, which a
SelmemConfig holds as ``objective`` and also spells flat (``cfg.credit``), as before they moved.

Load from YAML with ``SelmemConfig.from_yaml(path)`` (unknown keys are an error), save with
``cfg.to_yaml(path)``, override from the command line through tyro (``selmem train --help``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tyro
import yaml

Read = Literal["on", "off"]
ReadBias = Literal["none", "usage"]
ReadQuery = Literal["rotary", "plain"]
ReadRecency = Literal["off", "rank"]
WriteNew = Literal["mix", "allocate"]
Select = Literal["soft", "hard", "topk", "threshold", "all"]
Compress = Literal["linear", "avgpool", "maxpool", "attnpool", "none"]
Address = Literal["attention", "fifo", "random"]
CacheTransform = Literal["transformer", "none"]
Sparsity = Literal["target", "l1", "budget"]
CreditGrad = Literal["trunk", "head"]
GateGrad = Literal["task", "teacher"]
ProbeTarget = Literal["auto", "sum", "max", "peak"]
ReadTarget = Literal["share", "top1"]
Credit = Literal["none", "read", "probe"]
AddressWeights = Literal["softmax", "sparsemax", "top1"]
NonFinite = Literal["stop", "skip"]
AttentionImpl = Literal["sdpa", "explicit"]
WriteImpl = Literal["batched", "per_layer"]
Autocast = Literal["none", "bf16"]

C = TypeVar("C")


@dataclass
class ObjectiveConfig:
    """The training objective of a selective memory (memory/objective.py ``Objective``): the weights
    of the memory's self-supervised losses and head B's teacher. None of it changes what ``forward``
    computes; a ``SelmemConfig`` holds one as ``objective`` and spells its fields flat as well
    (``cfg.credit``, ``SelmemConfig(credit='none')``, ``--model.credit``, ``model: {credit: none}``)."""

    sparsity: Sparsity = "budget"
    """'target': (mean gate - write_rate)^2 per layer; 'l1': mean gate; 'budget': relu(mean gate -
    write_rate)^2 per layer, a ceiling that never asks a layer to write more than it chooses to."""
    write_rate: float = 0.25
    """Target write rate rho of the sparsity loss."""
    lambda_sparse: float = 0.1
    """Weight of the sparsity loss."""
    lambda_rec: float = 0.01
    """Weight of the reconstruction loss (decoder d_mem -> d on written candidates)."""
    lambda_nce: float = 0.01
    """Weight of the predictive InfoNCE loss (memory before a segment vs. the segment)."""
    nce_temperature: float = 0.1
    """Temperature of the InfoNCE logits."""
    lambda_score: float = 0.0
    """Weight of the score bound: mean relu(|s| - score_margin)^2 over head B's scores, which
    pulls a saturated gate back to where it has a gradient (the router z-loss of ST-MoE, for a
    sigmoid gate)."""
    credit: Credit = "probe"
    """A direct teacher for head B (memory/credit.py): 'read' = tokens whose slots the answers
    read more than other tokens did; 'probe' = tokens a train-time attention probe over the
    training window retrieves at the answers; 'none'. Needs the batch's scored positions and
    targets (forward_sequence(..., answer_mask=, answer_targets=)); the training loop passes them."""
    probe_layers: int = 1
    """Causal full-attention blocks of the credit probe before its retrieval attention."""
    probe_window: int = 0
    """Segments back the probe's retrieval attention may look from an answer's segment (0 = every
    earlier segment of the training window). On long rows the full retrieval costs B*N^2, more than
    the model: at 2,048-byte rows in segments of 128 a selmem step took 10 times a txl step. With
    a window of W segments it costs B*N*W*T; the memory is then taught only what is needed within
    W segments (set it to the segments the gradients flow through, ``bptt_segments``)."""
    lambda_credit: float = 1.0
    """Weight of the credit loss (and of the probe's own loss)."""
    probe_target: ProbeTarget = "auto"
    """How the probe's retrieval attention at the answers becomes head B's target per token:
    'sum' = min(1, sum over answers) (a token retrieved by many answers, or a little by each of
    many, is worth keeping); 'max' = the largest single answer's attention on it (a token some
    answer retrieves sharply); 'auto' = 'max' in a batch where more than half of the positions are
    answers (language modelling), else 'sum'. The two agree when each token serves one answer.
    Where every position is an answer the diffuse attentions sum to "keep everything", which cost
    code-lm 0.13 bits per byte; on recall 'max' starts near 0 everywhere and closed the gates
    (docs/FINDINGS.md section 9). 'peak' = each answer's attention relative to its own largest
    entry (the probe's null included), then the largest over answers: 1 on what an answer
    retrieves most, at any answer density (memory/credit.py ``probe_losses``)."""
    lambda_read: float = 0.0
    """Weight of the read teacher (credit='probe' only; memory/credit.py ``read_teacher_loss``): at
    each answer, the read over a layer's own slots is pulled toward the slots holding what the
    probe retrieves there, so the read learns where a fact is as full attention does."""
    read_target: ReadTarget = "share"
    """The read teacher's target over a layer's slots at an answer: 'share' = each slot's share of
    what the probe retrieves there (a distribution); 'top1' = the slot holding most of it alone
    (a decision: the cross-entropy can reach 0 where the read finds the fact)."""
    read_mass: bool = False
    """The read teacher also teaches *how much* to read the memory: at each answer, the read's
    total attention on the layer's own slots (against the segment's tokens) is pulled toward
    m = min(1, the share of what the probe retrieves that the memory still holds), by a binary
    cross-entropy. The slot target renormalises the read over the slots, so alone it teaches
    which slot and never how strongly (on the 16-pair state point the read found the right slot
    at 95-100% of the answers with 0.28-0.35 of its attention: docs/FINDINGS.md 12)."""
    score_margin: float = 4.0
    """Scores within +-score_margin (gates in [0.018, 0.982] at 4) are not penalised."""

    def validate(self) -> ObjectiveConfig:
        """Raise ValueError naming the first impossible field; return self."""
        check_field_types(self)
        for f in fields(self):
            _check_literal(f.name, getattr(self, f.name), _hint(type(self), f.name))
        if not 0.0 <= self.write_rate <= 1.0:
            raise ValueError(f"write_rate must be in [0, 1], got {self.write_rate}")
        if self.nce_temperature <= 0:
            raise ValueError(f"nce_temperature must be > 0, got {self.nce_temperature}")
        for name in ["lambda_sparse", "lambda_rec", "lambda_nce", "lambda_score", "score_margin", "lambda_credit",
                     "probe_layers", "lambda_read", "probe_window"]:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.read_mass and (self.lambda_read == 0 or self.credit != "probe"):
            raise ValueError("read_mass is a term of the read teacher, so it needs credit='probe' and "
                             f"lambda_read > 0 (got credit={self.credit!r}, lambda_read={self.lambda_read})")
        return self

    @property
    def has_teacher(self) -> bool:
        """Whether head B has a teacher (credit 'read' or 'probe' with a weight), which needs each
        training window's scored positions."""
        return self.credit != "none" and self.lambda_credit != 0


OBJECTIVE_FIELDS = frozenset(f.name for f in fields(ObjectiveConfig))
"""The names by which a SelmemConfig spells its objective's fields flat."""


def nest_objective(data: Any) -> Any:
    """A SelmemConfig mapping with the objective's fields under ``objective``, whichever way they
    came: flat (``credit: none``, as every run folder before ObjectiveConfig has them) or nested
    (``objective: {credit: none}``). A field given both ways is an error naming it; anything but a
    mapping is returned as it is (``from_dict`` names it)."""
    if not isinstance(data, dict):
        return data
    flat = {k: v for k, v in data.items() if k in OBJECTIVE_FIELDS}
    if not flat:
        return dict(data)
    nested = data.get("objective") or {}
    if not isinstance(nested, dict):
        raise ValueError(f"objective must be a mapping of ObjectiveConfig fields, got {type(nested).__name__}")
    twice = sorted(set(flat) & set(nested))
    if twice:
        raise ValueError(f"{twice} given twice, as model fields and under objective: give each once")
    rest = {k: v for k, v in data.items() if k not in OBJECTIVE_FIELDS}
    return {**rest, "objective": {**nested, **flat}}


def flatten_objective(data: dict[str, Any]) -> dict[str, Any]:
    """``nest_objective``'s inverse: a SelmemConfig mapping with the objective's fields beside the
    model's, as Hugging Face's config.json (flat, as HF configs are) and every config written
    before ObjectiveConfig spell them."""
    data = nest_objective(data)
    nested = data.pop("objective", None) or {}
    return {**data, **(asdict(nested) if isinstance(nested, ObjectiveConfig) else nested)}


def _objective_spelled_flat(cls: type[C]) -> type[C]:
    """Let ``cls.__init__`` (and so ``dataclasses.replace``) take the objective's fields flat,
    ``SelmemConfig(credit='none')``: a flat field overrides the same field of ``objective=``, which
    is what ``replace(cfg, credit=...)`` needs (it passes the old objective beside the change)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in OBJECTIVE_FIELDS}
        init(self, *args, **kwargs)
        if isinstance(self.objective, dict):  # SelmemConfig(**asdict(cfg))
            object.__setattr__(self, "objective", ObjectiveConfig(**self.objective))
        if isinstance(self.objective, ObjectiveConfig):  # always a copy: a replace()d config owns its own
            object.__setattr__(self, "objective", dataclasses.replace(self.objective, **flat))
        elif flat:
            raise ValueError(f"objective must be an ObjectiveConfig (in YAML a mapping of its fields), "
                             f"got {type(self.objective).__name__}")

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_objective_spelled_flat
@dataclass
class SelmemConfig:
    """The selective-memory Transformer. Defaults are the small CPU model used by the demo."""

    vocab_size: int = 64
    """Number of token ids; inputs must lie in [0, vocab_size)."""
    d_model: int = 64
    """Model width d."""
    n_layers: int = 2
    """Number of layers L; each owns a memory bank."""
    n_heads: int = 4
    """Attention heads H of every block."""
    mlp_ratio: int = 4
    """MLP hidden width = mlp_ratio * d_model."""
    short_conv: int = 4
    """Kernel of a causal depthwise convolution before each block's attention (0 or 1 = none):
    binds each token to its neighbours, the key to its value in recall (Zoology)."""
    max_segment_len: int = 64
    """Longest segment T that forward() accepts; forward_sequence cuts inputs into segments of at most this."""

    # --- memory bank -------------------------------------------------------------------------
    slots: int = 16
    """Slots M per layer."""
    d_mem: int = 32
    """Slot width d_mem (<= d_model); compression maps d -> d_mem."""
    read: Read = "on"
    """'on': a layer's tokens attend to [up(C_l); hint_l] as extra keys/values; 'off': no read (ablation)."""
    read_query: ReadQuery = "rotary"
    """The query a token reads the memory with: 'rotary' = the one it attends its segment with,
    rotated by its position in the segment, so its logit on a slot depends on where it sits (only
    the slow rotary channels match alike everywhere); 'plain' = the same query without rotary:
    the memory is an unordered set, and a fact reads the same from every position."""
    read_bias: ReadBias = "none"
    """'usage': each read logit on slot j gets alpha * log(usage_j / mean usage), so the read
    prefers what was strongly selected and head B learns from the reads (memory/read.py)."""
    read_recency: ReadRecency = "off"
    """'rank': each read logit on slot j gets -beta * (slot j's age rank among the layer's slots,
    0 = newest, 1 = oldest), beta learned per layer (1 at init): of two slots that match a query
    alike, the newer is read, as recency does for full attention when a key was bound twice.
    Bounded and scale-free, so an old fact on a long stream pays no more than at the trained
    length (memory/read.py)."""
    select: Select = "soft"
    """Head B: 'soft' sigmoid, 'hard' Gumbel-sigmoid straight-through, 'topk' per-segment budget,
    'threshold' learned threshold, 'all' g=1 (ablation)."""
    topk: int = 8
    """Write budget k per segment for select='topk'."""
    gumbel_tau: float = 1.0
    """Temperature of the Gumbel-sigmoid for select='hard'."""
    compress: Compress = "linear"
    """Candidates: 'linear' per token, 'avgpool'/'maxpool' over windows of pool_window tokens
    weighted by g, 'attnpool' K learned queries, 'none' identity (needs d_mem == d_model)."""
    pool_window: int = 4
    """Window r of avgpool/maxpool."""
    attnpool_queries: int = 8
    """Learned queries K of attnpool."""
    address: Address = "attention"
    """Where candidates go: 'attention' (content + usage/age allocation, learned mix),
    'fifo' ring buffer, 'random' fixed pseudo-random slot per input position (ablation)."""
    alloc_temperature: float = 0.1
    """Sharpness of the allocation weights over slot ranks (smaller = closer to one-hot)."""
    address_weights: AddressWeights = "top1"
    """How 'attention' addressing turns scores into write weights: 'softmax' (dense: every write
    erases a little of every slot), 'sparsemax' (content weights with exact zeros), 'top1' (each
    candidate writes one slot, straight-through gradient of the soft weights)."""
    write_new: WriteNew = "mix"
    """How 'attention' addressing tells a new fact from an update: 'mix' = a learned mix of
    content and allocation weights per candidate (DNC); 'allocate' = content weights over the
    slots holding written content compete with a learned "new fact" logit, and new facts take
    distinct free slots (memory/address.py)."""
    age_weight: float = 0.1
    """Eviction discount per segment of age: allocation ranks slots by usage * exp(-age_weight * age)."""
    usage_decay: float = 0.9
    """gamma: usage <- gamma * usage + written mass + read mass, once per segment."""
    slot_decay: bool = False
    """Learned per-slot decay of slot content once per segment (optional forgetting)."""
    cache_transform: CacheTransform = "transformer"
    """Cross-layer mixing of all caches into per-layer read hints; 'none' disables hints."""
    cache_transform_layers: int = 1
    """Depth of the cache-transform Transformer."""
    meta_cache: bool = False
    """Add a pooled meta-cache token to the cache transform; its output is one more hint per layer."""
    check_finite: bool = True
    """forward() checks a given state for NaN/inf (one reduction over the state per call, a
    device sync on GPU): a corrupted state is then an error instead of NaN logits and state."""
    attention: AttentionImpl = "sdpa"
    """How the blocks attend over [memory prefix; segment]: 'sdpa' = one fused
    F.scaled_dot_product_attention (the read attention the memory needs rides in an extra
    channel); 'explicit' = the softmax written out, the diagnostic reference. Same numbers."""
    writes: WriteImpl = "batched"
    """How the layers' memory writes run after the stack: 'batched' = all layers as one call, their
    weights stacked (memory/stacked.py); 'per_layer' = one call per layer, the diagnostic path.
    Same numbers."""
    bptt_segments: int = 0
    """Truncated BPTT: detach the state every K segments in forward_sequence; 0 = never (all segments)."""

    # --- head B's gradient paths in training (they change what forward computes) --------------
    credit_grad: CreditGrad = "trunk"
    """Where the credit loss (and the score bound) send their gradient: 'trunk' = through head B
    into the layer's features too; 'head' = into head B's own weights only (its score is taken
    again on the detached features), so a teacher of what to keep cannot reshape what the blocks
    compute for the task. The task's gradient through the gates reaches the trunk either way."""
    gate_grad: GateGrad = "task"
    """What trains head B's score: 'task' = its teacher (credit), the sparsity loss and the task
    loss through the gates it writes with; 'teacher' = the teacher and the sparsity loss only (the
    write uses the gate's value, detached). The task then shapes what is written, not what is
    selected: on the marked overwrite preset the task's pull opened layer 0's gates on noise late
    in training, against its teacher, and the oldest facts were evicted (docs/FINDINGS.md 12).
    Needs a teacher (credit != 'none')."""

    # --- the training objective (DESIGN section 3; memory/objective.py) -----------------------
    objective: Annotated[ObjectiveConfig, tyro.conf.arg(name="")] = field(default_factory=ObjectiveConfig)
    """The training objective's fields (``ObjectiveConfig``): the auxiliary losses and head B's teacher.
    Flat, as before they had a config of their own: ``SelmemConfig(credit='none')``,
    ``cfg.credit``, ``dataclasses.replace(cfg, credit=...)``, ``model: {credit: none}`` in YAML and
    ``--model.credit`` reach them; YAML may also nest them, ``model: {objective: {credit: none}}``."""

    # ------------------------------------------------------------------------------------------
    def validate(self) -> SelmemConfig:
        """Raise ValueError naming the first impossible field (the objective's included); return self."""
        check_field_types(self)
        for f in fields(self):
            _check_literal(f.name, getattr(self, f.name), _hint(type(self), f.name))
        if not isinstance(self.objective, ObjectiveConfig):
            raise ValueError(f"objective must be an ObjectiveConfig (in YAML a mapping of its fields), "
                             f"got {type(self.objective).__name__}")
        self.objective.validate()
        positive = ["vocab_size", "d_model", "n_layers", "n_heads", "mlp_ratio", "max_segment_len",
                    "slots", "d_mem", "topk", "pool_window", "attnpool_queries",
                    "cache_transform_layers"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model / n_heads must be even for rotary positions, got {self.d_model // self.n_heads}")
        if self.d_mem > self.d_model:
            raise ValueError(f"d_mem ({self.d_mem}) must be <= d_model ({self.d_model})")
        if self.compress == "none" and self.d_mem != self.d_model:
            raise ValueError(f"compress='none' writes raw features, so d_mem ({self.d_mem}) "
                             f"must equal d_model ({self.d_model})")
        if self.cache_transform == "transformer" and self.d_mem % 2:
            raise ValueError(f"d_mem must be even for the cache transform's 2 heads, got {self.d_mem}")
        if not 0.0 <= self.usage_decay <= 1.0:
            raise ValueError(f"usage_decay must be in [0, 1], got {self.usage_decay}")
        for name in ["gumbel_tau", "alloc_temperature"]:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ["bptt_segments", "age_weight"]:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.gate_grad == "teacher" and not self.objective.has_teacher:
            raise ValueError("gate_grad='teacher' trains head B from its teacher only, so it needs "
                             f"credit 'read' or 'probe' and lambda_credit > 0 (got credit={self.objective.credit!r}, "
                             f"lambda_credit={self.objective.lambda_credit})")
        return self

    def __getattr__(self, name: str) -> Any:  # only for names not found otherwise: the objective's, flat
        objective = self.__dict__.get("objective")
        if name in OBJECTIVE_FIELDS and objective is not None:
            return getattr(objective, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in OBJECTIVE_FIELDS:  # cfg.credit = 'none' sets the objective's field, as it set the flat one
            setattr(self.objective, name, value)
        else:
            super().__setattr__(name, value)

    def state_floats(self) -> int:
        """Floats one sequence carries between segments: slots + usage + age, all layers."""
        return self.n_layers * self.slots * (self.d_mem + 2)

    def resolve_segment_len(self, segment_len: int | None = None) -> int:
        """The segment length a model streams in when asked for ``segment_len``: that, or
        max_segment_len for None or 0; a ValueError outside [1, max_segment_len]. Every model's
        forward_sequence (``run_segments``), selmem's packed rows and its teacher, and the one-line
        layer resolve theirs here; an experiment picks the one it asks for
        (``ExperimentConfig.segment_len``: train, else task, else the model's maximum)."""
        seg = segment_len or self.max_segment_len
        if not 1 <= seg <= self.max_segment_len:
            raise ValueError(f"segment_len must be in [1, max_segment_len={self.max_segment_len}], got {seg}")
        return seg

    # --- YAML ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelmemConfig:
        """From a mapping of fields, the objective's flat or under ``objective`` (``nest_objective``)."""
        return from_dict(cls, nest_objective(data), aliases=OBJECTIVE_FIELDS)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SelmemConfig:
        return cls.from_dict(load_yaml(path))

    def to_dict(self, nested: bool = False) -> dict[str, Any]:
        """The fields as plain data, the objective's beside the model's (``flatten_objective``), the
        layout of every config.yaml and config.json written before ObjectiveConfig, so that what
        reads a run folder reads this one too; ``nested``: under ``objective`` (``asdict``)."""
        return asdict(self) if nested else flatten_objective(asdict(self))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # slow (it evaluates every annotation): once per class


def _hint(cls: type, name: str) -> Any:
    return _hints(cls)[name]


def check_field_types(obj: Any, prefix: str = "") -> None:
    """Raise ValueError naming a field of plain type (int, float, bool, str) that holds another
    type, as YAML produces when it reads ``1e-3`` as text, or a float field holding NaN or inf."""
    for f in fields(obj):
        value, hint = getattr(obj, f.name), _hint(type(obj), f.name)
        if hint not in (int, float, bool, str):
            continue
        allowed = (int, float) if hint is float else (hint,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and hint is not bool):
            tip = ("; YAML reads 1e-3 as text: write 1.0e-3" if isinstance(value, str)
                   and hint in (int, float) and _looks_numeric(value) else "")
            raise ValueError(f"{prefix}{f.name} must be {hint.__name__}, got {value!r}{tip}")
        if hint is float and not math.isfinite(value):  # YAML's .nan and .inf pass every < or > check
            raise ValueError(f"{prefix}{f.name} must be a finite number, got {value!r}")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_literal(name: str, value: Any, hint: Any) -> None:
    if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
        raise ValueError(f"{name} must be one of {list(typing.get_args(hint))}, got {value!r}")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"key {key!r} is given twice in one mapping (lines {first} and {again}); "
                         "YAML would keep the last one silently: delete one")


class _StrictLoader(yaml.SafeLoader):
    """safe_load's loader (SafeConstructor: plain data only, nothing runs) that refuses a key
    given twice in one mapping, where PyYAML keeps the last value without a word
    (``slots: 4`` ... ``slots: 8``). Merge keys (``<<: *base``) may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _safe_load(text: str) -> Any:
    """yaml.safe_load with _StrictLoader: what safe_load does, with this loader in its place."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error that names the file when it is not one or when a key
    is given twice."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = _safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    except _DuplicateKey as e:
        raise ValueError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML ({problem}{where})") from None
    if data is None:
        raise ValueError(f"{path}: empty config file (leave out --config to use the defaults)")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data


def from_dict(cls: type[C], data: dict[str, Any], aliases: frozenset[str] = frozenset()) -> C:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys by name, then validate(). A
    field holding a dataclass may be given as a mapping of its fields; ``aliases``: other keys
    ``cls`` takes (a SelmemConfig's flat objective fields)."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be a mapping of fields, got {type(data).__name__} {data!r:.40}")
    known = {f.name for f in dataclasses.fields(cls)} | aliases  # type: ignore[arg-type]
    unknown = sorted(map(str, set(data) - known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known keys: {sorted(known)}")
    data = dict(data)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        inner = _hint(cls, f.name)
        if dataclasses.is_dataclass(inner) and isinstance(data.get(f.name), dict):
            data[f.name] = from_dict(inner, data[f.name])
    obj = cls(**data)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


@dataclass
class TrainConfig:
    """One training run: optimisation, evaluation, budget and where the run folder goes."""

    steps: int = 2000
    """Optimiser steps (one batch each)."""
    batch_size: int = 32
    lr: float = 3e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices only (not norms, biases, embeddings of slots)."""
    warmup: int = 100
    """Linear warmup steps, then cosine decay to min_lr_ratio * lr."""
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    segment_len: int = 0
    """Segment length T used to stream each sequence; 0 = the task's segment length, else max_segment_len."""
    eval_every: int = 250
    """Evaluate on the fixed test set every this many steps (and at the end)."""
    eval_batches: int = 8
    """Test batches per evaluation (a fixed set: test batch indices 0..eval_batches-1)."""
    time_budget_s: float = 0.0
    """Stop training after this many seconds of wall time (0 = no limit); compare uses it."""
    seed: int = 0
    """Seeds model init and training noise (tasks carry their own data seed)."""
    threads: int = 0
    """torch threads (0 = leave torch's default)."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    out_dir: str = "runs"
    name: str = ""
    """Run folder name under out_dir; empty = <model>-<task>-<timestamp>."""
    resume: bool = False
    """Continue the run in out_dir/name from its last checkpoint."""
    log_every: int = 25
    """Write a metrics line (and refresh the progress bar) every this many steps."""
    progress: bool = True
    """Show progress on stderr: a bar on a terminal, else a line every log_every steps."""
    ckpt_every: int = 0
    """Also write ckpt/last every this many steps (0 = only at evaluations)."""
    keep_last: int = 3
    """Training checkpoints kept: ckpt/last (the newest) and the keep_last - 1 before it as
    ckpt/step-<step>, so that a damaged last falls back to the one before (HF Trainer's
    save_total_limit); the oldest is removed only once the new one is complete."""
    nonfinite: NonFinite = "stop"
    """A NaN/inf loss, state or gradient: 'stop' the run with the step and layer, or 'skip' the step."""
    autocast: Autocast = "none"
    """Mixed precision for the forward pass (torch.autocast): 'bf16' runs matmuls and attention in
    bfloat16 (GPUs from Ampere on; CPU too, slowly); weights, optimiser and losses stay float32.
    No fp16: it needs a gradient scaler, and bf16 has float32's range."""
    compile: bool = False
    """torch.compile the model's per-segment forward (nn.Module.compile: forward_sequence's segment
    calls go through the compiled code); the first steps pay the compile time."""

    def validate(self) -> TrainConfig:
        check_field_types(self, "train.")
        _check_literal("train.nonfinite", self.nonfinite, _hint(type(self), "nonfinite"))
        _check_literal("train.autocast", self.autocast, _hint(type(self), "autocast"))
        for name in ["steps", "batch_size", "eval_every", "eval_batches", "log_every", "keep_last"]:
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ["lr"]:
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ["weight_decay", "warmup", "grad_clip", "segment_len", "time_budget_s", "threads", "ckpt_every"]:
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.resume and not self.name:
            raise ValueError("train.resume needs train.name: the run folder to continue")
        _check_run_name(self.name)
        return self


def _check_run_name(name: str) -> None:
    """train.name is one folder name under train.out_dir: ``../x``, ``a/b`` or an absolute path
    would put a run's record (and its checkpoints) outside out_dir, or inside another run."""
    if not name:
        return  # the default: <model>-<task>-<timestamp>
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    if (not name.strip() or name in (".", "..") or "\0" in name or any(s in name for s in separators)
            or Path(name).is_absolute()):
        raise ValueError(f"train.name must be a single folder name under train.out_dir (no path separator, "
                         f"not '.' or '..', not absolute, not blank), got {name!r}")
