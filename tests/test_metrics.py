"""Every diagnostic of selmem.metrics on hand-built stats whose value is known, plus one run of a
tiny model through memory_metrics."""

from __future__ import annotations

import math

import pytest
import torch

from selmem import metrics
from selmem.config import SelmemConfig
from selmem.model import SelectiveMemoryTransformer
from selmem.tasks.base import Batch


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def layer(gate=None, write=None, kept=None, read=None, provenance_read=None, usage=None, age=None):
    """One layer's stats; absent entries are filled with neutral tensors of matching shape."""
    gate = t(gate if gate is not None else [[0.0]])
    B, T = gate.shape
    write = t(write) if write is not None else torch.zeros(B, T, 1)
    M = write.shape[-1]
    return {
        "gate": gate, "cand_gate": gate, "cand_pos": torch.zeros(B, T, dtype=torch.long),
        "write": write, "contrib": write,
        "kept": t(kept) if kept is not None else torch.ones(B, M),
        "read": t(read) if read is not None else None,
        "provenance_read": (t(provenance_read, torch.long) if provenance_read is not None
                            else torch.full((B, M), -1)),
        "usage": t(usage) if usage is not None else torch.zeros(B, M),
        "age": t(age) if age is not None else torch.zeros(B, M),
        "provenance": torch.full((B, M), -1),
    }


def seq(*segs):
    """forward_sequence stats from (start, [layer, ...]) pairs; start is per-batch or one int."""
    out = []
    for start, layers in segs:
        B = layers[0]["gate"].shape[0]
        out.append({"start": torch.full((B,), start, dtype=torch.long), "layers": layers})
    return {"segments": out}


# ---------------------------------------------------------------------------------------------
def test_write_rate_and_written_per_segment():
    s = seq((0, [layer(gate=[[1, 0, 1, 0]])]), (4, [layer(gate=[[0.5, 0.5]])]))
    assert metrics.write_rate(s) == [pytest.approx(3 / 6)]  # token-weighted over both segments
    assert metrics.written_per_segment(s) == [1.0]  # 2 then 0 (0.5 is not > 0.5)
    assert metrics.written_per_segment(s, threshold=0.4) == [2.0]  # 2 then 2


def test_per_layer_values_and_mean_over_layers():
    s = seq((0, [layer(gate=[[1, 1]]), layer(gate=[[0, 0]])]))
    assert metrics.write_rate(s) == [1.0, 0.0]
    out = metrics.memory_metrics(s)
    assert out["L0/write_rate"] == 1.0 and out["L1/write_rate"] == 0.0 and out["write_rate"] == 0.5


@pytest.mark.parametrize("mass, want", [
    ([1, 1, 1, 1], 1.0),
    ([0, 3, 0, 0], 0.0),
    ([2, 2, 0, 0], 0.5),  # log 2 / log 4
    ([0, 0, 0, 0], 0.0),  # nothing written: defined as 0
], ids=["uniform", "one-slot", "two-of-four", "empty"])
def test_normalised_entropy(mass, want):
    assert metrics.normalised_entropy(t([mass])).item() == pytest.approx(want)


def test_slot_entropy_sums_write_mass_over_candidates_and_segments():
    one_slot = [[[0.0, 1, 0, 0], [0, 0.5, 0, 0]]]  # (B=1, C=2, M=4): all on slot 1
    s = seq((0, [layer(gate=[[1, 1]], write=one_slot)]))
    assert metrics.slot_entropy(s) == [pytest.approx(0.0)]
    # slot 0 in the first segment, slot 1 in the second: two of four slots evenly
    s = seq((0, [layer(gate=[[1]], write=[[[1.0, 0, 0, 0]]])]),
            (1, [layer(gate=[[1]], write=[[[0, 1.0, 0, 0]]])]))
    assert metrics.slot_entropy(s) == [pytest.approx(0.5)]
    # batch mean: a uniform sequence (1) and one that wrote nothing (0)
    s = seq((0, [layer(gate=[[1], [0]], write=[[[1.0, 1, 1, 1]], [[0.0, 0, 0, 0]]])]))
    assert metrics.slot_entropy(s) == [pytest.approx(0.5)]


def test_selection_precision_recall():
    s = seq((0, [layer(gate=[[1, 0, 1, 0]])]))
    relevant = t([[1, 1, 0, 0]], torch.bool)
    assert metrics.selection_counts(s, relevant) == [(2, 2, 1)]
    assert metrics.selection_precision(s, relevant) == [0.5]
    assert metrics.selection_recall(s, relevant) == [0.5]


