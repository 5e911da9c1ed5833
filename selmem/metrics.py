"""Memory diagnostics of DESIGN.md section 5, computed from a model's ``stats``: pure functions.

Legend: B batch, N sequence length, S segments, T segment length, L layers, M slots per layer,
R hints per layer, C write candidates per segment.

Input is the ``stats`` of ``forward_sequence`` ({"segments": [seg, ...]}) or of one ``forward``
call (one seg); a seg is {"start": (B,) absolute position of its first token, "layers": [layer
dict, ...]} with the per-layer tensors documented in ``selmem.model.Output``. Each per-layer
metric returns a list with one entry per layer; an entry is None where the metric is undefined
for that layer (a 0/0, a missing key, ``read`` None). ``memory_metrics`` flattens them into one
dict of floats, leaving out what is undefined, so a logger never sees a NaN it has to explain.

Position convention: token t of a segment with start s sits at absolute position s[b] + t, which
indexes the task's (B, N) ``relevant`` / ``loss_mask`` and (B, N, 2) ``source``; positions
outside [0, N) are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

#: a slot counts as evicted in a segment when less than this share of its old content survived
#: (update.py: kept = P_j < 0.5).
EVICT_BELOW = 0.5


# ---------------------------------------------------------------------------------------------
# plumbing
def segments(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The list of per-segment stats: ``stats["segments"]`` for forward_sequence, ``[stats]`` for
    one forward, ``[]`` for a model without memory stats (the baselines' ``{}``)."""
    if not stats:
        return []
    if "segments" in stats:
        return [s for s in stats["segments"] if s.get("layers")]
    return [stats] if stats.get("layers") else []


def num_layers(stats: dict[str, Any]) -> int:
    """L, the number of layers with stats (0 without memory stats)."""
    segs = segments(stats)
    return len(segs[0]["layers"]) if segs else 0


def _per_layer(stats: dict[str, Any], l: int, key: str) -> list[Tensor] | None:
    """Layer l's tensor ``key`` in every segment, or None if a segment lacks it (or has None)."""
    out = []
    for seg in segments(stats):
        value = seg["layers"][l].get(key)
        if value is None:
            return None
        out.append(value)
    return out or None


def _final(stats: dict[str, Any], l: int, key: str) -> Tensor | None:
    """Layer l's ``key`` after the last segment (usage, age: the state at the end)."""
    values = _per_layer(stats, l, key)
    return values[-1] if values else None


def _positions(seg: dict[str, Any], T: int, N: int) -> tuple[Tensor, Tensor]:
    """Absolute positions (B, T) of a segment's tokens, clamped into [0, N), and their validity."""
    start = seg["start"]
    pos = start[:, None] + torch.arange(T, device=start.device)  # (B, T)
    valid = (pos >= 0) & (pos < N)
    return pos.clamp(0, N - 1), valid


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


# ---------------------------------------------------------------------------------------------
# writing
def write_rate(stats: dict[str, Any]) -> list[float | None]:
    """Per layer: the mean of head B's gate over every token of every segment and sequence,
    sum_{s,b,t} gate[s][b, t] / (number of tokens). A token-weighted mean, so a short last
    segment counts by its length."""
    out: list[float | None] = []
    for l in range(num_layers(stats)):
        gates = _per_layer(stats, l, "gate")  # S x (B, T)
        if gates is None:
            out.append(None)
            continue
        total = sum(float(g.double().sum()) for g in gates)
        out.append(_ratio(total, sum(g.numel() for g in gates)))
    return out


def written_per_segment(stats: dict[str, Any], threshold: float = 0.5) -> list[float | None]:
    """Per layer: tokens written per segment, the number of tokens with gate > ``threshold`` in
    a segment of one sequence, averaged over sequences and segments:
    sum_{s,b} #{t : gate[s][b, t] > threshold} / (S * B)."""
    out: list[float | None] = []
    for l in range(num_layers(stats)):
        gates = _per_layer(stats, l, "gate")
        if gates is None:
            out.append(None)
            continue
        counts = [float((g > threshold).sum()) for g in gates]
        out.append(_ratio(sum(counts), sum(g.shape[0] for g in gates)))
    return out


