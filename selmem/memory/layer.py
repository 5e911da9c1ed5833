"""SelectiveMemory: one layer's memory as a module of its own, to put between the blocks of any model.

Legend: L layers, B batch, T segment length, M slots, R hints per layer, C candidates, d model
width, d_mem slot width, H heads.

Per layer it does what SelectiveMemoryTransformer does inside its blocks (DESIGN section 1):

    read   the tokens attend to [up(C_l); up_hint(hint_l)], the memory as it was before this
           segment's writes: by cross-attention here (the host block stays untouched), or as a
           key/value prefix where the host block takes one (``prefix``, what selmem's Block does);
    select head B scores every token; compress turns the gated features into candidates;
    write  attention-addressed write with forgetting (address.py, update.py).

``write`` is that second half as a function of the parts; the built-in model calls the same
function on its own parts, so the two cannot drift apart. ``MemoryStack`` holds one
SelectiveMemory per host layer and the cache transform they share.

The one-line layer, as titans-pytorch's ``NeuralMemory(dim)(seq) -> (out, state)``:

    memory = SelectiveMemory(64, slots=16)        # a one-layer memory of its own, segments of 64
    out, state = memory(x)                        # x (B, N, 64), any N
    out2, state = memory(x2, state)               # continues the stream: as one call on [x; x2]
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from selmem import losses
from selmem.config import SelmemConfig
from selmem.layers import RMSNorm
from selmem.memory.address import Address
from selmem.memory import credit
from selmem.memory.cache_transform import CacheTransform
from selmem.memory.compress import Candidates, Compress
from selmem.memory.read import Read
from selmem.memory.select import Select, budget
from selmem.memory.update import Written, update
from selmem.memory.objective import Objective
from selmem.state import MemoryState


class Parts(NamedTuple):
    """One layer's memory parts (the model keeps them in per-part ModuleLists, SelectiveMemory as
    attributes; ``write`` takes either)."""

    read: Read
    select: Select
    compress: Compress
    address: Address
    decoder: nn.Linear  # d_mem -> d, for the reconstruction loss


class Write(NamedTuple):
    """What ``write`` did: the new memory of the layer and what the stats and losses need."""

    written: Written  # slots, usage, age, provenance (B, M, ...), kept (B, M), contrib (B, C, M)
    gate: Tensor      # (B, T) head B's gate
    score: Tensor     # (B, T) head B's score (not detached)
    cand: Candidates
    cand_pos: Tensor  # (B, C) absolute positions
    strength: Tensor  # (B, C, M) g_t * w_tj
    rec: Tensor       # () reconstruction loss


def read_prefix(read: Read, slots: Tensor, usage: Tensor, hints: Tensor | None,
                age: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """slots (B, M, d_mem), usage and age (B, M), hints (B, R, d_mem) or None -> the prefix the
    layer's tokens read (B, M+R, d) (None with read='off') and its additive read bias (B, M+R) or None."""
    return read(slots, hints), read.bias(usage, 0 if hints is None else hints.shape[1], age)


