"""Passkey: the digits after KEY are the targets after QUERY, at any length."""

from __future__ import annotations

import pytest

from selmem.tasks import PasskeyTask, build_task
from selmem.tasks.passkey import FILLER0, FILLER_VOCAB, KEY, QUERY


@pytest.mark.parametrize("filler", ["repeat", "random"])
@pytest.mark.parametrize("length", [12, 100, 1000])
def test_oracle_finds_the_key(length, filler):
    task = PasskeyTask(key_len=4, filler=filler).with_length(length)
    batch = task.batch("train", 0, 8)
    assert batch.tokens.shape == (8, length)
    for b in range(8):
        row = batch.tokens[b].tolist()
        assert row.count(KEY) == 1 and row.count(QUERY) == 1
        p, q = row.index(KEY), row.index(QUERY)
        key = row[p + 1 : p + 5]
        assert all(1 <= d <= 10 for d in key) and q == length - 4 > p + 4
        assert batch.loss_mask[b].nonzero().flatten().tolist() == list(range(q, length))
        assert batch.targets[b, q:].tolist() == key
        assert batch.relevant[b].nonzero().flatten().tolist() == list(range(p + 1, p + 5))
        assert batch.source[b, q:, 0].tolist() == list(range(p + 1, p + 5))
        if filler == "repeat":
            rest = [i for i in range(q) if not p <= i <= p + 4]
            assert all(row[i] == FILLER0 + i % FILLER_VOCAB for i in rest)


def test_with_length_keeps_the_rest_and_validates():
    task = PasskeyTask(length=64, key_len=3, seed=7)
    longer = task.with_length(4096)
    assert (longer.length, longer.key_len, longer.seed, task.length) == (4096, 3, 7, 64)
    with pytest.raises(ValueError, match="^length must be"):
        task.with_length(6)


def test_needle_depth_varies():
    batch = PasskeyTask(length=200).batch("train", 0, 32)
    depths = {row.tolist().index(KEY) for row in batch.tokens}
    assert len(depths) > 10


@pytest.mark.parametrize(
    "field, params",
    [
        ("key_len", dict(key_len=0)),
        ("length", dict(length=10, key_len=5)),
        ("filler", dict(filler="lorem")),
    ],
)
def test_validate_names_the_field(field, params):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("passkey", **params)
