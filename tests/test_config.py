"""SelmemConfig: validation names the field, YAML is strict and round-trips."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import typing
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml

from selmem import SelectiveMemoryTransformer, SelmemConfig
from selmem.config import OBJECTIVE_FIELDS, ObjectiveConfig, flatten_objective, load_yaml
from selmem.experiment import ExperimentConfig
from tests.helpers import tiny_cfg

# every field a SelmemConfig takes, the objective's by their flat names (SelmemConfig(credit=...))
HINTS = {**typing.get_type_hints(SelmemConfig), **typing.get_type_hints(ObjectiveConfig)}
LITERAL_FIELDS = [name for name, hint in HINTS.items() if typing.get_origin(hint) is typing.Literal]


def test_defaults_validate():
    assert SelmemConfig().validate() == SelmemConfig()


def test_every_option_field_is_checked():
    assert set(LITERAL_FIELDS) == {
        "read",
        "select",
        "compress",
        "address",
        "cache_transform",
        "sparsity",
        "read_bias",
        "address_weights",
        "credit",
        "attention",
        "writes",
        "credit_grad",
        "gate_grad",
        "probe_target",
        "read_query",
        "write_new",
        "read_target",
        "read_recency",
    }


@pytest.mark.parametrize("name", LITERAL_FIELDS)
def test_bad_literal_names_field_and_choices(name):
    allowed = typing.get_args(HINTS[name])
    with pytest.raises(ValueError, match=rf"{name} must be one of .*{allowed[0]}.*got 'bogus'"):
        SelmemConfig(**{name: "bogus"}).validate()


@pytest.mark.parametrize(
    "overrides, match",
    [
        pytest.param(
            dict(d_model=32, d_mem=48),
            r"d_mem \(48\) must be <= d_model \(32\)",
            id="d_mem>d_model",
        ),
        pytest.param(
            dict(compress="none", d_model=32, d_mem=16),
            r"compress='none'.*d_mem \(16\).*d_model \(32\)",
            id="none-needs-equal-width",
        ),
        pytest.param(dict(d_model=30, n_heads=4), "divisible by n_heads", id="heads-divide"),
        pytest.param(dict(d_model=20, n_heads=4, d_mem=16), "even for rotary", id="odd-head-width"),
        pytest.param(dict(slots=0), "slots must be >= 1", id="zero-slots"),
        pytest.param(
            dict(d_mem=15, d_model=32), "d_mem must be even", id="odd-d_mem-cache-transform"
        ),
        pytest.param(dict(usage_decay=1.5), r"usage_decay must be in \[0, 1\]", id="usage_decay>1"),
        pytest.param(dict(write_rate=-0.1), r"write_rate must be in \[0, 1\]", id="write_rate<0"),
        pytest.param(
            dict(alloc_temperature=0.0), "alloc_temperature must be > 0", id="zero-temperature"
        ),
        pytest.param(
            dict(lambda_sparse=-1.0), "lambda_sparse must be >= 0", id="neg-lambda_sparse"
        ),
        pytest.param(dict(lambda_rec=-0.1), "lambda_rec must be >= 0", id="neg-lambda_rec"),
        pytest.param(dict(lambda_nce=-0.1), "lambda_nce must be >= 0", id="neg-lambda_nce"),
        pytest.param(dict(bptt_segments=-1), "bptt_segments must be >= 0", id="neg-bptt"),
    ],
)
def test_impossible_values_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        SelmemConfig(**overrides).validate()


def test_model_validates_its_config():
    with pytest.raises(ValueError, match="select must be one of"):
        SelectiveMemoryTransformer(SelmemConfig(select="sometimes"))


def test_yaml_round_trip(tmp_path):
    cfg = tiny_cfg(select="topk", address="fifo", slot_decay=True)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert SelmemConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_yaml_unknown_key_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"d_model": 32, "n_slots": 8}))
    with pytest.raises(ValueError, match=r"unknown SelmemConfig key\(s\) \['n_slots'\]"):
        SelmemConfig.from_yaml(tmp_path / "c.yaml")


def test_yaml_values_are_validated(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"lambda_nce": -1.0}))
    with pytest.raises(ValueError, match="lambda_nce must be >= 0"):
        SelmemConfig.from_yaml(tmp_path / "c.yaml")


def test_yaml_not_a_mapping_or_missing(tmp_path):
    (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        SelmemConfig.from_yaml(tmp_path / "c.yaml")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        SelmemConfig.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "~\n"], ids=["empty", "comment", "null"])
def test_empty_yaml_is_an_error_not_the_defaults(tmp_path, text):
    """A config file that names nothing is a mistake (a wrong file, a failed write): the defaults
    are what leaving out --config gives, never what a file silently gives."""
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"c\.yaml: empty config file"):
        SelmemConfig.from_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "overrides", [dict(), dict(slots=7, d_mem=8, n_layers=3)], ids=["tiny", "L3-M7-dmem8"]
)
def test_state_floats_matches_state(overrides):
    model = SelectiveMemoryTransformer(tiny_cfg(**overrides))
    assert model.state_size() == model.cfg.state_floats() == model.init_state(3).num_floats()


def test_the_segment_length_is_resolved_in_one_place():
    """None or 0 = max_segment_len, else the length asked for within [1, max_segment_len]; every
    model's forward_sequence, the packed path and the one-line layer resolve theirs so."""
    cfg = tiny_cfg(max_segment_len=8)
    assert cfg.resolve_segment_len() == cfg.resolve_segment_len(0) == 8 and cfg.resolve_segment_len(3) == 3
    for bad in (9, -1):
        with pytest.raises(ValueError, match=rf"segment_len must be in \[1, max_segment_len=8\], got {bad}"):
            cfg.resolve_segment_len(bad)


