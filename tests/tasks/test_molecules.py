"""Molecules: the label at ANSWER is the train-quantile bin of the SMILES' measured property."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from selmem.tasks import MoleculesTask, build_task
from selmem.tasks.molecules import ANSWER, LABEL0, _is_test, load_molecules


def test_missing_rdkit_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)  # makes `from rdkit import ...` fail
    with pytest.raises(ImportError, match=r"pip install 'selmem\[molecules\]'"):
        build_task("molecules")


@pytest.mark.parametrize("target", ["tpsa", "activity"])
def test_oracle_bins_the_measured_property(target):
    pytest.importorskip("rdkit")
    task = MoleculesTask(target=target, num_bins=3, max_len=60)
    smiles, values = load_molecules(target)
    value_of = {}
    for s, v in zip(smiles, values, strict=True):
        value_of.setdefault(s, set()).add(float(v))
    edges = task.bin_edges()
    for split in ("train", "test"):
        batch = task.batch(split, 1, 16)
        N = task.seq_len
        for b in range(16):
            row = batch.tokens[b].tolist()
            assert row[-1] == ANSWER and batch.loss_mask[b].nonzero().flatten().tolist() == [N - 1]
            smi = bytes(t for t in row[:-1] if t != 0).decode()
            assert len(smi) <= 60
            bins = {int(np.searchsorted(edges, v, side="right")) for v in value_of[smi]}
            assert int(batch.targets[b, -1]) - LABEL0 in bins
            assert batch.source[b, -1].tolist() == [N - 1 - len(smi), N - 1]


def test_split_and_bins():
    pytest.importorskip("rdkit")
    task = MoleculesTask(target="activity")
    train, test = task.split_data("train"), task.split_data("test")
    smiles, _ = load_molecules("activity")
    assert len(smiles) > 1000 and len(train[0]) + len(test[0]) == len(smiles)
    assert 0.1 < len(test[0]) / len(smiles) < 0.3
    assert sum(_is_test(i) for i in range(len(smiles))) == len(test[0])
    counts = np.bincount(train[1], minlength=4)
    assert counts.min() > 0.2 * len(train[1]), "quantile bins are balanced on train"
    assert task.batch("test", 0, 3).tokens[0, -40:].tolist()[-1] == ANSWER
    assert task.vocab_size == LABEL0 + 4 and task.chance == 0.25


@pytest.mark.parametrize(
    "field, params",
    [("target", dict(target="logp")), ("num_bins", dict(num_bins=1)), ("max_len", dict(max_len=0))],
)
def test_validate_names_the_field(field, params):
    pytest.importorskip("rdkit")
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("molecules", **params)
