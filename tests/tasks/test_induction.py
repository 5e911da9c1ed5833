"""Induction: the token after the first trigger is the target at the final trigger."""

from __future__ import annotations

import pytest

from selmem.tasks import InductionTask, build_task
from selmem.tasks.induction import TRIGGER
from selmem.tasks.shortcuts import RULES, shortcut_f1


def test_oracle_reads_the_token_after_the_trigger():
    task = InductionTask(seq_len=20, vocab=5)
    batch = task.batch("train", 4, 64)
    for b in range(64):
        row = batch.tokens[b].tolist()
        assert row.count(TRIGGER) == 2 and row[-1] == TRIGGER
        p = row.index(TRIGGER)
        assert batch.loss_mask[b].nonzero().flatten().tolist() == [19]
        assert batch.targets[b, 19] == row[p + 1] != TRIGGER
        assert batch.relevant[b].nonzero().flatten().tolist() == [p + 1]
        assert batch.source[b, 19].tolist() == [p + 1, p + 2]


def test_shortest_row():
    batch = InductionTask(seq_len=3).batch("test", 0, 4)
    assert (batch.tokens[:, 0] == TRIGGER).all() and (
        batch.targets[:, 2] == batch.tokens[:, 1]
    ).all()


@pytest.mark.parametrize("field, params", [("seq_len", dict(seq_len=2)), ("vocab", dict(vocab=0))])
def test_validate_names_the_field(field, params):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("induction", **params)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("seq_len, segment_len", [(64, 16), (128, 32)])
def test_no_shortcut_even_by_default(rule, seq_len, segment_len):
    """The answer is a random data id at a random place: no table beats "every data token"."""
    task = InductionTask(seq_len=seq_len)
    assert shortcut_f1(task, rule, segment_len=segment_len) <= 0.8
    assert shortcut_f1(task, rule, segment_len=segment_len) <= 2 / (seq_len - 1) + 0.02
