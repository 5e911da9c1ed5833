"""Context-free lookup tables: they find a mask that ids or positions give away, and nothing else."""

from __future__ import annotations

import doctest
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

import selmem.tasks.shortcuts as shortcuts
from selmem.tasks import MQARTask
from selmem.tasks.base import Batch, Task
from selmem.tasks.common import make_batch
from selmem.tasks.shortcuts import RULES, best_threshold_f1, f1, shortcut_f1


@dataclass
class Toy(Task):
    """Random ids 1..8 at 32 positions; ``relevant`` is decided by ``mask``."""

    name: ClassVar[str] = "toy"
    mask: str = "id"  # "id": id 3; "position": positions 5, 13, 21, 29; "coin": a fair coin; "none"
    seed: int = 0

    vocab_size = 9
    seq_len = 32

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        rng = self.rng(split, index)
        tokens = rng.integers(1, 9, size=(batch_size, 32))
        relevant = {
            "id": tokens == 3,
            "position": np.broadcast_to(np.arange(32) % 8 == 5, tokens.shape),
            "coin": rng.random(tokens.shape) < 0.5,
            "none": None,
        }[self.mask]
        return make_batch(tokens, tokens, np.ones_like(tokens, dtype=bool), relevant)


@pytest.mark.parametrize("rule", RULES)
def test_mqar_default_layout_is_given_away(rule):
    assert shortcut_f1(MQARTask(), rule) == 1.0


@pytest.mark.parametrize("mask, caught_by", [("id", "id-segment"), ("position", "position")])
def test_each_rule_finds_its_own_shortcut_only(mask, caught_by):
    """The other rule sees a 1-in-8 rate everywhere: its best is "all", F1 = 2/9."""
    task = Toy(mask=mask)
    other = next(r for r in RULES if r != caught_by)
    assert shortcut_f1(task, caught_by, segment_len=8) == 1.0
    assert shortcut_f1(task, other, segment_len=8) == pytest.approx(2 / 9, abs=0.02)


@pytest.mark.parametrize("rule", RULES)
def test_a_coin_is_not_caught(rule):
    """Best F1 on a fair coin is predicting everything: 2 * 0.5 / 1.5 = 2/3, up to noise."""
    assert shortcut_f1(Toy(mask="coin"), rule, segment_len=8) == pytest.approx(2 / 3, abs=0.02)


def test_best_threshold_beats_every_fixed_threshold():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 20, 500) / 20
    truth = rng.random(500) < score**2
    best = best_threshold_f1(score, truth)
    assert all(best >= f1(score >= t, truth) - 1e-12 for t in np.unique(score[score > 0]))
    assert best == max(f1(score >= t, truth) for t in np.unique(score[score > 0]))
    assert best_threshold_f1(np.zeros(4), np.ones(4, dtype=bool)) == 0.0


def test_rare_needles_are_scored_at_low_rates():
    """A mask relevant at each key ~2% of the time still has a best threshold below 5%."""
    score = np.r_[np.full(100, 0.02), np.zeros(900)]
    truth = np.r_[np.ones(2, dtype=bool), np.zeros(998, dtype=bool)]
    assert best_threshold_f1(score, truth) == pytest.approx(2 * 2 / (100 + 2))


def test_bad_rule_is_named():
    with pytest.raises(ValueError, match=r"^rule must be one of .*'id-pos'"):
        shortcut_f1(MQARTask(), "id-pos")


def test_id_segment_needs_a_segment_len():
    with pytest.raises(ValueError, match="segment_len"):
        shortcut_f1(Toy(), "id-segment")
    assert shortcut_f1(Toy(mask="position"), "position") == 1.0, "position needs none"


def test_a_task_without_relevant_mask_is_refused():
    with pytest.raises(ValueError, match="no relevant mask"):
        shortcut_f1(Toy(mask="none"), "position")


def test_doctests():
    assert doctest.testmod(shortcuts, optionflags=doctest.ELLIPSIS).failed == 0


@dataclass
class Lookback(Task):
    """32 tokens, answers at positions 16..19, each with a 2-token source ending ``back``
    positions before it; position 20 is scored without a source."""

    name: ClassVar[str] = "lookback"
    back: int = 2
    seed: int = 0

    vocab_size = 9
    seq_len = 32

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        tokens = self.rng(split, index).integers(1, 9, size=(batch_size, 32))
        scored = np.zeros_like(tokens, dtype=bool)
        scored[:, 16:21] = True
        source = np.full((batch_size, 32, 2), -1)
        for p in range(16, 20):
            source[:, p] = (p - self.back - 1, p - self.back + 1)
        return make_batch(tokens, tokens, scored, source=source)


@pytest.mark.parametrize(("back", "share"), [(0, 1.0), (2, 0.5), (16, 0.0)])
def test_in_segment_share_counts_sources_that_end_in_the_answers_segment(back, share):
    """The source [p-back-1, p-back+1) has its last token at p-back: inside p's segment of 8
    (16..23) for every answer at back 0, for answers 18 and 19 at back 2 (16 and 17 end in
    segment 1), never at back 16; the scored position without a source is not counted."""
    assert shortcuts.in_segment_share(Lookback(back=back), 8, batches=2, batch_size=3) == share


def test_the_report_names_each_check_a_task_supports():
    """A task with sources but no relevant mask gets the in-segment share only; mqar gets all."""
    assert list(shortcuts.report(Lookback(), 8, batches=1, batch_size=2)) == [
        "scored positions whose source ends in their own segment"]
    mqar = shortcuts.report(MQARTask(num_pairs=2, num_keys=4, num_values=4, segment_len=8, num_segments=2), 8,
                            batches=2, batch_size=4)
    assert mqar == {"shortcut F1 (id-segment)": 1.0, "shortcut F1 (position)": mqar["shortcut F1 (position)"],
                    "scored positions whose source ends in their own segment": 0.0}
    with pytest.raises(ValueError, match="segment_len must be >= 1"):
        shortcuts.in_segment_share(Lookback(), 0)
