"""selmem length: streamed evaluation equals evaluate() at the trained length, every stretched
task has the asked number of segments, and the table has a cell per model and length."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from selmem.analysis.compare import CompareConfig, compare
from selmem.analysis.length import STRETCH, LengthConfig, length, stream_accuracy
from selmem.experiment import ExperimentConfig
from selmem.model import SelectiveMemoryTransformer
from selmem.tasks import build_task
from selmem.train.loop import evaluate

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name, params", [
    ("mqar", dict(num_segments=4, segment_len=16, num_pairs=2)),
    ("passkey", dict(length=64)),
    ("selective-copy", dict(seq_len=64)),
    ("induction", dict(seq_len=64)),
])
@pytest.mark.parametrize("n", [4, 9, 32])
def test_stretched_task_has_n_segments(name, params, n):
    task = STRETCH[name](build_task(name, **params), n, 16)
    task.validate()
    assert task.seq_len == n * 16
    assert task.batch("test", 0, 2).tokens.shape == (2, n * 16)


def test_streamed_accuracy_equals_evaluate_at_the_trained_length():
    exp = ExperimentConfig.from_yaml(SMOKE).resolved()
    torch.manual_seed(0)
    model = SelectiveMemoryTransformer(exp.model).eval()
    task, seg = exp.task, exp.segment_len()
    want = evaluate(model, task.test_set(3, 8), seg, torch.device("cpu"))["accuracy"]
    assert stream_accuracy(model, task, seg, 3, 8) == pytest.approx(want)


def test_length_writes_a_cell_per_model_and_length(tmp_path):
    exp = ExperimentConfig.from_yaml(SMOKE)
    exp = replace(exp, train=replace(exp.train, out_dir=str(tmp_path), steps=2, eval_every=2))
    threads = torch.get_num_threads()
    try:
        folder, _ = compare(exp, CompareConfig(models=["selmem", "txl", "local"], workers=1, threads=1, name="c"))
    finally:
        torch.set_num_threads(threads)
    out_dir, table = length(folder, LengthConfig(segments=[2, 5], models=["selmem", "txl"], batches=1))
    saved = json.loads((out_dir / "results.json").read_text())
    assert sorted((p["model"], p["segments"]) for p in saved["points"]) == [
        ("selmem", 2), ("selmem", 5), ("txl", 2), ("txl", 5)]  # local was not asked for
    assert all(0 <= p["accuracy"] <= 1 and p["trained_segments"] == 2 for p in saved["points"])
    assert table.splitlines()[0] == "| model | 2 seg | 5 seg |"
    assert (out_dir / "length.png").read_bytes()[:8] == PNG
    with pytest.raises(FileExistsError):
        length(folder, LengthConfig(segments=[2], batches=1))
    out2, table2 = length(folder, LengthConfig(segments=[2], models=["selmem"], batches=1,
                                               model_set=["age_weight=0"], name=str(tmp_path / "l2")))
    assert "| selmem (age_weight=0) |" in table2
    _, table3 = length([f"{folder}:txl", str(folder)], LengthConfig(segments=[2], models=["selmem"], batches=1,
                                                                      name=str(tmp_path / "l3")))
    assert [line.split("|")[1].strip() for line in table3.splitlines()[2:4]] == ["txl", "selmem"]
    out4, _ = length(folder, LengthConfig(segments=[3], models=["selmem"], batches=2, batch_size=3,
                                          name=str(tmp_path / "l4")))
    assert [p["rows"] for p in json.loads((out4 / "results.json").read_text())["points"]] == [6]
    for bad in (dict(batch_size=-1), dict(batches=0), dict(segments=[0])):
        with pytest.raises(ValueError, match="--length."):
            length(folder, replace(LengthConfig(segments=[2], batches=1, name=str(tmp_path / "l5")), **bad))


def test_model_overrides_reach_the_model_and_bad_ones_are_named(tmp_path):
    from selmem.runs import load_run

    exp = ExperimentConfig.from_yaml(SMOKE)
    exp = replace(exp, train=replace(exp.train, out_dir=str(tmp_path), steps=1, eval_every=1, name="r"))
    from selmem.train.loop import train

    threads = torch.get_num_threads()
    try:
        train(exp)
    finally:
        torch.set_num_threads(threads)
    run = tmp_path / "r"
    got, model, _ = load_run(run, model_set=["age_weight=0.5", "check_finite=false"])
    assert got.model.age_weight == 0.5 and got.model.check_finite is False
    assert any(getattr(m, "age_weight", None) == 0.5 for m in model.modules())
    with pytest.raises(ValueError, match="--model-set expects key=value with a field of the model"):
        load_run(run, model_set=["agew=0"])
    with pytest.raises(ValueError, match="check_finite takes true or false"):
        load_run(run, model_set=["check_finite=maybe"])
    with pytest.raises(ValueError, match="age_weight takes a float"):
        load_run(run, model_set=["age_weight=high"])


@pytest.mark.parametrize("label, arch, models, chosen", [
    ("selmem", "selmem", ["selmem"], True),
    ("selmem-m16", "selmem", ["selmem"], True),  # every size of a sweep
    ("forgetting-off", "selmem", ["selmem"], False),  # an ablation variant is not "selmem"
    ("forgetting-off", "selmem", ["selmem", "forgetting-off"], True),
    ("txl", "txl", ["selmem"], False),
])
def test_models_name_runs_of_a_comparison_or_an_ablation(label, arch, models, chosen):
    from selmem.analysis.length import wanted

    assert wanted(label, arch, models) is chosen


def test_a_missing_or_damaged_best_falls_back_to_the_newest_good_checkpoint_and_says_which(tmp_path, capsys):
    """length skipped a run without ckpt/best although its ckpt/last was good, and recorded no
    checkpoint where it fell back from a damaged one (issue 28)."""
    import shutil

    from selmem.train.loop import train

    folder = tmp_path / "c"
    exp = ExperimentConfig.from_yaml(SMOKE)
    threads = torch.get_num_threads()
    try:
        for seed in (0, 1):
            train(replace(exp, train=replace(exp.train, out_dir=str(folder), steps=2, eval_every=2, seed=seed,
                                             name=f"selmem-s{seed}")))
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(folder / "selmem-s0" / "ckpt" / "best")
    weights = folder / "selmem-s1" / "ckpt" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (folder / "selmem-s2").mkdir()  # a run that died before its first checkpoint
    shutil.copy(folder / "selmem-s1" / "config.yaml", folder / "selmem-s2")
    capsys.readouterr()

    out_dir, _ = length(folder, LengthConfig(segments=[2], models=["selmem"], batches=1, name=str(tmp_path / "l")))
    saved = json.loads((out_dir / "results.json").read_text())
    last = [str(folder / f"selmem-s{seed}" / "ckpt" / "last") for seed in (0, 1)]
    assert sorted(p["checkpoint"] for p in saved["points"]) == last
    err = capsys.readouterr().err
    for seed, used in enumerate(last):
        best = folder / f"selmem-s{seed}" / "ckpt" / "best"
        note = [line for line in err.splitlines() if str(best) in line]
        assert len(note) == 1 and f"using {used} (step 2) instead" in note[0], err
    assert f"{folder / 'selmem-s2'}: no checkpoint, skipped" in err
    assert f"Not ckpt/best (missing or damaged there), the newest good checkpoint: {', '.join(last)}." in (
        out_dir / "results.md").read_text()