@pytest.mark.parametrize("text, key, lines", [
    ("model:\n  slots: 4\n  d_mem: 16\n  slots: 8\n", "slots", (2, 4)),
    ("train:\n  steps: 4\ntrain:\n  steps: 8\n", "train", (1, 3)),
    ("model: {slots: 4, slots: 8}\n", "slots", (1, 1)),
], ids=["nested", "top-level", "flow"])
def test_a_key_given_twice_is_named_with_its_lines(tmp_path, text, key, lines):
    """YAML keeps the last of two equal keys without a word: `slots: 4` then `slots: 8` ran with 8."""
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ValueError, match=rf"c\.yaml: key '{key}' is given twice in one mapping "
                                         rf"\(lines {lines[0]} and {lines[1]}\)"):
        ExperimentConfig.from_yaml(tmp_path / "c.yaml")


def test_a_merge_key_may_still_be_overridden(tmp_path):
    (tmp_path / "c.yaml").write_text("base: &b {slots: 4, d_mem: 16}\nmodel:\n  <<: *b\n  slots: 8\n")
    assert load_yaml(tmp_path / "c.yaml")["model"] == {"slots": 8, "d_mem": 16}


# --- the objective's fields: ObjectiveConfig, and the flat spelling every user had before it ------

def test_the_objective_has_a_config_of_its_own_that_the_old_flat_spelling_reaches():
    cfg = SelmemConfig(credit="none", lambda_credit=0.5, lambda_read=0.0)
    assert cfg.objective == ObjectiveConfig(credit="none", lambda_credit=0.5)
    assert (cfg.credit, cfg.lambda_credit, cfg.lambda_read, cfg.read_mass) == ("none", 0.5, 0.0, False)
    assert replace(cfg, credit="read").credit == "read" and cfg.credit == "none"
    other = replace(cfg, slots=8)  # replace() passes the objective along: a copy, not the same object
    other.credit = "probe"  # setting the flat name sets the objective's field
    assert other.objective.credit == "probe" and cfg.credit == "none"
    assert SelmemConfig(objective=ObjectiveConfig(credit="read")) == SelmemConfig(credit="read")
    assert SelmemConfig(objective=ObjectiveConfig(credit="read"), credit="none").credit == "none"  # flat wins
    assert SelmemConfig(**asdict(cfg)) == cfg == SelmemConfig(**cfg.to_dict())
    assert hasattr(cfg, "credit") and not hasattr(cfg, "credits")
    assert copy.deepcopy(cfg) == cfg and pickle.loads(pickle.dumps(cfg)) == cfg
    assert {"credit", "gate_grad", "credit_grad"} <= set(fields_of(SelmemConfig)) | set(OBJECTIVE_FIELDS)
    assert {"credit_grad", "gate_grad"} <= set(fields_of(SelmemConfig))  # they change what forward computes
    assert not set(OBJECTIVE_FIELDS) & set(fields_of(SelmemConfig))


def fields_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_the_record_stays_flat_and_yaml_takes_either_spelling(tmp_path):
    """config.yaml and HF's config.json keep the layout they had (the objective's fields beside the
    model's), so what reads an old run folder reads a new one; YAML may also nest them."""
    cfg = tiny_cfg(credit="read", lambda_score=0.1)
    flat = cfg.to_dict()
    assert "objective" not in flat and flat["credit"] == "read" and flat["lambda_score"] == 0.1
    assert cfg.to_dict(nested=True)["objective"] == asdict(cfg.objective)
    assert flatten_objective(cfg.to_dict(nested=True)) == flat
    for data in (flat, cfg.to_dict(nested=True)):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
        assert SelmemConfig.from_yaml(tmp_path / "c.yaml") == cfg
    exp = ExperimentConfig.from_dict({"model": {"slots": 4, "objective": {"credit": "none"}}})
    assert exp.model.credit == "none" and exp.to_dict()["model"]["credit"] == "none"


@pytest.mark.parametrize("data, match", [
    ({"credit": "none", "objective": {"credit": "probe"}}, r"\['credit'\] given twice"),
    ({"objective": {"credti": "none"}}, r"unknown ObjectiveConfig key\(s\) \['credti'\]"),
    ({"credti": "none"}, r"unknown SelmemConfig key\(s\) \['credti'\]; known keys: .*'credit'"),
    ({"objective": {"write_rate": 2.0}}, r"write_rate must be in \[0, 1\], got 2.0"),
    ({"objective": {"lambda_read": "1e-3"}}, r"lambda_read must be float, got '1e-3'; YAML reads 1e-3 as text"),
    ({"objective": "none"}, r"objective must be an ObjectiveConfig \(in YAML a mapping of its fields\), got str"),
    ({"read_mass": True}, r"read_mass is a term of the read teacher, so it needs credit='probe' and lambda_read > 0"),
    ({"objective": {"credit": "none"}, "gate_grad": "teacher"}, r"gate_grad='teacher' .* needs credit"),
], ids=["both-spellings", "unknown-nested", "unknown-flat", "nested-range", "nested-type", "not-a-mapping",
        "read-mass-alone", "gate-grad-across"])
def test_a_bad_objective_field_is_named_in_either_spelling(data, match):
    with pytest.raises(ValueError, match=match):
        SelmemConfig.from_dict(data)


def test_every_preset_spells_the_objective_flat_and_loads():
    presets = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert presets
    for path in presets:
        model = load_yaml(path).get("model") or {}
        exp = ExperimentConfig.from_yaml(path)
        for key in set(model) & OBJECTIVE_FIELDS:
            assert getattr(exp.model.objective, key) == model[key], (path, key)