def write(parts: Parts, cfg: SelmemConfig, y: Tensor, slots: Tensor, usage: Tensor, age: Tensor,
          provenance: Tensor, pos: Tensor, read: Tensor | None, slot_decay: Tensor | None = None,
          valid: Tensor | None = None, layers: int = 1) -> Write:
    """Head B, compress, address, update for one layer and one segment.

    y (B, T, d) the layer's features, slots/usage/age/provenance the layer's memory at the segment
    start ((B, M, d_mem), (B, M)), pos (B, T) absolute positions, read (B, T, M+R) the tokens'
    attention on the prefix or None, slot_decay (M,) raw learned decay or None, valid (B, T) bool
    or None: tokens that are padding (False) write nothing and their reads do not count.

    layers > 1: the rows are ``layers`` layers' batches one after the other (stacked.py runs all
    layers' writes as one call); ``rec`` is then (layers,), each layer's own loss."""
    M = cfg.slots
    g, score = parts.select(y, valid)  # head B: (B, T)
    if cfg.credit_grad == "head" and parts.select.score is not None:  # the teachers' score: head B's weights only
        score = parts.select.score(y.detach()).squeeze(-1)
    # gate_grad='teacher': the write uses the gate's value, and head B learns from its teacher only
    cand = parts.compress(y, g.detach() if cfg.gate_grad == "teacher" else g)  # (B, C, d_mem) candidates
    if cfg.select == "topk":  # the write budget holds on candidates too (attnpool spreads tokens)
        cand = cand._replace(gate=budget(cand.gate, cfg.topk))
    cand_pos = pos.gather(1, cand.position)  # (B, C)
    w = parts.address(cand.values, cand.gate, slots, usage, age, cand_pos)  # (B, C, M)
    a = cand.gate[..., None] * w  # (B, C, M) write strength
    if read is None:
        read_mass = torch.zeros_like(usage)
    elif valid is None:
        read_mass = read[..., :M].mean(1)  # (B, M)
    else:  # mean over the real tokens only
        v = valid.to(read.dtype)[..., None]
        read_mass = (read[..., :M] * v).sum(1) / v.sum(1).clamp_min(1.0)
    decay = torch.sigmoid(slot_decay) if slot_decay is not None else None
    out = update(slots, usage, age, provenance, cand.values, a, cand_pos, read_mass, cfg.usage_decay,
                 decay, gate=cand.gate)
    per_layer = (parts.decoder(cand.values), cand.feature, cand.gate)
    rec = losses.reconstruction(*(x.unflatten(0, (layers, -1)) for x in per_layer))  # (layers,)
    return Write(out, g, score, cand, cand_pos, a, rec if layers > 1 else rec[0])


def layer_stats(w: Write, read: Tensor | None, provenance_read: Tensor) -> dict[str, Tensor | None]:
    """The per-layer stats dict of ``Output.stats`` (model.py documents the keys), detached."""
    o = w.written
    d = dict(gate=w.gate, score=w.score, cand_gate=w.cand.gate, cand_pos=w.cand_pos, write=w.strength,
             contrib=o.contrib, kept=o.kept, read=read, provenance_read=provenance_read, usage=o.usage,
             age=o.age, provenance=o.provenance)
    return {k: (v.detach() if v is not None else None) for k, v in d.items()}


