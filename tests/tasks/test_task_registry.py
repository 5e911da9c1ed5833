"""Properties every task must have, run over the whole registry, plus build_task/describe_tasks."""

from __future__ import annotations

import dataclasses
import doctest
import importlib

import pytest
import torch

from selmem.tasks import TASKS, build_task, describe_tasks

# Tiny parameters per task, so the suite stays fast; a new task must add itself here.
SMALL = {
    "mqar": dict(num_pairs=4, segment_len=16, num_segments=3),
    "selective-copy": dict(seq_len=32, num_tokens=4, vocab=8),
    "passkey": dict(length=64, key_len=3),
    "induction": dict(seq_len=32, vocab=8),
    "icr": dict(seq_len=32, num_keys=4, num_values=6),
    "babi": dict(haystack_tokens=300, num_facts=4, question="mixed"),
    "listops": dict(min_len=8, max_len=64),
    "code-lm": dict(seq_len=64),
    "molecules": dict(target="activity", max_len=80),
}
LM_TASKS = {"code-lm"}  # no single source span per scored position


def small(name: str):
    return build_task(name, **SMALL[name])


def test_every_task_has_small_params():
    assert set(SMALL) == set(TASKS)


@pytest.mark.parametrize("name", list(TASKS))
def test_batch_contract(name):
    task = small(name)
    batch = task.batch("train", 3, 4)
    B, N = 4, task.seq_len
    assert batch.tokens.shape == batch.targets.shape == batch.loss_mask.shape == (B, N)
    assert batch.tokens.dtype == batch.targets.dtype == torch.long
    assert batch.loss_mask.dtype == torch.bool
    assert len(batch) == B
    assert 0 <= batch.tokens.min() and batch.tokens.max() < task.vocab_size
    assert 0 <= batch.targets.min() and batch.targets.max() < task.vocab_size
    assert batch.loss_mask.any(dim=1).all(), "every row scores something"
    assert (batch.targets[~batch.loss_mask] == 0).all(), "unscored targets are PAD"
    if name not in LM_TASKS:
        assert (batch.targets[batch.loss_mask] != 0).all(), "a scored target is never PAD"
    chance = task.chance
    assert chance is None or 0 < chance < 1


@pytest.mark.parametrize("name", list(TASKS))
def test_deterministic_and_splits_differ(name):
    task = small(name)
    a, b = task.batch("train", 5, 3), task.batch("train", 5, 3)
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert (x is None and y is None) or torch.equal(x, y), field.name
    rebuilt = build_task(name, **SMALL[name]).batch("train", 5, 3)  # a fresh object, same params
    assert torch.equal(rebuilt.tokens, a.tokens)
    assert not torch.equal(task.batch("test", 5, 3).tokens, a.tokens)
    assert not torch.equal(task.batch("train", 6, 3).tokens, a.tokens)
    assert not torch.equal(dataclasses.replace(task, seed=1).batch("train", 5, 3).tokens, a.tokens)
    test_set = task.test_set(2, 3)
    assert len(test_set) == 2 and torch.equal(test_set[1].tokens, task.batch("test", 1, 3).tokens)


@pytest.mark.parametrize("name", sorted(set(TASKS) - LM_TASKS))
def test_relevant_and_source_are_consistent(name):
    task = small(name)
    batch = task.batch("test", 0, 4)
    rel, src, mask = batch.relevant, batch.source, batch.loss_mask
    assert rel.shape == mask.shape and rel.dtype == torch.bool
    assert src.shape == (*mask.shape, 2) and src.dtype == torch.long
    assert (src[~mask] == -1).all(), "source only at scored positions"
    assert (batch.tokens[rel] != 0).all(), "PAD is never relevant"
    for b, t in mask.nonzero().tolist():
        start, end = src[b, t].tolist()
        assert 0 <= start < end <= t, "the answer's source was read before the scored position"
        assert rel[b, start:end].all(), "a source span is relevant"


@pytest.mark.parametrize("name", list(TASKS))
def test_unknown_param_is_named(name):
    with pytest.raises(ValueError, match=r"unknown parameter 'bogus'.*seed"):
        build_task(name, bogus=1)


@pytest.mark.parametrize("name", list(TASKS))
def test_negative_seed_is_rejected(name):
    with pytest.raises(ValueError, match="seed"):
        build_task(name, seed=-1)


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*mqar.*listops"):
        build_task("nope")


def test_bad_split_and_batch_args():
    task = build_task("mqar", **SMALL["mqar"])
    with pytest.raises(ValueError, match="split"):
        task.batch("valid", 0, 2)
    with pytest.raises(ValueError, match="batch_size"):
        task.batch("train", 0, 0)
    with pytest.raises(ValueError, match="index"):
        task.batch("train", -1, 2)


def test_describe_tasks_lists_every_task_and_field():
    text = describe_tasks()
    for name, cls in TASKS.items():
        assert name in text
        for field in dataclasses.fields(cls):
            assert f"  {field.name} = " in text
    assert "# N: key-value pairs per example" in text  # field docstrings are shown


MODULES = [
    "__init__",
    "common",
    "stdlib",
    "mqar",
    "selective_copy",
    "passkey",
    "induction",
    "listops",
    "babi",
]


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module):
    mod = importlib.import_module(
        "selmem.tasks" if module == "__init__" else f"selmem.tasks.{module}"
    )
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
