"""Passkey: the digits after KEY are the targets after QUERY, at any length."""

from __future__ import annotations

import pytest

from selmem.tasks import PasskeyTask, build_task
from selmem.tasks.passkey import DIGIT0, FILLER0, FILLER_VOCAB, KEY, QUERY
from selmem.tasks.shortcuts import RULES, shortcut_f1

HARD = PasskeyTask(length=128, key_len=4, filler="random", shared_ids=True, needles=2)  # S = 16


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
        ("needles", dict(key_len=3, needles=4)),
        ("needles", dict(needles=0)),
        ("length", dict(length=12, key_len=5, needles=3)),
        ("shared_ids", dict(shared_ids=1)),
    ],
)
def test_validate_names_the_field(field, params):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("passkey", **params)


def hard_oracle(row: list[int], pieces: list[int]) -> tuple[list[int], list[int]]:
    """(passkey ids, their positions) from tokens alone: the ``pieces[i]`` tokens after KEY i."""
    keys = [i for i, t in enumerate(row) if t == KEY]
    assert len(keys) == len(pieces)
    pos = [p + 1 + j for p, n in zip(keys, pieces, strict=True) for j in range(n)]
    return [row[i] for i in pos], pos


@pytest.mark.parametrize("filler", ["repeat", "random"])
@pytest.mark.parametrize("length, key_len, needles", [(9, 3, 3), (64, 5, 2), (300, 7, 3)])
def test_hard_oracle_finds_the_pieces(length, key_len, needles, filler):
    task = PasskeyTask(length=length, key_len=key_len, needles=needles, filler=filler, shared_ids=True)
    batch = task.batch("test", 2, 16)
    assert sum(task.piece_lens()) == key_len and max(task.piece_lens()) - min(task.piece_lens()) <= 1
    digit_ids = set(range(DIGIT0, DIGIT0 + 10))
    for b in range(16):
        row = batch.tokens[b].tolist()
        assert row.count(QUERY) == 1 and row[length - key_len] == QUERY
        key, pos = hard_oracle(row, task.piece_lens())
        assert set(key) <= digit_ids and pos[-1] < length - key_len
        assert batch.targets[b, length - key_len :].tolist() == key
        assert batch.relevant[b].nonzero().flatten().tolist() == pos
        assert batch.source[b, length - key_len :, 0].tolist() == pos
        rest = [i for i in range(length - key_len) if i not in pos and row[i] != KEY]
        assert {row[i] for i in rest} <= digit_ids, "filler is drawn from the digit ids"
        if filler == "repeat":
            assert all(row[i] == DIGIT0 + i % 10 for i in rest)


def test_needles_spread_over_the_row():
    batch = HARD.batch("train", 0, 64)
    gaps = [b.nonzero().flatten()[2] - b.nonzero().flatten()[1] for b in batch.relevant]
    assert min(gaps) >= 2, "the second KEY sits between the pieces"
    assert max(gaps) > HARD.length // 2, "pieces can be far apart"


def test_hard_worked_example_matches_the_docstring():
    task = PasskeyTask(length=18, key_len=4, filler="random", shared_ids=True, needles=2)
    batch = task.batch("train", 0, 1)
    assert batch.tokens[0].tolist() == [4, 11, 9, 7, 8, 8, 9, 2, 1, 9, 1, 11, 6, 3, 12, 9, 7, 6]
    assert batch.relevant[0].nonzero().flatten().tolist() == [2, 3, 12, 13]


def test_default_layout_is_caught_by_a_shortcut():
    assert max(shortcut_f1(PasskeyTask(), rule, segment_len=16) for rule in RULES) >= 0.95


@pytest.mark.parametrize("rule", RULES)
def test_hard_layout_has_no_shortcut(rule):
    assert shortcut_f1(HARD, rule, segment_len=16) <= 0.8
