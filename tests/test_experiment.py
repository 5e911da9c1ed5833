"""ExperimentConfig: one YAML file per run, strict keys, named errors, tyro subcommands per task."""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
import typing
from dataclasses import replace
from pathlib import Path

import pytest
import tyro
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from selmem.baselines import MODELS, PEERS
from selmem.config import SelmemConfig, TrainConfig
from selmem.experiment import Arch, ExperimentConfig, build
from selmem.tasks import TASKS, MQARTask
from tests.helpers import tiny_cfg

TINY_MQAR = dict(
    name="mqar", num_pairs=2, num_keys=4, num_values=4, segment_len=8, num_segments=2, noise_vocab=2
)
TINY_MODEL = dict(d_model=32, n_layers=1, n_heads=2, slots=4, d_mem=16, max_segment_len=8)


def write(tmp_path, data: dict):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny(**sections) -> dict:
    """The tiny experiment as a YAML-ready dict, with sections replaced or merged."""
    data = {
        "arch": "selmem",
        "model": dict(TINY_MODEL),
        "task": dict(TINY_MQAR),
        "train": {"steps": 2, "batch_size": 4},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def test_yaml_round_trip_of_every_section(tmp_path):
    exp = ExperimentConfig(
        arch="txl",
        model=tiny_cfg(select="topk", address="fifo", slot_decay=True),
        task=MQARTask(**{k: v for k, v in TINY_MQAR.items() if k != "name"}, curriculum_steps=5),
        train=TrainConfig(steps=7, lr=0.01, warmup=2, name="x", resume=True, device="cpu"),
    )
    exp.to_yaml(tmp_path / "exp.yaml")
    assert ExperimentConfig.from_yaml(tmp_path / "exp.yaml") == exp


@pytest.mark.parametrize("name", list(TASKS))
def test_yaml_round_trip_of_every_task(tmp_path, name):
    exp = ExperimentConfig(task=TASKS[name]())
    exp.to_yaml(tmp_path / "exp.yaml")
    back = ExperimentConfig.from_yaml(tmp_path / "exp.yaml")
    assert back == exp and type(back.task) is TASKS[name]


def test_missing_sections_take_defaults(tmp_path):
    assert ExperimentConfig.from_yaml(write(tmp_path, {})) == ExperimentConfig()


@pytest.mark.parametrize(
    "data, match",
    [
        pytest.param(tiny(modle={}), r"unknown experiment key\(s\) \['modle'\]", id="top-level"),
        pytest.param(
            tiny(model={"n_slots": 4}), r"unknown SelmemConfig key\(s\) \['n_slots'\]", id="model"
        ),
        pytest.param(tiny(task={"pairs": 2}), r"unknown MQARTask key\(s\) \['pairs'\]", id="task"),
        pytest.param(
            tiny(train={"stepz": 2}), r"unknown TrainConfig key\(s\) \['stepz'\]", id="train"
        ),
        pytest.param(
            tiny(arch="transformer"),
            r"arch must be one of .*'selmem'.*got 'transformer'",
            id="bad-arch",
        ),
        pytest.param(
            tiny(model={"select": "sometimes"}),
            r"select must be one of .*got 'sometimes'",
            id="bad-literal",
        ),
        pytest.param(
            tiny(task={"name": "recall"}),
            r"task\.name must be one of .*'mqar'.*got 'recall'",
            id="bad-task",
        ),
        pytest.param(tiny(task={"num_pairs": 9}), r"num_pairs", id="bad-task-value"),
        pytest.param(
            tiny(train={"lr": -1.0}), r"train\.lr must be > 0, got -1\.0", id="negative-lr"
        ),
        pytest.param(
            tiny(train={"steps": 0}), r"train\.steps must be >= 1, got 0", id="zero-steps"
        ),
        pytest.param(
            tiny(train={"min_lr_ratio": 2.0}),
            r"train\.min_lr_ratio must be in \[0, 1\]",
            id="min-lr>1",
        ),
        pytest.param(
            tiny(train={"resume": True}),
            r"train\.resume needs train\.name",
            id="resume-without-name",
        ),
    ],
)
def test_bad_yaml_is_named(tmp_path, data, match):
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=match) as err:
        ExperimentConfig.from_yaml(path)
    assert str(err.value).startswith(str(path)), "the error names the file"


