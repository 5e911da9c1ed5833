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
            assert any(float(batch.values[b, -1]) == pytest.approx(v, rel=1e-6) for v in value_of[smi])
            assert not batch.values[b, :-1].any()
            assert batch.source[b, -1].tolist() == [N - 1 - len(smi), N - 1]


def test_split_and_bins():
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
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        build_task("molecules", **params)


def test_predicted_property_and_its_scores():
    """A sure prediction of bin b reads as bin b's train median, which lies inside the bin; perfect
    predictions score MAE 0 and R^2 1, and predicting the mean scores R^2 0."""
    import torch

    from selmem.train.loop import regression_metrics

    task = MoleculesTask(target="tpsa", num_bins=4, max_len=64)
    medians, edges = task.bin_values(), task.bin_edges()
    assert np.all(np.diff(medians) > 0)
    assert np.all(medians[1:] >= edges) and np.all(medians[:-1] <= edges)
    logits = torch.full((4, task.vocab_size), -30.0)
    logits[torch.arange(4), LABEL0 + torch.arange(4)] = 30.0
    logits[:, :LABEL0] = 50.0  # the bytes' logits are ignored
    assert torch.allclose(task.predict_values(logits), torch.as_tensor(medians, dtype=torch.float32))
    true = torch.tensor([1.0, 2.0, 4.0, 9.0], dtype=torch.float64)
    assert regression_metrics(true, true) == {"mae": 0.0, "r2": 1.0}
    m = regression_metrics(torch.full_like(true, float(true.mean())), true)
    assert m["r2"] == pytest.approx(0.0) and m["mae"] == pytest.approx(float((true - true.mean()).abs().mean()))


def test_evaluate_reports_mae_and_r2():
    import torch

    from selmem.baselines import build_model
    from selmem.config import SelmemConfig
    from selmem.train.loop import evaluate

    task = MoleculesTask(target="tpsa", num_bins=4, max_len=32)
    torch.manual_seed(0)
    model = build_model("local", SelmemConfig(vocab_size=task.vocab_size, d_model=16, n_layers=1, n_heads=2, d_mem=8,
                                              max_segment_len=33))
    res = evaluate(model, task.test_set(2, 8), 33, torch.device("cpu"), task)
    assert res["mae"] > 0 and res["r2"] < 1 and np.isfinite(res["r2"])
    assert "mae" not in evaluate(model, task.test_set(1, 8), 33, torch.device("cpu"))  # no task: no regression


def test_test_set_takes_every_test_molecule_once():
    task = MoleculesTask(target="tpsa", num_bins=4, max_len=64)
    smiles, labels = task.split_data("test")
    batches = task.test_set(100, 32)
    assert [len(b) for b in batches] == [32] * (len(smiles) // 32) + [len(smiles) % 32]
    assert [int(b.targets[i, -1]) - LABEL0 for b in batches for i in range(len(b))] == labels.tolist()
    assert len(task.test_set(2, 32)) == 2
    first = task.batch("test", 1, 32)
    assert (task.test_set(2, 32)[1].tokens == first.tokens).all()  # the same rows as batch()