def normalised_entropy(mass: Tensor) -> Tensor:
    """mass (B, M) >= 0 -> (B,) entropy of mass / sum(mass) over the M slots, divided by log M:
    1 = spread evenly over all slots, 0 = all on one slot. A row with no mass gives 0; with
    M == 1 a row with mass gives 1 (its one slot is used evenly). 0 log 0 = 0."""
    mass = mass.double()
    total = mass.sum(-1)  # (B,)
    p = mass / total.clamp_min(1e-300)[:, None]  # (B, M)
    h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # p = 0 terms vanish
    M = mass.shape[-1]
    h = h / math.log(M) if M > 1 else torch.ones_like(h)
    return torch.where(total > 0, h, torch.zeros_like(h))


def slot_entropy(stats: dict[str, Any]) -> list[float | None]:
    """Per layer: slot utilisation entropy. Write mass of slot j in sequence b is
    sum over segments and candidates of write[b, c, j]; its ``normalised_entropy`` over the
    M slots (0 if nothing was written), averaged over the batch."""
    out: list[float | None] = []
    for l in range(num_layers(stats)):
        writes = _per_layer(stats, l, "write")  # S x (B, C, M)
        if writes is None:
            out.append(None)
            continue
        mass = sum(w.double().sum(1) for w in writes)  # (B, M)
        out.append(float(normalised_entropy(mass).mean()))
    return out


# ---------------------------------------------------------------------------------------------
# selection against the task's ground truth
def selection_counts(stats: dict[str, Any], relevant: Tensor,
                     threshold: float = 0.5) -> list[tuple[int, int, int] | None]:
    """Per layer: (selected, relevant, both) token counts over the batch and every segment, where a
    token at absolute position p of sequence b is selected when its gate > ``threshold`` and
    relevant when ``relevant[b, p]`` (B, N) bool; positions outside [0, N) are not counted."""
    N = relevant.shape[1]
    out: list[tuple[int, int, int] | None] = []
    for l in range(num_layers(stats)):
        gates = _per_layer(stats, l, "gate")
        if gates is None:
            out.append(None)
            continue
        sel_n = rel_n = both_n = 0
        for seg, g in zip(segments(stats), gates, strict=True):
            pos, valid = _positions(seg, g.shape[1], N)
            rel = relevant.to(g.device).bool().gather(1, pos) & valid  # (B, T)
            sel = (g > threshold) & valid
            sel_n += int(sel.sum())
            rel_n += int(rel.sum())
            both_n += int((sel & rel).sum())
        out.append((sel_n, rel_n, both_n))
    return out


def selection_precision(stats: dict[str, Any], relevant: Tensor,
                        threshold: float = 0.5) -> list[float | None]:
    """Per layer: |selected & relevant| / |selected|, micro-averaged (counts pooled over the batch
    and segments, see ``selection_counts``). None when no token is selected."""
    counts = selection_counts(stats, relevant, threshold)
    return [None if c is None else _ratio(c[2], c[0]) for c in counts]


def selection_recall(stats: dict[str, Any], relevant: Tensor,
                     threshold: float = 0.5) -> list[float | None]:
    """Per layer: |selected & relevant| / |relevant|, micro-averaged (counts pooled over the batch
    and segments, see ``selection_counts``). None when no position is relevant."""
    counts = selection_counts(stats, relevant, threshold)
    return [None if c is None else _ratio(c[2], c[1]) for c in counts]


