"""selmem ablate: each variant changes exactly its DESIGN fields, the reference is always trained,
and the table's differences are the variants' metrics minus the reference's."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from selmem.analysis.ablate import ABLATIONS, FULL, AblateConfig, ablate, differences, plan
from selmem.experiment import ExperimentConfig

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def smoke(tmp_path: Path, **train) -> ExperimentConfig:
    exp = ExperimentConfig.from_yaml(SMOKE)
    return replace(exp, train=replace(exp.train, out_dir=str(tmp_path), **train))


def test_every_variant_changes_only_its_fields(tmp_path):
    base = smoke(tmp_path).resolved()
    planned = plan(base, AblateConfig(seeds=[0]), tmp_path)
    assert [v for v, _ in planned] == list(ABLATIONS)
    ref = base.model.to_dict()  # flat: the objective's fields beside the model's, as ABLATIONS names them
    for variant, exp in planned:
        changed = {k: v for k, v in exp.model.to_dict().items() if v != ref[k]}
        wanted = {k: base.model.d_model if v == "d_model" else v for k, v in ABLATIONS[variant].items()}
        assert changed == {k: v for k, v in wanted.items() if v != ref[k]}, variant
        assert variant == FULL or changed, f"{variant} changes nothing on this config"
        assert exp.arch == "selmem" and exp.task == base.task and exp.train.steps == base.train.steps
    none = dict(planned)["compress: none"].model
    assert none.d_mem == none.d_model  # raw features need slots as wide as the model


def test_reference_is_always_trained_and_bad_variants_are_named(tmp_path):
    planned = plan(smoke(tmp_path), AblateConfig(variants=["read: off"], seeds=[1, 2]), tmp_path)
    assert [(v, e.train.name) for v, e in planned] == [
        (FULL, "selmem-s1"), (FULL, "selmem-s2"), ("read: off", "read-off-s1"), ("read: off", "read-off-s2")]
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['select: none'\]"):
        ablate(smoke(tmp_path), AblateConfig(variants=["select: none"], name="a"))
    assert list(tmp_path.iterdir()) == []


def test_differences_are_signed_so_negative_means_the_part_helps():
    rows = [{"model": FULL, "seeds": 2, "accuracy": 0.9, "accuracy_std": 0.0, "chance": 0.1},
            {"model": "read: off", "seeds": 2, "accuracy": 0.2, "accuracy_std": 0.1, "chance": 0.1}]
    d = {r["model"]: r for r in differences(rows)}
    assert d["read: off"]["delta"] == pytest.approx(-0.7) and d[FULL]["delta"] == 0
    assert d["read: off"]["delta_se"] == pytest.approx((0.1**2 / 2) ** 0.5)
    lm = [{"model": FULL, "seeds": 1, "bits_per_token": 2.0, "bits_std": 0.0, "chance": None},
          {"model": "read: off", "seeds": 1, "bits_per_token": 2.5, "bits_std": 0.0, "chance": None}]
    assert differences(lm)[1]["delta"] == pytest.approx(-0.5)  # more bits = worse = negative


def test_ablate_writes_table_json_and_plot(tmp_path):
    threads = torch.get_num_threads()
    try:
        out_dir, table = ablate(smoke(tmp_path, steps=2, eval_every=2),
                                AblateConfig(variants=["select: all"], seeds=[0], workers=1, threads=1, name="a"))
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["kind"] == "ablate" and [r["model"] for r in saved["rows"]] == [FULL, "select: all"]
    ref, var = saved["rows"]
    assert var["delta"] == pytest.approx(var["accuracy"] - ref["accuracy"])
    assert [r["label"] for r in saved["runs"]] == [FULL, "select: all"]
    assert table in (out_dir / "results.md").read_text()
    assert "| select: all | select=all |" in table
    assert (out_dir / "ablation.png").read_bytes()[:8] == PNG