class CrossRead(nn.Module):
    """Tokens (B, T, d) attend to the memory prefix (B, S, d) only: the read for a host block that
    takes no prefix. The output projection starts at zero, so inserting the layer into a trained
    model leaves that model's outputs unchanged until the memory has learned something (the
    zero-initialised gate of Flamingo's cross-attention layers, Alayrac et al. 2022)."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm, self.prefix_norm = RMSNorm(dim), RMSNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: Tensor, prefix: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> residual update (B, T, d), read attention (B, T, S) (mean over heads)."""
        B, T, d = x.shape
        S, H = prefix.shape[1], self.n_heads
        q = self.q(self.norm(x)).view(B, T, H, d // H).transpose(1, 2)  # (B, H, T, D)
        k, v = self.kv(self.prefix_norm(prefix)).view(B, S, 2, H, d // H).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // H)  # (B, H, T, S)
        if bias is not None:
            scores = scores + bias[:, None, None, :]
        probs = scores.softmax(-1)
        return self.out((probs @ v).transpose(1, 2).reshape(B, T, d)), probs.mean(1)


class StreamState(NamedTuple):
    """The one-line layer's state between calls: ``memory``, as the open segment reads it (before
    that segment's write), and ``pending`` (B, n, d), the open segment's inputs so far (n <
    segment_len), or None at a segment boundary. The write happens when the segment fills, so any
    split of a stream into calls gives the same outputs (as decode.py's cache)."""

    memory: MemoryState
    pending: Tensor | None = None

    def detach(self) -> StreamState:
        """The truncated-BPTT boundary: same values, no graph to earlier calls."""
        return StreamState(self.memory.detach(), None if self.pending is None else self.pending.detach())


class SelectiveMemory(nn.Module):
    """The memory of host layer ``layer_idx``: ``forward(h, state, hints) -> (h, state, stats)``.

    Two ways to build it:

    - ``SelectiveMemory(dim, slots=16, segment_len=64, ...)``, the one-line layer: a memory of its
      own (one layer, its own cache transform, ``credit='none'`` unless given: the probe teacher
      needs a host's ids), the keywords being SelmemConfig fields. ``layer(x, state=None) -> (out,
      state)`` takes x (B, N, dim) of any length, streams it in segments of ``segment_len``
      (default max_segment_len) and returns out (B, N, dim) and a ``StreamState``; passing that state
      back continues the stream. ``SelmemConfig(n_layers=1, ...)`` with ``segment_len=`` builds the
      same layer from a full config.
    - ``SelectiveMemory(cfg, layer_idx)``: one layer of a stack (``MemoryStack``), as below.

    h (B, T, d) is one segment's hidden states after the host block, state a MemoryState of the
    whole stack (L = cfg.n_layers layers; this layer reads and writes slice ``layer_idx``), hints
    (L, B, R, d_mem) the shared cache transform's output for this segment (``MemoryStack.hints``)
    or None. ``read='cross'`` reads the memory by cross-attention (any host block);
    ``read='prefix'`` leaves the read to a host block that takes ``self.prefix(state, hints)`` as
    extra keys/values, and ``forward`` then needs that block's read attention (``read_attn``) for
    the usage it adds. The last layer of the stack advances ``state.position`` by T.

    stats: the layer's entry of ``Output.stats["layers"]`` (model.py: gate, score, write, read,
    usage, age, ...), detached, and, not detached: ``stats["losses"]``, the unweighted
    'sparsity', 'reconstruction' and 'score_bound' losses of this layer, and
    ``stats["live_score"]`` (B, T), head B's score, through which its teacher trains it.
    ``MemoryStack.losses`` weighs and sums them as the built-in model does.
    """

    def __init__(self, cfg: SelmemConfig | int, layer_idx: int = 0, read: Literal["cross", "prefix"] = "cross", *,
                 segment_len: int | None = None, **fields: Any) -> None:
        super().__init__()
        if isinstance(cfg, SelmemConfig):
            if fields:
                raise TypeError(f"SelectiveMemory(cfg, ...) takes no SelmemConfig fields ({sorted(fields)}): set them "
                                "in the config, or pass the width, SelectiveMemory(dim, **fields)")
        elif isinstance(cfg, int) and not isinstance(cfg, bool):
            no_teacher = {} if "objective" in fields else {"credit": "none"}  # unless the caller gives one
            cfg = SelmemConfig(**{"d_model": cfg, "n_layers": 1, **no_teacher, **fields})
            segment_len = segment_len or 0  # the one-line layer: 0 = max_segment_len (cfg.resolve_segment_len)
        else:
            raise TypeError(f"SelectiveMemory takes a SelmemConfig or the model width (int), got {type(cfg).__name__}")
        self.cfg = cfg.validate()
        if not 0 <= layer_idx < cfg.n_layers:
            raise ValueError(f"layer_idx must be in [0, n_layers={cfg.n_layers}), got {layer_idx}")
        if read not in ("cross", "prefix"):
            raise ValueError(f"read must be 'cross' or 'prefix', got {read!r}")
        self.layer_idx = layer_idx
        self.parts = Parts(Read(cfg), Select(cfg), Compress(cfg), Address(cfg, layer_idx),
                           nn.Linear(cfg.d_mem, cfg.d_model))
        for name, part in self.parts._asdict().items():
            self.add_module(name, part)
        self.cross = CrossRead(cfg.d_model, cfg.n_heads) if read == "cross" and cfg.read == "on" else None
        self.init_slots = nn.Parameter(torch.randn(cfg.slots, cfg.d_mem))  # unit-RMS, like the candidates
        self.slot_decay = nn.Parameter(torch.full((cfg.slots,), 4.0)) if cfg.slot_decay else None
        if segment_len is not None:
            if cfg.n_layers != 1 or read != "cross":
                raise ValueError(f"the one-line layer (segment_len=) is a one-layer memory read by cross-attention: "
                                 f"needs n_layers=1 and read='cross', got n_layers={cfg.n_layers}, read={read!r} "
                                 "(a memory per host layer: MemoryStack)")
            segment_len = cfg.resolve_segment_len(segment_len)
            self.cache_transform = CacheTransform(cfg)  # its own: no stack to share one with
        self.segment_len = segment_len  # set: the one-line layer (forward streams; see the class docstring)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> StreamState:
        """The one-line layer's fresh state for ``batch_size`` streams."""
        if self.segment_len is None:
            raise ValueError("a layer of a stack reads the stack's state: MemoryStack.init_state(batch_size)")
        return StreamState(MemoryState.fresh(self.init_slots[None], batch_size, device))

    def prefix(self, state: MemoryState, hints: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """The prefix (B, M+R, d) a host block reads, and its read bias (B, M+R) or None."""
        l = self.layer_idx
        return read_prefix(self.parts.read, state.slots[l], state.usage[l], None if hints is None else hints[l],
                           state.age[l])

    def forward(self, h: Tensor, state: MemoryState | StreamState | None = None, hints: Tensor | None = None,
                read_attn: Tensor | None = None
                ) -> tuple[Tensor, MemoryState, dict[str, Any]] | tuple[Tensor, StreamState]:
        """A stack's layer: one segment h (B, T, d) -> (h, state, stats), see the class docstring.
        The one-line layer: x (B, N, d) and a StreamState or None -> (out (B, N, d), StreamState)."""
        if self.segment_len is not None:
            if hints is not None or read_attn is not None:
                raise ValueError("the one-line layer makes its own hints and read: call it as layer(x, state)")
            return self.stream(h, state)
        if not isinstance(state, MemoryState):
            raise ValueError("a layer of a stack needs the stack's MemoryState: MemoryStack.init_state(batch_size)")
        return self._segment(h, state, hints, read_attn)

    def _segment(self, h: Tensor, state: MemoryState, hints: Tensor | None,
                 read_attn: Tensor | None) -> tuple[Tensor, MemoryState, dict[str, Any]]:
        """One segment: read (cross mode), head B, compress, write; -> (h, state, stats)."""
        l, cfg = self.layer_idx, self.cfg
        if h.dim() != 3 or h.shape[-1] != cfg.d_model:
            raise ValueError(f"h must have shape (batch, segment_len, d_model={cfg.d_model}), got {tuple(h.shape)}")
        self._check_state(state, h.shape[0])
        if self.cross is not None:
            prefix, bias = self.prefix(state, hints)
            a, read_attn = self.cross(h, prefix, bias)
            h = h + a
        T = h.shape[1]
        pos = state.position[:, None] + torch.arange(T, device=h.device)  # (B, T)
        w = write(self.parts, cfg, h, state.slots[l], state.usage[l], state.age[l], state.provenance[l],
                  pos, read_attn, self.slot_decay)
        o = w.written
        state = state.with_layer(l, o.slots, o.usage, o.age, o.provenance,
                                 advance=T if l == cfg.n_layers - 1 else 0)
        stats = layer_stats(w, read_attn, state.provenance[l])
        obj = cfg.objective  # the losses' options (the weights: MemoryStack.losses)
        stats["losses"] = {"sparsity": losses.sparsity([w.gate], obj.sparsity, obj.write_rate),
                           "reconstruction": w.rec, "score_bound": losses.score_bound([w.score], obj.score_margin)}
        stats["live_score"] = w.score
        return h, state, stats

    def _check_state(self, state: MemoryState, B: int) -> None:
        """A given state fits this memory and a batch of B: every field's shape, dtype and device
        (``MemoryState.check``: position too), never a value, so no sync."""
        cfg = self.cfg
        state.check("state")  # the fields agree with the slots, so checking the slots below checks all
        if state.n_layers != cfg.n_layers or state.batch_size != B:
            raise ValueError(f"state holds {state.n_layers} layers x batch {state.batch_size}, expected "
                             f"{cfg.n_layers} x {B}: make it with MemoryStack.init_state(batch_size)")
        if state.slots.shape[2:] != self.init_slots.shape[-2:] or state.slots.dtype != self.init_slots.dtype:
            raise ValueError(f"state's slots are {state.slots.dtype} of shape {tuple(state.slots.shape)}, but this "
                             f"memory holds {self.init_slots.dtype} (slots, d_mem) = ({cfg.slots}, {cfg.d_mem})")

    def stream(self, x: Tensor, state: StreamState | None = None) -> tuple[Tensor, StreamState]:
        """The one-line layer's forward: x (B, N, d) after what ``state`` has seen -> out (B, N, d),
        the state after it. Each full segment is read, then written (``forward``); a part-filled last
        one is only read (its tokens read the memory as it was before it) and kept in
        ``state.pending`` until a later call fills it."""
        d, T = self.cfg.d_model, self.segment_len
        if x.dim() != 3 or x.shape[-1] != d or x.shape[1] == 0:
            raise ValueError(f"x must have shape (batch, length >= 1, dim={d}), got {tuple(x.shape)}")
        state = state if state is not None else self.init_state(x.shape[0], x.device)
        if not isinstance(state, StreamState):
            raise TypeError(f"state must be the StreamState this layer returned (or None), got {type(state).__name__}")
        if not isinstance(state.memory, MemoryState):
            raise TypeError(f"state.memory must be a MemoryState, got {type(state.memory).__name__}")
        if state.memory.check("state.memory").batch_size != x.shape[0]:
            raise ValueError(f"state holds {state.memory.batch_size} streams but x has batch size {x.shape[0]}")
        self._check_state(state.memory, x.shape[0])  # a part-filled segment only reads it, and needs it whole too
        memory, pending = state
        buf = x if pending is None else torch.cat([pending, x], dim=1)  # (B, n + N, d)
        outs, pending = [], None
        for start in range(0, buf.shape[1], T):
            seg = buf[:, start : start + T]
            if seg.shape[1] == T:  # full: read and write, with the hints of the memory it reads
                h, memory, _ = self._segment(seg, memory, self.cache_transform(memory.slots), None)
            else:  # the open segment: read only, written when full
                h, pending = self.read_only(seg, memory), seg
            outs.append(h)
        out = torch.cat(outs, dim=1)[:, buf.shape[1] - x.shape[1] :]  # the pending tokens' outputs were returned
        return out, StreamState(memory, pending)

    def read_only(self, h: Tensor, memory: MemoryState) -> Tensor:
        """h (B, t, d) read from ``memory`` without a write: what ``forward`` returns for it."""
        if self.cross is None:
            return h
        prefix, bias = self.prefix(memory, self.cache_transform(memory.slots))
        return h + self.cross(h, prefix, bias)[0]


class MemoryStack(nn.Module):
    """One SelectiveMemory per host layer and the cache transform they share.

    ``init_state(B)`` makes the stack's MemoryState, ``hints(state)`` runs the cache transform
    once per segment (before any layer writes), and iterating gives the layers in order.

    Training: ``losses(segments, ...)`` is the stack's share of ``Output.losses`` from the stats
    its layers returned; add ``["aux"]`` to the host's loss. The self-supervised terms (sparsity,
    reconstruction, score bound) need nothing else. Head B's teacher, the retrieval probe of
    ``credit='probe'`` (memory/credit.py), needs what only the host's training loop knows: the
    token ids of the window and its scored positions with their targets. So it is built only with
    ``probe=True`` (its ids must lie in ``[0, cfg.vocab_size)``, the host's vocabulary) and runs
    only when ``losses`` is given ``tokens``, ``answer_mask`` and ``answer_targets``. Without it
    head B learns only through what its writes do to the host's loss, which on recall with
    distractors is not enough (README). Not provided: the InfoNCE term (it reads the host's token
    embeddings), the read teacher (``lambda_read``) and ``credit='read'``.
    """

    def __init__(self, cfg: SelmemConfig, read: Literal["cross", "prefix"] = "cross", probe: bool = False) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        if probe and cfg.objective.credit != "probe":
            raise ValueError(f"probe=True builds head B's probe teacher, which needs credit='probe' "
                             f"(got {cfg.objective.credit!r})")
        self.layers = nn.ModuleList(SelectiveMemory(cfg, l, read) for l in range(cfg.n_layers))
        self.cache_transform = CacheTransform(cfg)
        self.probe = credit.RetrievalProbe(cfg) if probe else None  # train-time only, as in the model

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, l: int) -> SelectiveMemory:
        return self.layers[l]

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> MemoryState:
        init = torch.stack([m.init_slots for m in self.layers])  # (L, M, d_mem)
        return MemoryState.fresh(init, batch_size, device)

    def hints(self, state: MemoryState) -> Tensor | None:
        """(L, B, R, d_mem) read hints for the segment about to run, or None without a transform."""
        return self.cache_transform(state.slots)

    def losses(self, segments: list[list[dict[str, Any]]], tokens: Tensor | None = None,
               answer_mask: Tensor | None = None, answer_targets: Tensor | None = None) -> dict[str, Tensor]:
        """The auxiliary losses of a window of segments, as ``Output.losses``: unweighted
        'sparsity', 'reconstruction', 'score_bound' (each the mean over segments of the mean over
        layers, as forward_sequence averages them), with the teacher 'probe' (the probe's
        cross-entropy at the answers) and 'credit' (head B's BCE toward what the probe retrieves),
        and 'aux', their weighted sum with the config's lambdas, to add to the host's loss.

        segments: per segment of the window, in order, the stats each layer returned, [[stats of
        layer 0, ..., layer L-1], ...]. For the teacher (``probe=True``): tokens (B, N) the
        window's ids, N the segments' total length; answer_mask (B, N) bool, the scored positions;
        answer_targets (B, N) long, what each scored position predicts (position t's target, as
        selmem's tasks align them: for next-token labels, the token at t+1)."""
        cfg, L = self.cfg, len(self.layers)
        if not segments or any(len(seg) != L for seg in segments):
            raise ValueError(f"segments must be a non-empty list of per-segment lists of the {L} layers' stats")
        out = {k: torch.stack([torch.stack([lay["losses"][k] for lay in seg]).mean() for seg in segments]).mean()
               for k in ("sparsity", "reconstruction", "score_bound")}
        objective = Objective(cfg)  # the weights and the teacher, as the built-in model's (memory/objective.py)
        out["aux"] = objective.weigh(out)
        if answer_mask is None:
            return out
        if self.probe is None:
            raise ValueError("head B's teacher needs the probe: build the stack with MemoryStack(cfg, probe=True)")
        scores = [torch.cat([seg[l]["live_score"] for seg in segments], dim=1) for l in range(L)]  # (B, N) each
        seg_len = self._check_window(segments, scores[0].shape, tokens, answer_mask, answer_targets)
        # no read teacher (reads=None): a host's read attention is its own
        stats = {"segments": [{"layers": seg} for seg in segments]}
        return objective.teacher(out, scores, stats, None, self.probe, tokens, seg_len, answer_mask, answer_targets)

    def _check_window(self, segments: list[list[dict[str, Any]]], shape: torch.Size, tokens: Tensor | None,
                      answer_mask: Tensor, answer_targets: Tensor | None) -> int:
        """The window's segment length (all but the last segment alike, as the probe assumes);
        raises naming what does not fit the stats."""
        lengths = [seg[0]["live_score"].shape[1] for seg in segments]
        if len(set(lengths[:-1])) > 1 or lengths[-1] > lengths[0]:
            raise ValueError(f"the teacher needs segments of one length (the last may be shorter), got {lengths}")
        for name, x in (("tokens", tokens), ("answer_mask", answer_mask), ("answer_targets", answer_targets)):
            if x is None or tuple(x.shape) != tuple(shape):
                got = None if x is None else tuple(x.shape)
                raise ValueError(f"{name} must have the window's shape {tuple(shape)} (batch, total segment length), "
                                 f"got {got}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size:
            raise ValueError(f"tokens must lie in [0, vocab_size={self.cfg.vocab_size}) for the probe's embedding, "
                             f"got range [{int(tokens.min())}, {int(tokens.max())}]: set SelmemConfig.vocab_size to "
                             "the host's vocabulary")
        if not bool(answer_mask.any()):
            raise ValueError("answer_mask has no scored position: the teacher has nothing to retrieve for")
        return lengths[0]