# ---------------------------------------------------------------------------------------------
# reading
def read_hits(stats: dict[str, Any], loss_mask: Tensor,
              source: Tensor) -> list[tuple[int, int, float] | None]:
    """Per layer: (hits, answers, mass). An answer is a token at absolute position p of sequence b
    with loss_mask[b, p] and source[b, p, 0] >= 0. There, j* = argmax_j read[b, t, j] over the
    layer's own M slots (read's first M entries; the R hints after them are ignored; ties go to the
    lowest j), and the answer is a hit when source[b, p, 0] <= provenance_read[b, j*] <
    source[b, p, 1]; mass sums sum_j read[b, t, j] over the M slots at the answers (the rest of the
    joint softmax is on the segment's own tokens and the hints). A layer whose read is None (read
    off) gives None."""
    N = loss_mask.shape[1]
    out: list[tuple[int, int] | None] = []
    for l in range(num_layers(stats)):
        reads, provs = _per_layer(stats, l, "read"), _per_layer(stats, l, "provenance_read")
        if reads is None or provs is None:
            out.append(None)
            continue
        hits = answers = 0
        mass = 0.0
        for seg, read, prov in zip(segments(stats), reads, provs, strict=True):
            M, T = prov.shape[1], read.shape[1]
            pos, valid = _positions(seg, T, N)
            src = source.to(read.device).gather(1, pos[..., None].expand(-1, -1, 2))  # (B, T, 2)
            scored = loss_mask.to(read.device).bool().gather(1, pos) & valid
            scored = scored & (src[..., 0] >= 0)
            j = read[..., :M].argmax(-1)  # (B, T) most-read own slot
            p = prov.gather(1, j)  # (B, T) the input position that slot holds
            hit = scored & (p >= src[..., 0]) & (p < src[..., 1])
            hits, answers = hits + int(hit.sum()), answers + int(scored.sum())
            mass += float((read[..., :M].double().sum(-1) * scored).sum())
        out.append((hits, answers, mass))
    return out


def read_hit_rate(stats: dict[str, Any], loss_mask: Tensor, source: Tensor) -> list[float | None]:
    """Per layer: hits / answers pooled over the batch and segments (see ``read_hits``); None when
    the layer has no read or there is no answer with a known source."""
    return [None if c is None else _ratio(c[0], c[1]) for c in read_hits(stats, loss_mask, source)]


def read_memory_share(stats: dict[str, Any], loss_mask: Tensor, source: Tensor) -> list[float | None]:
    """Per layer: the read's mean attention on the layer's own slots at the answers that
    ``read_hits`` counts (the memory's share of the read where the fact is in an earlier segment);
    None as in ``read_hit_rate``. A read can find the right slot (hit) and still take little from
    it: docs/FINDINGS.md 12."""
    return [None if c is None else _ratio(c[2], c[1]) for c in read_hits(stats, loss_mask, source)]


# ---------------------------------------------------------------------------------------------
# forgetting
def evictions_per_segment(stats: dict[str, Any],
                          evict_below: float = EVICT_BELOW) -> list[float | None]:
    """Per layer: slots evicted per segment, the number of slots j with kept[b, j] < ``evict_below``
    in a segment of one sequence, averaged over sequences and segments:
    sum_{s,b} #{j : kept[s][b, j] < evict_below} / (S * B)."""
    out: list[float | None] = []
    for l in range(num_layers(stats)):
        kept = _per_layer(stats, l, "kept")  # S x (B, M)
        if kept is None:
            out.append(None)
            continue
        evicted = sum(float((k < evict_below).sum()) for k in kept)
        out.append(_ratio(evicted, sum(k.shape[0] for k in kept)))
    return out


def retention(stats: dict[str, Any]) -> list[float | None]:
    """Per layer: the fraction of a slot's content that survives one segment, averaged over
    sequences, slots and segments: sum_{s,b,j} kept[s][b, j] / (S * B * M), where kept = P_j =
    prod_t (1 - a_tj) is the share of slot j's old content left after segment s's writes
    (update.py). 1 = nothing overwritten; a memory that erases a little of every slot at every
    write scores low here even when its slot entropy looks ideal (writes spread evenly)."""
    out: list[float | None] = []
    for l in range(num_layers(stats)):
        kept = _per_layer(stats, l, "kept")  # S x (B, M)
        out.append(None if kept is None else _ratio(sum(float(k.double().sum()) for k in kept),
                                                    sum(k.numel() for k in kept)))
    return out