def test_selection_uses_absolute_positions_and_micro_averages():
    # second segment starts at 2: its gates line up with relevant[:, 2:4]
    s = seq((0, [layer(gate=[[1, 0], [0, 0]])]), (2, [layer(gate=[[0, 1], [1, 1]])]))
    relevant = t([[1, 0, 0, 1], [0, 0, 1, 0]], torch.bool)
    # b0: selected {0, 3}, relevant {0, 3}; b1: selected {2, 3}, relevant {2}
    assert metrics.selection_counts(s, relevant) == [(4, 3, 3)]
    assert metrics.selection_precision(s, relevant) == [0.75]
    assert metrics.selection_recall(s, relevant) == [1.0]


def test_selection_empty_cases_are_none():
    s = seq((0, [layer(gate=[[0, 0, 0]])]))
    assert metrics.selection_precision(s, t([[1, 0, 0]], torch.bool)) == [None]  # nothing selected
    s = seq((0, [layer(gate=[[1, 0, 0]])]))
    assert metrics.selection_recall(s, t([[0, 0, 0]], torch.bool)) == [None]  # nothing relevant
    assert metrics.selection_precision(s, t([[0, 0, 0]], torch.bool)) == [0.0]


# ---------------------------------------------------------------------------------------------
def _read_case(src_start, src_end, scored=True):
    """One answer at position 5 (segment start 4, t = 1). Own slots M = 3 with provenance
    [-1, 9, 2]; read peaks on own slot 2 (provenance 2); a hint entry (index 3) reads more but is
    not an own slot and must be ignored."""
    read = [[[0.9, 0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.3, 0.5, 0.0]]]  # (B=1, T=2, M+R=5)
    lay = layer(gate=[[0, 0]], write=[[[0.0] * 3] * 2], read=read, provenance_read=[[-1, 9, 2]])
    s = seq((4, [lay]))
    N = 6
    loss_mask = torch.zeros(1, N, dtype=torch.bool)
    loss_mask[0, 5] = scored
    source = torch.full((1, N, 2), -1, dtype=torch.long)
    source[0, 5] = t([src_start, src_end], torch.long)
    return s, loss_mask, source


@pytest.mark.parametrize("span, want",
                         [((0, 4), 1.0), ((2, 3), 1.0), ((3, 4), 0.0), ((9, 10), 0.0)],
                         ids=["inside", "exact", "outside", "hint-or-other-slot"])
def test_read_hit_rate(span, want):
    s, loss_mask, source = _read_case(*span)
    assert metrics.read_hits(s, loss_mask, source) == [(int(want), 1, pytest.approx(0.5))]
    assert metrics.read_hit_rate(s, loss_mask, source) == [want]
    # the memory's share of the read: own slots 0.1 + 0.1 + 0.3, not the hint's 0.5
    assert metrics.read_memory_share(s, loss_mask, source) == [pytest.approx(0.5)]


def test_read_hit_rate_skips_unscored_unknown_source_and_read_none():
    s, loss_mask, source = _read_case(0, 4, scored=False)
    assert metrics.read_hit_rate(s, loss_mask, source) == [None]  # no answer
    s, loss_mask, source = _read_case(-1, -1)
    assert metrics.read_hit_rate(s, loss_mask, source) == [None]  # source unknown
    s, loss_mask, source = _read_case(0, 4)
    s["segments"][0]["layers"][0]["read"] = None  # read off
    assert metrics.read_hit_rate(s, loss_mask, source) == [None]
    batch = Batch(None, None, loss_mask, None, source)
    assert "read_hit_rate" not in metrics.memory_metrics(s, batch)


# ---------------------------------------------------------------------------------------------
def test_evictions_per_segment():
    s = seq((0, [layer(kept=[[0.2, 0.9, 0.4]], write=[[[0.0] * 3]])]))
    assert metrics.evictions_per_segment(s) == [2.0]
    # two segments with 2 and 0 evictions -> 1 per segment; threshold 0.5 is strict
    s = seq((0, [layer(kept=[[0.2, 0.9, 0.4]], write=[[[0.0] * 3]])]),
            (1, [layer(kept=[[0.5, 1.0, 0.9]], write=[[[0.0] * 3]])]))
    assert metrics.evictions_per_segment(s) == [1.0]


