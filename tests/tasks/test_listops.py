"""ListOps: an independent evaluator agrees with every target; lengths and layout."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from selmem.tasks import ListOpsTask, build_task
from selmem.tasks.listops import ANSWER, CLOSE, OP_IDS, OPEN, apply_op, evaluate

NAMES = {v: k for k, v in OP_IDS.items()}


def oracle(tokens: list[int]) -> int:
    """Recursive-descent evaluation, independent of the generator's stack evaluator."""

    def parse(i: int) -> tuple[int, int]:
        if tokens[i] != OPEN:
            return tokens[i] - 1, i + 1
        op, i, args = NAMES[tokens[i + 1]], i + 2, []
        while tokens[i] != CLOSE:
            value, i = parse(i)
            args.append(value)
        fn = {
            "MIN": min,
            "MAX": max,
            "MED": lambda a: math.floor(statistics.median(a)),
            "SM": lambda a: sum(a) % 10,
        }
        return fn[op](args), i + 1

    value, end = parse(0)
    assert end == len(tokens), "one expression, fully consumed"
    return value


@pytest.mark.parametrize("split", ["train", "test"])
def test_oracle_agrees_with_targets(split):
    task = ListOpsTask(min_len=10, max_len=80, max_depth=5, max_args=4)
    batch = task.batch(split, 0, 32)
    N = task.seq_len
    for b in range(32):
        row = batch.tokens[b].tolist()
        expr = [t for t in row[:-1] if t != 0]
        assert row[-1] == ANSWER and row[: N - 1 - len(expr)] == [0] * (N - 1 - len(expr)), (
            "right-aligned"
        )
        assert 10 <= len(expr) <= 80 and expr[0] == OPEN
        assert batch.loss_mask[b].nonzero().flatten().tolist() == [N - 1]
        assert batch.targets[b, -1] - 1 == oracle(expr) == evaluate(expr)
        assert batch.source[b, -1].tolist() == [N - 1 - len(expr), N - 1]


def test_answers_cover_all_digits():
    batch = ListOpsTask().batch("train", 0, 200)
    assert set((batch.targets[:, -1] - 1).tolist()) == set(range(10))


def test_ops_match_lra():
    assert apply_op("MED", [1, 2]) == 1 and apply_op("MED", [3, 1, 2]) == 2  # int(np.median) floors
    assert (
        apply_op("SM", [9, 9, 3]) == 1
        and apply_op("MIN", [4, 0]) == 0
        and apply_op("MAX", [4, 0]) == 4
    )
    with pytest.raises(ValueError, match="op"):
        apply_op("FIRST", [1])


def test_impossible_length_range_is_explained():
    task = ListOpsTask(
        max_depth=2, max_args=2, min_len=6, max_len=6
    )  # [ OP a b ] has 5 tokens, always
    with pytest.raises(ValueError, match="min_len=6"):
        task.sample(np.random.default_rng(0))


@pytest.mark.parametrize(
    "field, params",
    [
        ("max_depth", dict(max_depth=1)),
        ("max_args", dict(max_args=1)),
        ("max_len", dict(max_len=4)),
        ("min_len", dict(min_len=300, max_len=256)),
    ],
)
def test_validate_names_the_field(field, params):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("listops", **params)
