"""SelectiveMemoryTransformer: the forward pass of DESIGN.md section 1, top to bottom.

Legend: B batch, T segment length, N sequence length, L layers, M slots per layer, R hints per
layer, C write candidates per segment, d model width, d_mem slot width, V vocabulary.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from selmem import decode as decoding
from selmem import losses, packing
from selmem.config import SelmemConfig
from selmem.decode import DecodeCache
from selmem.layers import Block, RMSNorm
from selmem.memory import credit
from selmem.memory.address import Address
from selmem.memory.cache_transform import CacheTransform
from selmem.memory.compress import Compress
from selmem.memory.layer import Parts, Write, read_prefix
from selmem.memory.layer import layer_stats as layer_stats_of
from selmem.memory.read import Read
from selmem.memory.select import Select
from selmem.memory.stacked import stack_parts, write_layers
from selmem.memory.objective import Objective
from selmem.state import MemoryState, NonFiniteState


@dataclass
class Output:
    """What ``forward`` returns.

    logits: (B, T, V) for a segment, (B, N, V) from forward_sequence.
    state:  the MemoryState after the segment(s).
    stats:  diagnostics, detached. forward: {"start": (B,) position of the segment's first token,
            "layers": [per-layer dict]}; forward_sequence: {"segments": [forward's stats, ...]}.
            A layer's dict: gate (B, T), score (B, T), cand_gate (B, C), cand_pos (B, C) absolute,
            write (B, C, M) = g_t * w_tj, contrib (B, C, M) final share of candidate t in slot j,
            kept (B, M), read (B, T, M+R) read attention on the prefix or None,
            provenance_read (B, M) provenance of the slots that were read, then the state after
            the write: usage, age, provenance (B, M).
    losses: unweighted auxiliary losses 'sparsity', 'reconstruction', 'infonce', 'score_bound'
            ('credit' from forward_sequence given an answer_mask), and 'aux', their weighted sum,
            to add to the task loss.
    scores: head B's scores per layer, (B, T) (forward) or (B, N) (forward_sequence), not
            detached: losses computed outside a segment (read credit) train head B through them.
    """

    logits: Tensor
    state: MemoryState
    stats: dict[str, Any]
    losses: dict[str, Tensor]
    scores: list[Tensor] | None = None
    reads: list[Tensor | None] | None = None
    """The read attention per layer on the prefix, (B, T, M+R) (forward) or (B, N, M+R)
    (forward_sequence), not detached, or None per layer with read='off': the read teacher
    (memory/credit.py, ``lambda_read``) trains the read through it."""
    hidden_states: list[Tensor] | None = None
    """Only with ``output_hidden_states=True``: L+1 tensors (B, T, d) (forward) or (B, N, d)
    (forward_sequence), Hugging Face's convention: the embeddings, the outputs of blocks 0..L-2,
    and the last block's output after the final norm (what the head reads)."""


class SelectiveMemoryTransformer(nn.Module):
    """A causal Transformer whose every layer owns a selectively written bank of memory slots."""

    arch: ClassVar[str] = "selmem"
    """The name runs and commands know it by (``baselines.MODELS``, ``ExperimentConfig.arch``)."""
    state_knob: ClassVar[str | None] = None
    """The config field ``selmem compare`` sets to match another model's state to this one's:
    none, the baselines are sized to selmem's."""

    def __init__(self, cfg: SelmemConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        L, M, d, dm = cfg.n_layers, cfg.slots, cfg.d_model, cfg.d_mem
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.mlp_ratio, layer_idx=l,
                                          prefix=cfg.read == "on", conv_kernel=cfg.short_conv,
                                          fast=cfg.attention == "sdpa",
                                          prefix_rope=cfg.read_query == "rotary")
                                    for l in range(L))
        self.read = nn.ModuleList(Read(cfg) for _ in range(L))
        self.select = nn.ModuleList(Select(cfg) for _ in range(L))
        self.compress = nn.ModuleList(Compress(cfg) for _ in range(L))
        self.address = nn.ModuleList(Address(cfg, l) for l in range(L))
        self.decoder = nn.ModuleList(nn.Linear(dm, d) for _ in range(L))  # reconstruction loss
        self.cache_transform = CacheTransform(cfg)
        # learned initial slots: distinct, unit-RMS like the (RMS-normed) candidates
        self.init_slots = nn.Parameter(torch.randn(L, M, dm))
        self.slot_decay = nn.Parameter(torch.full((L, M), 4.0)) if cfg.slot_decay else None
        self.nce_memory, self.nce_segment = nn.Linear(dm, d), nn.Linear(d, d)
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        # train-time teacher of head B (memory/credit.py), never used by forward; built last so that
        # every other parameter is initialised as without it (same seed, same model)
        self.probe = credit.RetrievalProbe(cfg) if cfg.objective.credit == "probe" else None
        # activation checkpointing of the blocks in training (off by default): Hugging Face's
        # gradient_checkpointing_enable() sets both attributes (its _set_gradient_checkpointing)
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func: Callable[..., Any] = functools.partial(
            torch.utils.checkpoint.checkpoint, use_reentrant=False)

    # ------------------------------------------------------------------------------------------
    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> MemoryState:
        """A fresh state for ``batch_size`` streams. Its slots stay attached to the learned
        initial slots, so they receive gradients."""
        return MemoryState.fresh(self.init_slots, batch_size, device)

    def state_size(self, seq_len: int | None = None) -> int:
        """Floats carried per sequence between segments, whatever ``seq_len`` (accepted so every
        model answers the same call; full attention's cache grows with it)."""
        return self.state_floats(self.cfg, seq_len)

    @staticmethod
    def state_floats(cfg: SelmemConfig, seq_len: int | None = None) -> int:
        """``state_size`` of a model built from ``cfg``, without building it (as every model's)."""
        return cfg.state_floats()

    @property
    def objective(self) -> Objective:
        """The training objective of this model's config: the loss weights, their sum and head B's
        teacher (memory/objective.py). Read from ``cfg`` on every call, so a changed config is seen."""
        return Objective(self.cfg)

    @property
    def sequence_inputs(self) -> frozenset[str]:
        """The keyword inputs of ``forward_sequence`` that the training loop hands the model, as
        every model names its own (the baselines none): packed rows' resets, that the token range
        was checked, and with a credit teacher the answers it learns from."""
        teacher = ("answer_mask", "answer_targets", "answer_count") if self.cfg.objective.credit != "none" else ()
        return frozenset(("reset", "checked", *teacher))

    # ------------------------------------------------------------------------------------------
    def forward(self, tokens: Tensor | None, state: MemoryState | None = None, mask: Tensor | None = None, *,
                checked: bool = False, parts: Parts | None = None, inputs_embeds: Tensor | None = None,
                output_hidden_states: bool = False) -> Output:
        """Process one segment. tokens (B, T) long, T <= max_segment_len.

        mask (B, T) bool or None: False marks padding after a row's tokens (right padding). Padding
        writes nothing, its reads do not count in usage, and it does not advance the row's position;
        a row with no real token keeps its state. Its logits are meaningless.

        checked: the caller has checked the token range and the state's finiteness already
        (forward_sequence does, once per sequence) and made the mask right padding, so skip those
        checks: each reads values back from the device, a host sync per segment on the training
        path.

        parts: ``write_parts(B, device)``, the layers' write parts stacked for the batched write, which
        forward_sequence builds once per sequence (stacking the weights is a few kernels per
        parameter, forward and backward); None: built here when needed.

        inputs_embeds (B, T, d) instead of tokens (pass None): the blocks' input as given (InfoNCE
        reads its mean where it reads the token embeddings). output_hidden_states: fill
        ``Output.hidden_states``."""
        if inputs_embeds is not None:
            tokens = self._placeholder_ids(tokens, inputs_embeds)
        state = self._check(tokens, state, mask, values=not checked)
        tokens = tokens.long()  # _check accepts int16/uint8 ids too; nn.Embedding takes int64/int32 only
        T = tokens.shape[1]
        pos = state.position[:, None] + torch.arange(T, device=tokens.device)  # (B, T) absolute
        hints = self.cache_transform(state.slots)  # (L, B, R, d_mem) or None: top-down hints
        h = self.embed(tokens) if inputs_embeds is None else inputs_embeds  # (B, T, d)
        hidden = [h] if output_hidden_states else None
        ys, reads = [], []
        for l, block in enumerate(self.blocks):
            hint = None if hints is None else hints[l]
            # the memory as it was before this segment's writes
            prefix, bias = read_prefix(self.read[l], state.slots[l], state.usage[l], hint, state.age[l])
            h, read = self._block(block, h, prefix, bias)  # head A: (B, T, d), read attention (B, T, M+R)
            ys.append(h)
            reads.append(read)
        final = self.norm(h)
        logits = self.head(final)  # (B, T, V)
        # head B .. update of every layer: no write reads another layer's new memory, so all run
        # after the stack, as one batched call (memory/stacked.py)
        writes = self.write(ys, reads, state, pos, mask, parts)
        layer_stats = [layer_stats_of(writes[l], reads[l], state.provenance[l]) for l in range(len(writes))]
        new_state = self._stack(state, writes, T if mask is None else mask.sum(1))
        if mask is not None:
            new_state = new_state.where(~mask.any(1), state)  # rows of padding only: nothing happened
        aux = self._losses(tokens, state, [w.gate for w in writes], [w.score for w in writes],
                           [w.rec for w in writes], inputs_embeds)
        stats = {"start": state.position.clone(), "layers": layer_stats}
        if hidden is not None:
            hidden += [*ys[:-1], final]  # Hugging Face's convention: the last one after the final norm
        return Output(logits, new_state, stats, aux, [w.score for w in writes], reads, hidden)

    def _block(self, block: Block, h: Tensor, prefix: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Any]:
        """One block, recomputed in the backward pass when gradient checkpointing is on (training
        only): the same numbers, activations of one block at a time instead of all of them."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(functools.partial(block, prefix_bias=bias), h, prefix)
        return block(h, prefix, prefix_bias=bias)

    def _placeholder_ids(self, tokens: Tensor | None, inputs_embeds: Tensor) -> Tensor:
        """Zero ids shaped like ``inputs_embeds``' (B, T), for the checks of a segment given as
        embeddings; raises when both or a misshapen embedding are given."""
        if tokens is not None:
            raise ValueError("pass tokens or inputs_embeds, not both")
        d = self.cfg.d_model
        if not isinstance(inputs_embeds, Tensor) or inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != d:
            raise ValueError(f"inputs_embeds must have shape (batch, segment_len, d_model={d}), got "
                             f"{_describe(inputs_embeds)}")
        if not inputs_embeds.is_floating_point():
            raise TypeError(f"inputs_embeds must be a float tensor, got dtype {inputs_embeds.dtype}")
        return torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)

    def decode(self, tokens: Tensor, cache: DecodeCache | None = None,
               segment_len: int | None = None) -> tuple[Tensor, DecodeCache]:
        """Incremental inference: tokens (B, t) after what ``cache`` has seen (None: a new stream
        with segments of ``segment_len``) -> logits (B, t, V), the updated cache. Any chunking gives
        ``forward_sequence``'s logits; the memory is written whenever a segment fills (decode.py)."""
        if cache is None:
            cache = decoding.new_cache(self, tokens.shape[0], segment_len, device=tokens.device)
        return decoding.decode(self, tokens, cache)

    def check(self, tokens: Tensor, state: MemoryState | None = None) -> MemoryState:
        """``forward``'s checks of a segment of tokens (B, T) and its state, for a caller that runs
        the model's parts itself (decode.py): raises naming the problem, else returns the state (a
        fresh one for None). Reads the token range and the state's finiteness: one device sync."""
        return self._check(tokens, state)

    @staticmethod
    def next_state(state: MemoryState, writes: list[Write], advance: int | Tensor) -> MemoryState:
        """The memory after a segment: every layer's ``write`` stacked, the position advanced."""
        return SelectiveMemoryTransformer._stack(state, writes, advance)

    def write(self, ys: list[Tensor], reads: list[Tensor | None], state: MemoryState, pos: Tensor,
              valid: Tensor | None = None, parts: Parts | None = None) -> list[Write]:
        """Every layer's write of one segment (cfg.writes: batched or per layer): ys [(B, T, d)] * L
        the blocks' outputs, reads [(B, T, M+R) or None] * L, state the memory at the segment
        start, pos (B, T) absolute positions, valid (B, T) bool or None, parts ``write_parts(B, device)``
        or None."""
        return write_layers([self.parts(l) for l in range(self.cfg.n_layers)], self.cfg, ys, state.slots,
                            state.usage, state.age, state.provenance, pos, reads, self.slot_decay, valid,
                            batched=self.cfg.writes == "batched", stacked=parts)

    def write_parts(self, batch_size: int, device: torch.device | str) -> Parts | None:
        """Every layer's parts as the batched write takes them (memory/stacked.py), for batches
        of ``batch_size``; None when the writes run per layer."""
        if self.cfg.writes != "batched" or self.cfg.n_layers == 1:
            return None
        return stack_parts([self.parts(l) for l in range(self.cfg.n_layers)], batch_size, torch.device(device))

    def parts(self, l: int) -> Parts:
        """Layer l's memory parts, as ``memory.layer.write`` takes them."""
        return Parts(self.read[l], self.select[l], self.compress[l], self.address[l], self.decoder[l])

    @staticmethod
    def _stack(state: MemoryState, writes: list, advance: int | Tensor) -> MemoryState:
        """The new state from each layer's write."""
        o = [w.written for w in writes]
        return MemoryState(
            slots=torch.stack([x.slots for x in o]), usage=torch.stack([x.usage for x in o]),
            age=torch.stack([x.age for x in o]), provenance=torch.stack([x.provenance for x in o]),
            position=state.position + advance,
        )

    def _losses(self, tokens: Tensor, state: MemoryState, gates: list[Tensor], scores: list[Tensor],
                rec: list[Tensor], inputs_embeds: Tensor | None = None) -> dict[str, Tensor]:
        cfg = self.cfg.objective  # the losses' options (the weights: Objective.weigh)
        sparse = losses.sparsity(gates, cfg.sparsity, cfg.write_rate)
        bound = losses.score_bound(scores, cfg.score_margin)
        recon = torch.stack(rec).mean()
        # once the memory has seen a segment (every row): can it predict this one? Chosen on the
        # device (torch.where, no host sync); before that the loss is 0 and so is its gradient
        memory = self.nce_memory(state.slots.mean(dim=(0, 2)))  # (B, d)
        segment = self.nce_segment((self.embed(tokens) if inputs_embeds is None else inputs_embeds).mean(1))  # (B, d)
        nce = torch.where((state.position > 0).all(), losses.infonce(memory, segment, cfg.nce_temperature),
                          sparse * 0.0)
        parts = {"sparsity": sparse, "reconstruction": recon, "infonce": nce, "score_bound": bound}
        return {**parts, "aux": self.objective.weigh(parts)}  # weighed where the whole objective lives

    # ------------------------------------------------------------------------------------------
    def forward_sequence(self, tokens: Tensor | None, segment_len: int | None = None,
                         state: MemoryState | None = None, answer_mask: Tensor | None = None,
                         answer_targets: Tensor | None = None, attention_mask: Tensor | None = None,
                         reset: Tensor | None = None, doc_ids: Tensor | None = None, *,
                         answer_count: int | None = None, checked: bool = False,
                         inputs_embeds: Tensor | None = None, output_hidden_states: bool = False) -> Output:
        """Stream a whole sequence (B, N) through ``forward`` in segments of ``segment_len``
        (default max_segment_len; the last may be shorter), detaching the state every
        ``bptt_segments`` segments. Logits (B, N, V); losses averaged over segments.

        answer_mask (B, N) bool and answer_targets (B, N) long, the scored positions of a training
        batch and their targets: with ``credit`` 'read' or 'probe' they add head B's credit loss
        (memory/credit.py) to ``losses`` ('credit', and 'probe' for the probe's own loss).

        Padded and packed rows (packing.py): attention_mask (B, N) bool, False = padding anywhere
        in a row; reset (B, N) bool, True where a document starts, or doc_ids (B, N) a document id
        per position. Each row then runs its own segments, cut at document starts, with a fresh
        memory for each document: every document's logits are those it gets alone, a padded row's
        those of the row unpadded. Logits at padding are 0.

        Without a host sync (the trainer's path): answer_count, the number of True in answer_mask,
        counted where that is free (on the host, before the batch moved to the device); checked:
        the caller has checked the token range and the state (``check_values``) already.

        inputs_embeds (B, N, d) instead of tokens (pass None), and output_hidden_states, as in
        ``forward``. credit='probe' then cannot add head B's teacher: the probe embeds the ids itself."""
        x = tokens if inputs_embeds is None else inputs_embeds
        if state is not None and isinstance(x, Tensor) and x.dim() >= 2:
            self._check_state(state, x.shape[0], x.device)  # before anything reads it (a packed row's reset)
        extra: dict[str, Any] = {"output_hidden_states": True} if output_hidden_states else {}
        if inputs_embeds is not None:
            self._placeholder_ids(tokens, inputs_embeds)  # raises on both or a misshapen embedding
            extra["inputs_embeds"] = inputs_embeds
        if attention_mask is None and reset is None and doc_ids is None:
            if not checked:
                self.check_values(tokens, state)  # once per sequence, not once per segment
            out = run_segments(self, tokens, segment_len, state, checked=True,
                               parts=self.write_parts(x.shape[0], x.device), **extra)
        else:
            out = self._forward_packed(tokens, self.cfg.resolve_segment_len(segment_len), state, attention_mask,
                                       reset if doc_ids is None else packing.starts_from_doc_ids(doc_ids), checked,
                                       **extra)
        if answer_mask is None or not self.objective.has_teacher:
            return out
        if answer_mask.shape != x.shape[:2]:
            raise ValueError(f"answer_mask has shape {tuple(answer_mask.shape)}, tokens {tuple(x.shape[:2])}")
        # head B's teacher, computed by the objective from this window's outputs (memory/objective.py)
        out.losses = self.objective.teacher(out.losses, out.scores, out.stats, out.reads, self.probe, tokens,
                                            self.cfg.resolve_segment_len(segment_len), answer_mask, answer_targets,
                                            answer_count)
        return out

    def _forward_packed(self, tokens: Tensor | None, seg: int, state: MemoryState | None, valid: Tensor | None,
                        starts: Tensor | None, checked: bool = False, inputs_embeds: Tensor | None = None,
                        output_hidden_states: bool = False) -> Output:
        """forward_sequence for padded/packed rows: the steps of packing.schedule, then every
        step's logits and scores put back at their row positions. seg: ``cfg.resolve_segment_len``'s."""
        if inputs_embeds is not None:
            tokens = self._placeholder_ids(tokens, inputs_embeds)  # the ids' checks, on zeros
        B, N = tokens.shape
        valid = torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid.bool()
        starts = torch.zeros_like(valid) if starts is None else starts.bool()
        if not checked:  # once per sequence, on the real tokens only: the steps below skip it
            self.check_values(tokens.masked_fill(~valid, 0) if valid.shape == tokens.shape else tokens, state)
        state = state if state is not None else self.init_state(B, tokens.device)
        fresh = self.init_state(B, tokens.device)
        outs, K = [], self.cfg.bptt_segments
        steps = packing.schedule(valid, starts, seg)
        parts = self.write_parts(B, tokens.device)
        for i, step in enumerate(steps):
            if K and i and i % K == 0:
                state = state.detach()  # truncated BPTT boundary
            state = state.where(step.reset, fresh)  # a document starts: a fresh memory for its row
            mask = None if step.full else step.mask
            if inputs_embeds is None:
                out = self(tokens.gather(1, step.index), state, mask, checked=True, parts=parts,
                           output_hidden_states=output_hidden_states)
            else:
                e = inputs_embeds.gather(1, step.index[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
                out = self(None, state, mask, checked=True, parts=parts, inputs_embeds=e,
                           output_hidden_states=output_hidden_states)
            state = out.state
            outs.append(out)
        dest = torch.cat([step.dest for step in steps])

        def scatter(parts: list[Tensor]) -> Tensor:  # (B, t, ...) per step -> (B, N, ...)
            vals = torch.cat([p.flatten(0, 1)[step.take] for p, step in zip(parts, steps, strict=True)])
            return vals.new_zeros(B * N, *vals.shape[1:]).index_copy(0, dest, vals).view(B, N, *vals.shape[1:])

        logits = scatter([o.logits for o in outs])
        scores = [scatter([o.scores[l] for o in outs]) for l in range(self.cfg.n_layers)]
        aux = {k: torch.stack([o.losses[k] for o in outs]).mean() for k in outs[0].losses}
        hidden = None
        if output_hidden_states:
            hidden = [scatter([o.hidden_states[i] for o in outs]) for i in range(self.cfg.n_layers + 1)]
        return Output(logits, state, {"segments": [o.stats for o in outs]}, aux, scores, hidden_states=hidden)

    def check_values(self, tokens: Any, state: Any) -> None:
        """The checks that read values (token range, a finite state): one device sync (none for
        tensors on the host). Anything not shaped as expected is left to ``_check``, which names
        the problem."""
        cfg = self.cfg
        if isinstance(tokens, Tensor) and tokens.dim() == 2 and tokens.numel() and not tokens.is_floating_point():
            lo, hi = (int(v) for v in torch.stack([tokens.min(), tokens.max()]).long().tolist())
            if lo < 0 or hi >= cfg.vocab_size:
                raise ValueError(f"token ids must lie in [0, vocab_size={cfg.vocab_size}), got range [{lo}, {hi}]")
        if isinstance(state, MemoryState) and cfg.check_finite and not bool(state.finite()):
            raise NonFiniteState(f"state holds NaN/inf in layer(s) {state.nonfinite_layers()} (slots, usage or "
                                 "age); it would make the logits and the next state non-finite")

    def _check(self, tokens: Tensor, state: MemoryState | None, mask: Tensor | None = None,
               values: bool = True) -> MemoryState:
        """Validate a segment and its state at the boundary, with messages that say what to pass
        (``values``: also those that read values: ``check_values`` and the mask's right padding)."""
        cfg = self.cfg
        if not isinstance(tokens, Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
            raise TypeError(f"tokens must be an integer tensor of token ids, got dtype {tokens.dtype}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, segment_len), got {tuple(tokens.shape)}")
        B, T = tokens.shape
        if B == 0:
            raise ValueError("empty batch: tokens has 0 rows; pass at least one sequence")
        if T == 0:
            raise ValueError("empty segment: tokens has length 0 along the segment axis")
        if T > cfg.max_segment_len:
            raise ValueError(f"segment of length {T} exceeds max_segment_len={cfg.max_segment_len}; "
                             "use forward_sequence(tokens, segment_len) to stream a longer input")
        if mask is not None:
            if mask.shape != tokens.shape or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor shaped like tokens {tuple(tokens.shape)}, "
                                 f"got {mask.dtype} {tuple(mask.shape)}")
            if values and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
                raise ValueError("mask must be right padding (True then False in each row); for padding "
                                 "anywhere use forward_sequence(tokens, attention_mask=...)")
        if values:
            self.check_values(tokens, None)
        if state is None:
            return self.init_state(B, tokens.device)
        self._check_state(state, B, tokens.device)
        if values:
            self.check_values(None, state)  # one reduction and one sync per call
        return state

    def _check_state(self, state: Any, B: int, device: torch.device) -> None:
        """A given state fits this model and a batch of B on ``device``: its type, every field's
        shape, dtype and device (``MemoryState.check``: position too), never a value, so no sync."""
        cfg = self.cfg
        if not isinstance(state, MemoryState):
            raise TypeError(f"state must be a MemoryState (from model.init_state), got {type(state).__name__}")
        state.check("state")  # the fields agree with the slots, so checking the slots below checks all
        if state.batch_size != B:
            raise ValueError(f"state was made for batch size {state.batch_size}, but tokens have batch size {B}")
        want = (cfg.n_layers, B, cfg.slots, cfg.d_mem)
        if tuple(state.slots.shape) != want:
            raise ValueError(f"state does not fit this model: slots {tuple(state.slots.shape)}, "
                             f"expected (n_layers, batch, slots, d_mem) = {want}")
        if state.slots.device != device:
            raise ValueError(f"state is on {state.slots.device} but tokens are on {device}; "
                             "move one with .to(device)")
        if state.slots.dtype != self.init_slots.dtype:
            raise ValueError(f"state has dtype {state.slots.dtype} but the model runs in {self.init_slots.dtype}")


def run_segments(model: nn.Module, tokens: Tensor, segment_len: int | None, state: Any | None,
                 **kwargs: Any) -> Output:
    """The segment loop behind every model's ``forward_sequence`` (selmem and the baselines): call
    ``model(segment, state, **kwargs)`` on consecutive segments, detach the state every
    ``model.cfg.bptt_segments`` segments, concatenate logits, average losses. With
    ``inputs_embeds`` (B, N, d) (tokens None), its segments go as ``inputs_embeds=`` instead.
    Hidden states (``Output.hidden_states``) are concatenated where the model returns them."""
    cfg = model.cfg
    seg = cfg.resolve_segment_len(segment_len)
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None and (not isinstance(tokens, Tensor) or tokens.dim() != 2):
        raise ValueError(f"tokens must be a (batch, length) tensor, got {_describe(tokens)}")
    outs: list[Output] = []
    K = cfg.bptt_segments
    for i, start in enumerate(range(0, (tokens if embeds is None else embeds).shape[1], seg)):
        if K and i and i % K == 0:
            state = state.detach()  # truncated BPTT boundary
        if embeds is None:
            out = model(tokens[:, start : start + seg], state, **kwargs)
        else:
            out = model(None, state, inputs_embeds=embeds[:, start : start + seg], **kwargs)
        state = out.state
        outs.append(out)
    if not outs:
        raise ValueError("tokens is empty: a sequence needs at least one token")
    logits = torch.cat([o.logits for o in outs], dim=1)
    aux = {k: torch.stack([o.losses[k] for o in outs]).mean() for k in outs[0].losses}
    scores = reads = None
    if getattr(outs[0], "scores", None) is not None:
        scores = [torch.cat([o.scores[l] for o in outs], dim=1) for l in range(len(outs[0].scores))]
    if getattr(outs[0], "reads", None) is not None:
        reads = [None if outs[0].reads[l] is None else torch.cat([o.reads[l] for o in outs], dim=1)
                 for l in range(len(outs[0].reads))]
    hidden = None
    if getattr(outs[0], "hidden_states", None) is not None:
        hidden = [torch.cat([o.hidden_states[i] for o in outs], dim=1) for i in range(len(outs[0].hidden_states))]
    return Output(logits, outs[-1].state, {"segments": [o.stats for o in outs]}, aux, scores, reads, hidden)


def _describe(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
