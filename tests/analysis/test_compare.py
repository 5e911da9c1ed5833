"""selmem compare: every model on the same batches and budget, a table, a CSV and two plots;
state matching puts txl/rmt/armt next to selmem's carried floats."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch

from selmem.analysis.compare import CompareConfig, compare, matched_config, plan
from selmem.baselines import ARCHS, MODELS, PEERS, STATE_KNOB, state_size
from selmem.config import SelmemConfig
from selmem.experiment import ExperimentConfig

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
PNG = b"\x89PNG\r\n\x1a\n"
# step of each knob in matched_config's search (armt's DPFP width is even)
KNOB_STEP = {"slots": 1, "d_mem": 2}


def smoke(tmp_path: Path, **train) -> ExperimentConfig:
    exp = ExperimentConfig.from_yaml(SMOKE)
    return replace(exp, train=replace(exp.train, out_dir=str(tmp_path), **train))


@pytest.fixture
def keep_threads():
    """compare sets torch's thread count for its runs; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_compare_writes_table_csv_json_and_plots(tmp_path, keep_threads):
    out_dir, table = compare(
        smoke(tmp_path, steps=2, eval_every=2),
        CompareConfig(models=["selmem", "local"], seeds=[0], workers=1, name="c"),
    )
    assert out_dir == tmp_path / "c"

    md = (out_dir / "results.md").read_text()
    assert table in md
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| model | test accuracy |")
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["selmem", "local"]

    with (out_dir / "results.csv").open() as f:
        table_rows = list(csv.DictReader(f))
    assert [r["model"] for r in table_rows] == ["selmem", "local"]
    for r in table_rows:
        assert (
            0.0 <= float(r["accuracy"]) <= 1.0 and float(r["steps"]) == 2 and int(r["seeds"]) == 1
        )
    by_model = {r["model"]: r for r in table_rows}
    assert int(by_model["selmem"]["state_floats"]) > int(by_model["local"]["state_floats"])

    saved = json.loads((out_dir / "results.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["selmem", "local"]
    assert [(r["arch"], r["steps"]) for r in saved["runs"]] == [("selmem", 2), ("local", 2)]
    for png in ["curves.png", "state.png"]:
        assert (out_dir / png).read_bytes()[:8] == PNG, f"{png} is not a PNG"
    for name in ["selmem-s0", "local-s0"]:  # every model keeps its own run folder
        assert (out_dir / name / "results.json").is_file()
    assert ExperimentConfig.from_yaml(out_dir / "base_config.yaml").train.steps == 2


def test_language_modelling_tables_show_the_recall_slice_and_plot_bits_by_position(tmp_path, keep_threads):
    """On code-lm every row also carries the bits on distant recall bytes and on the rest, the
    table shows them beside the overall bits, and position.png plots the bits per segment."""
    from selmem.tasks import CodeLMTask

    exp = replace(smoke(tmp_path, steps=2, eval_every=2, segment_len=8),
                  task=CodeLMTask(seq_len=64, max_bytes=2_000_000))
    out_dir, table = compare(exp, CompareConfig(models=["selmem", "local"], seeds=[0], workers=1, name="lm"))
    assert table.splitlines()[0].startswith("| model | test bits/token | bits/token on distant recall | "
                                            "bits/token on the rest |")
    rows = json.loads((out_dir / "results.json").read_text())["rows"]
    for r in rows:
        assert 0 < r["bits_per_token_recall"] and 0 < r["bits_per_token_rest"] and "bits_per_token_recall_std" in r
    assert (out_dir / "position.png").read_bytes()[:8] == PNG


def test_unknown_model_is_named_before_any_work(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown model\(s\) \['transformer'\]; known: \[.*'selmem'"
    ):
        compare(
            smoke(tmp_path), CompareConfig(models=["selmem", "transformer"], workers=1, name="c")
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_comparison_is_never_overwritten(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.md").write_text("an earlier comparison")
    with pytest.raises(FileExistsError, match="pick another --compare.name"):
        compare(smoke(tmp_path), CompareConfig(models=["local"], workers=1, name="c"))


def test_plan_shares_task_and_budget(tmp_path):
    base = smoke(tmp_path)
    exps = plan(
        base, CompareConfig(models=["selmem", "txl", "local"], seeds=[0, 3]), tmp_path / "c"
    )
    assert [(e.arch, e.train.seed, e.train.name) for e in exps] == [
        (m, s, f"{m}-s{s}") for m in ["selmem", "txl", "local"] for s in [0, 3]
    ]
    for e in exps:
        assert e.task == base.task and e.train.out_dir == str(tmp_path / "c")
        assert replace(e.train, seed=0, name="", out_dir="", progress=True) == replace(
            base.train, name="", out_dir="", progress=True
        )
    assert exps[2].model.slots != base.model.slots  # txl resized to selmem's state
    unmatched = plan(base, CompareConfig(models=["txl"], match_state=False), tmp_path / "c")
    assert unmatched[0].model == base.resolved().model


def test_every_model_has_a_state_knob_entry():
    """Each model's name and state knob are declared once, by its class; the registries read them."""
    assert all(cls.arch == name for name, cls in ARCHS.items()) and list(ARCHS) == [*MODELS, *PEERS]
    assert STATE_KNOB == {name: cls.state_knob for name, cls in ARCHS.items()}
    assert set(STATE_KNOB) == set(MODELS) | set(PEERS)
    knobs = {f.name for f in fields(SelmemConfig)}
    assert all(k is None or k in knobs for k in STATE_KNOB.values())


@pytest.mark.parametrize("name", [m for m, k in STATE_KNOB.items() if k])
def test_matched_state_is_within_a_knob_step(name):
    cfg = SelmemConfig(
        vocab_size=11, d_model=32, n_layers=2, n_heads=2, slots=16, d_mem=16, max_segment_len=8
    )
    target = state_size("selmem", cfg)
    knob, step = STATE_KNOB[name], KNOB_STEP[STATE_KNOB[name]]
    matched = matched_config(name, cfg, target)
    value = getattr(matched, knob)
    assert replace(matched, **{knob: getattr(cfg, knob)}) == cfg, "only the knob changes"

    def gap(v: int) -> int:
        return abs(state_size(name, replace(cfg, **{knob: v})) - target)

    one_step = abs(
        state_size(name, replace(cfg, **{knob: value + step})) - state_size(name, matched)
    )
    assert gap(value) <= one_step / 2, (
        f"{name}: {state_size(name, matched)} floats vs selmem's {target}"
    )
    assert gap(value) <= gap(value + step) and gap(value) <= gap(value - step)


@pytest.mark.parametrize("name", [m for m, k in STATE_KNOB.items() if not k])
def test_models_without_a_knob_are_unchanged(name):
    cfg = SelmemConfig(d_model=32, n_layers=1, n_heads=2, slots=4, d_mem=16)
    assert matched_config(name, cfg, 10_000) == cfg


def test_slot_sweep_sizes_the_memory_models_and_trains_the_rest_once(tmp_path):
    base = smoke(tmp_path)
    exps = plan(base, CompareConfig(models=["selmem", "txl", "full"], seeds=[0], slots=[2, 8]), tmp_path / "c")
    assert [e.train.name for e in exps] == ["selmem-m2-s0", "selmem-m8-s0", "txl-m2-s0", "txl-m8-s0", "full-s0"]
    sizes = {e.train.name: state_size(e.arch, e.model) for e in exps if e.arch != "full"}
    assert sizes["selmem-m2-s0"] < sizes["selmem-m8-s0"]
    for m in [2, 8]:  # txl follows selmem's size at each point of the sweep
        gap = abs(sizes[f"txl-m{m}-s0"] - sizes[f"selmem-m{m}-s0"])
        assert gap < sizes["selmem-m8-s0"] - sizes["selmem-m2-s0"]
    assert exps[-1].model == base.resolved().model


def test_bad_slot_sweep_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"--compare.slots must be >= 1, got \[0\]"):
        plan(smoke(tmp_path), CompareConfig(models=["selmem"], slots=[4, 0]), tmp_path / "c")


def test_sweep_table_has_a_row_per_size(tmp_path, keep_threads):
    out_dir, _ = compare(
        smoke(tmp_path, steps=1, eval_every=1),
        CompareConfig(models=["selmem"], seeds=[0], workers=1, name="c", slots=[2, 4]),
    )
    with (out_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["selmem", "selmem"]
    assert int(rows[0]["state_floats"]) < int(rows[1]["state_floats"])
    assert (out_dir / "state.png").read_bytes()[:8] == PNG


def test_extend_adds_seeds_and_reads_finished_runs_back(tmp_path, keep_threads, monkeypatch):
    """A second call with --compare.extend and more seeds trains only the new seed; the table
    covers both. A different base config, or no folder, is refused before any training."""
    import selmem.train.loop as loop

    base = smoke(tmp_path, steps=4, eval_every=4)
    compare(base, CompareConfig(models=["local"], seeds=[0], workers=1, name="c"))
    first = (tmp_path / "c" / "local-s0" / "results.json").read_text()
    trained = []
    real_train = loop.train
    monkeypatch.setattr(loop, "train", lambda exp: trained.append(exp.train.name) or real_train(exp))
    out_dir, table = compare(base, CompareConfig(models=["local"], seeds=[0, 1], workers=1, name="c", extend=True))
    assert trained == ["local-s1"]
    assert (out_dir / "local-s0" / "results.json").read_text() == first
    assert json.loads((out_dir / "results.json").read_text())["rows"][0]["seeds"] == 2
    with pytest.raises(ValueError, match="differs from this command's base config"):
        other = smoke(tmp_path, steps=5, eval_every=5)
        compare(other, CompareConfig(models=["local"], workers=1, name="c", extend=True))
    with pytest.raises(FileNotFoundError, match="needs an existing --compare.name folder"):
        compare(base, CompareConfig(models=["local"], workers=1, name="nothing-here", extend=True))


def test_extend_with_another_model_keeps_the_folders_earlier_runs_in_its_report(tmp_path, keep_threads, monkeypatch):
    """Extending with a model the folder lacks adds its rows to the earlier ones (it wrote a table
    of the new model alone, which hid the folder's other runs), and the page names both commands."""
    base = smoke(tmp_path, steps=2, eval_every=2)
    monkeypatch.setattr(sys, "argv", ["selmem", "compare", "--compare.models", "local"])
    compare(base, CompareConfig(models=["local"], seeds=[0], workers=1, name="c"))
    monkeypatch.setattr(sys, "argv", ["selmem", "compare", "--compare.models", "lstm", "--compare.extend"])
    out_dir, table = compare(base, CompareConfig(models=["lstm"], seeds=[0], workers=1, name="c", extend=True))
    assert [r["model"] for r in json.loads((out_dir / "results.json").read_text())["rows"]] == ["local", "lstm"]
    assert json.loads((out_dir / "compare.json").read_text())["models"] == ["local", "lstm"]
    assert "| local |" in table and "| lstm |" in table
    page = (out_dir / "results.md").read_text()
    assert "Commands (the folder was extended)" in page and "--compare.models local`" in page, page
    with pytest.raises(ValueError, match="keeps the folder's --compare.slots sweep"):
        compare(base, CompareConfig(models=["selmem"], seeds=[0], workers=1, name="c", extend=True, slots=[2]))


def test_a_folder_mixing_old_and_new_results_still_writes_its_report(tmp_path):
    """An extended folder holds runs written before exact_match existed next to runs that have it:
    the summary keeps the metrics every run of a model has, and the CSV takes every row's columns."""
    import csv
    import json

    from selmem.analysis.compare import summarise, write_report
    from selmem.experiment import ExperimentConfig

    def run(arch, seed, test):
        return {"arch": arch, "seed": seed, "run_dir": str(tmp_path / f"{arch}-s{seed}"), "task": "mqar",
                "state_floats": 8, "params": 10, "steps": 4, "train_tokens_per_s": 1.0,
                "peak_mem_mb": 1.0, "wall_s": 1.0, "chance": None,
                "test": {"accuracy": 0.5, "bits_per_token": 2.0, **test}}

    results = [run("local", 0, {}), run("selmem", 0, {"exact_match": 0.3}), run("selmem", 1, {})]
    rows = summarise(results)
    assert all("exact_match" not in r for r in rows)
    results[2]["test"]["exact_match"] = 0.5
    rows = summarise(results)
    assert rows[1]["exact_match"] == 0.4 and "exact_match" not in rows[0]
    write_report(tmp_path, results, ExperimentConfig())
    with (tmp_path / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert table[0]["exact_match"] == "" and float(table[1]["exact_match"]) == 0.4
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