def _final_reduce(stats: dict[str, Any], key: str, reduce: str) -> list[float | None]:
    out: list[float | None] = []
    for l in range(num_layers(stats)):
        x = _final(stats, l, key)
        out.append(None if x is None else float(getattr(x.double(), reduce)()))
    return out


def age_mean(stats: dict[str, Any]) -> list[float | None]:
    """Per layer: mean over batch and slots of ``age`` (B, M) after the last segment (in
    segments)."""
    return _final_reduce(stats, "age", "mean")


def age_max(stats: dict[str, Any]) -> list[float | None]:
    """Per layer: max over batch and slots of ``age`` (B, M) after the last segment."""
    return _final_reduce(stats, "age", "max")


def usage_mean(stats: dict[str, Any]) -> list[float | None]:
    """Per layer: mean over batch and slots of ``usage`` (B, M) after the last segment."""
    return _final_reduce(stats, "usage", "mean")


def age_histogram(stats: dict[str, Any], edges: Sequence[float]) -> Tensor | None:
    """(L, K) long counts of final slot ages: entry [l, k] counts the (b, j) with
    edges[k] <= age[b, j] < edges[k+1] in layer l after the last segment (K = len(edges) - 1;
    ages outside [edges[0], edges[-1]) are not counted). None without age stats."""
    if len(edges) < 2:
        raise ValueError(f"edges needs at least 2 bin edges, got {len(edges)}")
    rows = []
    for l in range(num_layers(stats)):
        age = _final(stats, l, "age")
        if age is None:
            return None
        e = torch.as_tensor(edges, dtype=torch.float64, device=age.device)
        k = torch.bucketize(age.double().flatten(), e, right=True) - 1  # bin of each age
        k = k[(k >= 0) & (k < len(edges) - 1)]
        rows.append(torch.bincount(k, minlength=len(edges) - 1).cpu())
    return torch.stack(rows) if rows else None


# ---------------------------------------------------------------------------------------------
def memory_metrics(stats: dict[str, Any], batch: Any = None,
                   threshold: float = 0.5) -> dict[str, float]:
    """All diagnostics as one flat dict of floats: for each metric, "L{l}/<name>" per layer and
    "<name>" = the mean over the layers where it is defined; for the read hit rate also
    "read_hit_rate_best" = the max over layers. Names: write_rate, written_per_segment,
    slot_entropy, precision, recall (need ``batch.relevant``), read_hit_rate and
    read_memory_share (need ``batch.source``), retention, age_mean, age_max, evictions_per_segment, usage_mean. Undefined values
    (0/0, missing stats or batch fields) are left out; ``stats`` without memory stats gives {}.
    ``batch`` is a ``selmem.tasks.base.Batch`` (or anything with the same attributes)."""
    if num_layers(stats) == 0:
        return {}
    per: dict[str, list[float | None]] = {
        "write_rate": write_rate(stats),
        "written_per_segment": written_per_segment(stats, threshold),
        "slot_entropy": slot_entropy(stats),
    }
    relevant = getattr(batch, "relevant", None)
    if relevant is not None:
        per["precision"] = selection_precision(stats, relevant, threshold)
        per["recall"] = selection_recall(stats, relevant, threshold)
    source, loss_mask = getattr(batch, "source", None), getattr(batch, "loss_mask", None)
    if source is not None and loss_mask is not None:
        hits = read_hits(stats, loss_mask, source)
        per["read_hit_rate"] = [None if c is None else _ratio(c[0], c[1]) for c in hits]
        per["read_memory_share"] = [None if c is None else _ratio(c[2], c[1]) for c in hits]
    per.update(retention=retention(stats), age_mean=age_mean(stats), age_max=age_max(stats),
               evictions_per_segment=evictions_per_segment(stats), usage_mean=usage_mean(stats))
    out: dict[str, float] = {}
    for name, values in per.items():
        defined = [v for v in values if v is not None]
        if defined:
            out[name] = sum(defined) / len(defined)
        if name == "read_hit_rate" and defined:
            out["read_hit_rate_best"] = max(defined)
        out.update({f"L{l}/{name}": v for l, v in enumerate(values) if v is not None})
    return out
