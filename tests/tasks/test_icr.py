"""In-context recall (MAD): every later repeat of a key asks for the value it was bound to, and an
oracle reading the row alone answers every query."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selmem.tasks import InContextRecallTask, build_task


@settings(max_examples=25, deadline=None)
@given(seq_len=st.integers(2, 40).map(lambda n: 2 * n), keys=st.integers(1, 12), values=st.integers(1, 9),
       index=st.integers(0, 1000))
def test_an_oracle_reading_the_row_answers_every_query_and_nothing_else_is_scored(seq_len, keys, values, index):
    task = InContextRecallTask(seq_len=seq_len, num_keys=keys, num_values=values)
    batch = task.batch("train", index, 4)
    for b in range(4):
        row = batch.tokens[b].tolist()
        assert all(1 <= k <= keys for k in row[0::2]) and all(keys < v <= keys + values for v in row[1::2])
        first: dict[int, int] = {}
        want_mask, want_relevant = [False] * seq_len, [False] * seq_len
        for p in range(0, seq_len, 2):
            k, v = row[p], row[p + 1]
            if k in first:  # a repeat: asked, and its value is the one bound at the first occurrence
                q = first[k]
                assert row[q + 1] == v == int(batch.targets[b, p])
                assert batch.source[b, p].tolist() == [q, q + 2]
                want_mask[p] = want_relevant[q] = want_relevant[q + 1] = True
            else:
                first[k] = p
        assert batch.loss_mask[b].tolist() == want_mask
        assert batch.relevant[b].tolist() == want_relevant


def test_the_answer_density_lies_between_sparse_recall_and_language_modelling():
    # (N/2 - E[distinct keys]) / N, E[distinct] = K (1 - (1 - 1/K)^(N/2))
    for keys in (16, 32, 64):
        density = float(InContextRecallTask(num_keys=keys).batch("test", 0, 512).loss_mask.float().mean())
        expected = (64 - keys * (1 - (1 - 1 / keys) ** 64)) / 128
        assert density == pytest.approx(expected, abs=0.01) and 0.1 < density < 0.5


def test_one_mapping_per_row_and_rows_differ():
    batch = InContextRecallTask(seq_len=256, num_keys=8, num_values=64).batch("test", 3, 8)
    maps = []
    for b in range(8):
        pairs = batch.tokens[b].view(-1, 2).tolist()
        bound = {k: v for k, v in pairs}
        assert all(bound[k] == v for k, v in pairs)  # a key keeps its value through the row
        maps.append(tuple(sorted(bound.items())))
    assert len(set(maps)) == 8


def test_batches_are_a_pure_function_of_split_and_index():
    task = InContextRecallTask()
    a, b = task.batch("train", 5, 3), task.batch("train", 5, 3)
    assert np.array_equal(a.tokens, b.tokens) and not np.array_equal(a.tokens, task.batch("test", 5, 3).tokens)


@pytest.mark.parametrize("params, field", [(dict(seq_len=7), "seq_len must be even"), (dict(seq_len=2), "seq_len"),
                                           (dict(num_keys=0), "num_keys"), (dict(num_values=0), "num_values")])
def test_validate_names_the_field(params, field):
    with pytest.raises(ValueError, match=rf"^{field}"):
        build_task("icr", **params)