def test_age_and_usage_use_the_final_segment():
    first = layer(write=[[[0.0] * 4]], age=[[100, 100, 100, 100]], usage=[[9, 9, 9, 9]])
    last = layer(write=[[[0.0] * 4]], age=[[0, 1, 1, 6]], usage=[[0.5, 1.5, 0, 2]])
    s = seq((0, [first]), (1, [last]))
    assert metrics.age_mean(s) == [2.0] and metrics.age_max(s) == [6.0]
    assert metrics.usage_mean(s) == [1.0]
    hist = metrics.age_histogram(s, [0, 1, 2, 5])  # [0,1) [1,2) [2,5); 6 is outside
    assert hist.tolist() == [[1, 2, 0]]
    with pytest.raises(ValueError, match="at least 2 bin edges"):
        metrics.age_histogram(s, [0])


# ---------------------------------------------------------------------------------------------
def test_memory_metrics_keys_and_skips():
    assert metrics.memory_metrics({}) == {}  # baselines
    s = seq((0, [layer(gate=[[1, 0, 1, 0]], write=[[[1.0, 0], [0, 0], [0, 1.0], [0, 0]]])]))
    out = metrics.memory_metrics(s)  # no batch: no precision, recall, read hit rate
    assert {"write_rate", "written_per_segment", "slot_entropy", "age_mean", "age_max",
            "evictions_per_segment", "usage_mean", "L0/write_rate"} <= set(out)
    assert not {"precision", "recall", "read_hit_rate"} & set(out)
    assert out["slot_entropy"] == pytest.approx(1.0)
    relevant = t([[1, 1, 0, 0]], torch.bool)
    out = metrics.memory_metrics(s, Batch(None, None, None, relevant, None))
    assert out["precision"] == 0.5 and out["recall"] == 0.5 and out["L0/precision"] == 0.5
    # one forward's stats (a single segment) give the same numbers
    assert metrics.memory_metrics(s["segments"][0], Batch(None, None, None, relevant, None)) == out


def test_memory_metrics_on_a_tiny_model():
    torch.manual_seed(0)
    cfg = SelmemConfig(vocab_size=20, d_model=32, n_layers=2, slots=4, d_mem=16, max_segment_len=8)
    model = SelectiveMemoryTransformer(cfg).eval()
    B, N = 2, 20  # 8 + 8 + 4: the last segment is short
    tokens = torch.randint(0, 20, (B, N))
    relevant = torch.zeros(B, N, dtype=torch.bool)
    relevant[:, [1, 3, 9]] = True
    loss_mask = torch.zeros(B, N, dtype=torch.bool)
    loss_mask[:, [17, 19]] = True
    source = torch.full((B, N, 2), -1, dtype=torch.long)
    source[:, 17] = torch.tensor([1, 2])
    source[:, 19] = torch.tensor([3, 4])
    with torch.no_grad():
        stats = model.forward_sequence(tokens, segment_len=8).stats
    out = metrics.memory_metrics(stats, Batch(tokens, tokens, loss_mask, relevant, source))
    L = cfg.n_layers
    for name in ["write_rate", "written_per_segment", "slot_entropy", "read_hit_rate",
                 "age_mean", "evictions_per_segment", "usage_mean"]:
        assert name in out and all(f"L{l}/{name}" in out for l in range(L)), name
    assert all(math.isfinite(v) for v in out.values())
    for name in ["write_rate", "slot_entropy", "read_hit_rate", "read_hit_rate_best",
                 "precision", "recall"]:
        if name in out:  # precision is undefined if no token passes the gate
            assert 0.0 <= out[name] <= 1.0, name
    assert "recall" in out  # relevant is non-empty
    assert 0.0 <= out["written_per_segment"] <= 8.0
    assert 0.0 <= out["evictions_per_segment"] <= cfg.slots
    assert out["age_mean"] >= 0.0 and out["usage_mean"] >= 0.0
    assert metrics.age_histogram(stats, [0, 1, 2, 3, 4]).sum() <= L * B * cfg.slots


def test_retention_is_the_mean_kept_share():
    s = seq((0, [layer(kept=[[0.2, 1.0, 0.6]], write=[[[0.0] * 3]])]),
            (1, [layer(kept=[[1.0, 1.0, 0.4]], write=[[[0.0] * 3]])]))
    assert metrics.retention(s) == [pytest.approx(0.7)]
    assert metrics.memory_metrics(s)["retention"] == pytest.approx(0.7)