def test_yaml_number_written_as_text_is_explained(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  lr: 1e-3\n")  # YAML 1.1 reads this as the string '1e-3'
    with pytest.raises(ValueError, match=r"train\.lr must be float, got '1e-3'.*write 1\.0e-3"):
        ExperimentConfig.from_yaml(path)
    path.write_text("train:\n  lr: 1.0e-3\n")
    assert ExperimentConfig.from_yaml(path).train.lr == 1e-3


@pytest.mark.parametrize(
    "train, task, match",
    [
        pytest.param(
            {"segment_len": 16},
            {},
            "train.segment_len=16 exceeds model.max_segment_len=8",
            id="train.segment_len",
        ),
        pytest.param(
            {},
            {"segment_len": 16},
            "task.segment_len=16 exceeds model.max_segment_len=8",
            id="task.segment_len",
        ),
    ],
)
def test_segment_longer_than_the_model_takes(tmp_path, train, task, match):
    exp = ExperimentConfig.from_yaml(write(tmp_path, tiny(train=train, task=task)))
    with pytest.raises(ValueError, match=match):
        exp.resolved()


def test_resolved_takes_the_task_vocabulary(tmp_path):
    exp = ExperimentConfig.from_yaml(write(tmp_path, tiny(model={"vocab_size": 999})))
    resolved = exp.resolved()
    assert resolved.model.vocab_size == exp.task.vocab_size == 11
    assert replace(resolved, model=exp.model) == exp  # nothing else changes
    assert exp.segment_len() == TINY_MQAR["segment_len"]


def test_every_arch_builds():
    assert set(typing.get_args(Arch)) == set(MODELS) | set(PEERS)  # peers: tests/baselines/test_peers.py
    exp = ExperimentConfig.from_dict(tiny()).resolved()
    for arch in MODELS:
        model, task = build(replace(exp, arch=arch))
        assert type(model) is MODELS[arch] and task is exp.task


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_is_a_subcommand(name):
    exp = tyro.cli(ExperimentConfig, args=[f"task:{name}"])
    assert exp.task == TASKS[name]()


def test_command_line_overrides_nested_fields():
    default = ExperimentConfig.from_dict(tiny())
    exp = tyro.cli(
        ExperimentConfig,
        default=default,
        args=[
            "--arch",
            "rmt",
            "--model.slots",
            "6",
            "--train.steps",
            "5",
            "task:mqar",
            "--task.num-pairs",
            "1",
        ],
    )
    assert (exp.arch, exp.model.slots, exp.train.steps, exp.task.num_pairs) == ("rmt", 6, 5, 1)
    # fields not named keep the YAML's values, not the class defaults (num_keys=16, segment_len=32)
    assert replace(exp.task, num_pairs=2) == default.task
    assert replace(exp.model, slots=4) == default.model


# --- any config a user can write: it validates, or one line names the field (issue 28) --------

SECTIONS = {"model": SelmemConfig, "train": TrainConfig}
SMOKE_DATA = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml").read_text())


def _options(cls: type, name: str) -> list:
    """A field's Literal options, else its default: values a user plausibly writes."""
    hint = typing.get_type_hints(cls)[name]
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    options = list(typing.get_args(hint)) if typing.get_origin(hint) is typing.Literal else []
    return options + ([default] if isinstance(default, (bool, int, float, str)) else [])


def any_value(cls: type, name: str) -> st.SearchStrategy:
    """A random value of a random type, or one of the field's own options (so some configs validate)."""
    scalar = (st.booleans() | st.integers(-3, 300) | st.integers() | st.floats() | st.text(max_size=6)
              | st.none() | st.sampled_from(["1e-3", "true", "auto", "cpu", ".nan"]))
    own = st.sampled_from(_options(cls, name)) if _options(cls, name) else st.nothing()
    return own | own | scalar | st.lists(scalar, max_size=2) | st.dictionaries(st.text(max_size=3), scalar, max_size=2)


@st.composite
def user_config(draw) -> tuple[dict, list[str], list[str]]:
    """smoke.yaml (or another task) with 1-3 fields of model/task/train set to random values, a
    random key now and then; (the config, the keys changed, every field of the sections changed)."""
    data = json.loads(json.dumps(SMOKE_DATA))
    name = draw(st.sampled_from(["mqar"] * 3 + sorted(TASKS)))
    classes = {**SECTIONS, "task": TASKS[name]}
    changed, touched = [], set()
    if name != "mqar":  # another task, at its defaults
        data["task"] = {"name": name}
        touched.add("task")
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(classes)))
        names = [f.name for f in dataclasses.fields(classes[section])]
        key = draw(st.sampled_from(names) | st.text("abcdefgh_", min_size=3, max_size=8))
        data[section][key] = draw(any_value(classes[section], key) if key in names else st.integers())
        changed.append(key)
        touched.add(section)
    return data, changed, sorted({f.name for section in touched for f in dataclasses.fields(classes[section])})


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(case=user_config())
def test_any_user_config_validates_or_names_the_field_in_one_line(case):
    """Random YAML mappings of model/task/train fields with random values of random types: each
    validates, or raises a ValueError/TypeError of one line that names the field, the
    one changed or, for a bound across fields, one of its section (mqar's num_keys=1 is reported as
    'num_pairs must be an int in [1, 1]')."""
    data, changed, section_fields = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            ExperimentConfig.from_yaml(path).resolved()
        except (ValueError, TypeError) as e:
            message = str(e)
            assert "\n" not in message, message
            assert any(re.search(rf"\b{key}\b", message) for key in changed + section_fields), \
                f"names none of {changed}: {message}"
            event(f"refused ({type(e).__name__})")
        else:
            event("validates")
