"""selmem length: streamed evaluation equals evaluate() at the trained length, every stretched
task has the asked number of segments, and the table has a cell per model and length."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from selmem.analysis.compare import CompareConfig, compare
from selmem.analysis.length import STRETCH, LengthConfig, length, stream_accuracy, stream_eval
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
    ("icr", dict(seq_len=64)),
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


def code_lm_model(seq_len: int):
    from selmem.config import SelmemConfig

    task = build_task("code-lm", seq_len=seq_len, max_bytes=2_000_000, packed=False)  # short files too
    torch.manual_seed(0)
    model = SelectiveMemoryTransformer(SelmemConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=2, slots=4,
                                                    d_mem=16, max_segment_len=32, credit="none")).eval()
    return task, model


def test_streamed_language_modelling_equals_evaluate_and_splits_the_full_rows_at_their_middle():
    task, model = code_lm_model(4096)  # the first test file ends inside row 6
    seg, batch = 32, task.batch("test", 0, 8)
    got = stream_eval(model, task, seg, 1, 8)
    want = evaluate(model, [batch], seg, torch.device("cpu"))
    for ours, theirs in [("bits_per_token", "bits_per_token"), ("bits_recall", "bits_per_token_recall"),
                         ("bits_rest", "bits_per_token_rest")]:
        assert got[ours] == pytest.approx(want[theirs], rel=1e-5), ours
    with torch.no_grad():
        logits = model.forward_sequence(batch.tokens, seg).logits
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")
    full = batch.loss_mask.all(1)
    assert 0 < int(full.sum()) == got["rows_full"] < 8  # some rows end inside their file, some do not
    half = batch.tokens.shape[1] // 2
    for name, part in (("bits_first_half", ce[full, :half]), ("bits_second_half", ce[full, half:])):
        assert got[name] == pytest.approx(float(part.mean()) / math.log(2), rel=1e-5), name


def test_a_language_modelling_test_split_is_taken_once_not_cycled():
    task, model = code_lm_model(1024)
    chunks = task.num_test_chunks()
    got = stream_eval(model, task, 32, 1000, 4)
    assert got["rows_full"] <= chunks < 4000  # had it cycled, 4,000 rows would count


@pytest.mark.parametrize("n", [8, 64])
def test_stretched_code_lm_rows_tile_held_out_files_at_least_as_long(n):
    task = STRETCH["code-lm"](build_task("code-lm", seq_len=256, max_bytes=2_000_000, min_file_bytes=1024), n, 32)
    batch = task.batch("test", 0, 2)
    assert batch.tokens.shape == (2, n * 32) and task.min_file_bytes == max(1024, n * 32)
    assert bool(batch.loss_mask[0].all())  # the first row is the start of a file at least that long


def lm_point(model, seed, n, bits, first, second):
    return {"task": "code-lm", "model": model, "seed": seed, "segments": n, "accuracy": 0.4, "bits_per_token": bits,
            "bits_first_half": first, "bits_second_half": second, "rows_full": 7, "trained_segments": 4,
            "chance": None}


def test_language_modelling_lengths_are_tabled_in_bits_and_judged_on_the_halves():
    from selmem.analysis.length import markdown_table
    from selmem.analysis.report import lm_length_verdict

    points = [lm_point("selmem", s, n, 2.0 + n / 100, 2.1, 2.0 - s / 10) for s in (0, 1) for n in (4, 64)]
    points += [lm_point("txl", 0, n, 2.5, 2.4, 2.6) for n in (4, 64)]
    table = markdown_table(points)
    assert "| selmem | 2.040 ± 0.000 | 2.640 ± 0.000 |" in table
    assert "**second half of the row**" in table and "| txl | 2.600 ± 0.000 | 2.600 ± 0.000 |" in table
    assert "lower is better" in table and "%" not in table.split("**first half")[0]
    held = lm_length_verdict(Path("length-x"), {"task": "code-lm", "points": points})
    assert held and ": held. At 64 segments selmem has 2.100 bits per token on the first half" in held[0]
    worse = [dict(p, bits_second_half=2.2) if p["model"] == "selmem" else p for p in points]
    assert "did not hold" in lm_length_verdict(Path("length-x"), {"task": "code-lm", "points": worse})[0]
    # the second half is easier for every model: selmem gains less there than local does
    local = [lm_point("local", s, n, 2.2, 2.3, 1.9) for s in (0, 1) for n in (4, 64)]
    verdict = lm_length_verdict(Path("length-x"), {"task": "code-lm", "points": points + local})[0]
    assert "did not hold" in verdict and "lead over it goes from +0.200 to -0.050 bits" in verdict


@pytest.mark.parametrize("n", [8, 40])
def test_stretched_babi_spreads_the_same_story_over_n_segments(n):
    task = build_task("babi", haystack_tokens=200, num_facts=4)
    long = STRETCH["babi"](task, n, 64)
    assert long.seq_len == n * 64 and long.num_facts == task.num_facts
    batch = long.batch("test", 0, 2)
    assert batch.tokens.shape == (2, n * 64) and int(batch.loss_mask[0].sum()) >= 1


def test_streamed_exact_match_equals_evaluate():
    exp = ExperimentConfig.from_yaml(SMOKE).resolved()
    torch.manual_seed(0)
    model = SelectiveMemoryTransformer(exp.model).eval()
    task, seg = exp.task, exp.segment_len()
    want = evaluate(model, task.test_set(3, 8), seg, torch.device("cpu"))
    got = stream_eval(model, task, seg, 3, 8)
    assert got["exact_match"] == pytest.approx(want["exact_match"]) and got["accuracy"] == pytest.approx(want["accuracy"])


def test_babi_lengths_are_tabled_in_exact_match():
    from selmem.analysis.length import markdown_table

    points = [{"task": "babi", "metric": "exact_match", "model": "selmem", "seed": 0, "segments": n,
               "accuracy": 0.9, "exact_match": 0.5, "trained_segments": 4, "chance": 1 / 6} for n in (4, 64)]
    assert "| selmem | 50.0% ± 0.0% | 50.0% ± 0.0% |" in markdown_table(points)
    old = [{k: v for k, v in p.items() if k != "metric"} for p in points]  # results.json before "metric"
    assert "| selmem | 90.0% ± 0.0% | 90.0% ± 0.0% |" in markdown_table(old)
