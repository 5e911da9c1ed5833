"""Selective copying: the data tokens of the region, in order, are the targets after the marker."""

from __future__ import annotations

import pytest

from selmem.tasks import SelectiveCopyTask, build_task
from selmem.tasks.selective_copy import BLANK, MARK


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
    ],
)
def test_validate_names_the_field(field, params):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("selective-copy", **params)


def test_tightest_fit():
    batch = SelectiveCopyTask(seq_len=9, num_tokens=4).batch("train", 0, 3)
    assert batch.relevant[:, :4].all(), "a region of exactly num_tokens is all data"
