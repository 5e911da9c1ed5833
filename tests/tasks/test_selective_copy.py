"""Selective copying: the data tokens of the region, in order, are the targets after the marker."""

from __future__ import annotations

import pytest

from selmem.tasks import SelectiveCopyTask, build_task
from selmem.tasks.selective_copy import BLANK, DATA0, MARK
from selmem.tasks.shortcuts import RULES, shortcut_f1

HARD = SelectiveCopyTask(seq_len=64, num_tokens=4, vocab=8, shared_ids=True)  # S = 16


def test_oracle_reads_the_data_in_order():
    task = SelectiveCopyTask(seq_len=40, num_tokens=6, vocab=5)
    batch = task.batch("test", 1, 16)
    P = task.region_len
    for b in range(16):
        row = batch.tokens[b].tolist()
        assert row[P] == MARK and row.count(MARK) == 1
        data = [t for t in row[:P] if t != BLANK]
        assert len(data) == 6
        assert batch.loss_mask[b].nonzero().flatten().tolist() == list(range(P, P + 6))
        assert batch.targets[b, P : P + 6].tolist() == data
        assert row[P + 1 :] == data, "teacher forced: the tail repeats the answer"
        assert [row[s] for s in batch.source[b, P : P + 6, 0].tolist()] == data
        assert batch.relevant[b].nonzero().flatten().tolist() == [
            i for i in range(P) if row[i] != BLANK
        ]


@pytest.mark.parametrize(
    "field, params",
    [
        ("seq_len", dict(seq_len=8, num_tokens=4)),
        ("vocab", dict(vocab=0)),
        ("num_tokens", dict(num_tokens=0)),
        ("seq_len", dict(seq_len=12, num_tokens=4, shared_ids=True)),
        ("shared_ids", dict(shared_ids="yes")),
    ],
)
def test_validate_names_the_field(field, params):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("selective-copy", **params)


def test_tightest_fit():
    batch = SelectiveCopyTask(seq_len=9, num_tokens=4).batch("train", 0, 3)
    assert batch.relevant[:, :4].all(), "a region of exactly num_tokens is all data"


def test_tightest_fit_of_the_hard_layout():
    task = SelectiveCopyTask(seq_len=13, num_tokens=4, shared_ids=True)
    batch = task.batch("train", 0, 3)
    assert (batch.tokens[:, 0:8:2] == task.copy_id).all() and batch.relevant[:, 1:8:2].all()


def test_hard_oracle_reads_the_marked_tokens_in_order():
    """On the hard layout the data is found from context alone: the token after each COPY."""
    task = SelectiveCopyTask(seq_len=40, num_tokens=6, vocab=5, shared_ids=True)
    batch = task.batch("test", 1, 16)
    P, C = task.region_len, task.copy_id
    assert task.vocab_size == SelectiveCopyTask(vocab=5).vocab_size + 1 == C + 1
    assert batch.tokens.max() < task.vocab_size
    noise = set()
    for b in range(16):
        row = batch.tokens[b].tolist()
        assert row[P] == MARK and row.count(MARK) == 1 and BLANK not in row
        marked = [i + 1 for i in range(P) if row[i] == C]
        data = [row[i] for i in marked]
        assert len(data) == 6 and all(DATA0 <= t < C for t in data)
        assert batch.targets[b, P : P + 6].tolist() == data
        assert row[P + 1 :] == data, "teacher forced: the tail repeats the answer"
        assert batch.relevant[b].nonzero().flatten().tolist() == marked
        assert batch.source[b, P : P + 6, 0].tolist() == marked
        noise |= {row[i] for i in range(P) if i not in marked and row[i] != C}
    assert noise == set(range(DATA0, C)), "noise is drawn from the data ids"


def test_hard_worked_example_matches_the_docstring():
    task = SelectiveCopyTask(seq_len=14, num_tokens=3, vocab=4, shared_ids=True)
    batch = task.batch("train", 0, 1)
    assert batch.tokens[0].tolist() == [5, 7, 6, 7, 5, 7, 5, 4, 6, 5, 2, 6, 5, 5]
    assert batch.relevant[0].nonzero().flatten().tolist() == [2, 4, 6]


def test_default_layout_is_caught_by_a_shortcut():
    assert max(shortcut_f1(SelectiveCopyTask(), rule, segment_len=16) for rule in RULES) >= 0.95


@pytest.mark.parametrize("rule", RULES)
def test_hard_layout_has_no_shortcut(rule):
    assert shortcut_f1(HARD, rule, segment_len=16) <= 0.8
