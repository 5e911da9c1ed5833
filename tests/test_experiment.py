"""ExperimentConfig: one YAML file per run, strict keys, named errors, tyro subcommands per task."""

from __future__ import annotations

import typing
from dataclasses import replace

import pytest
import tyro
import yaml

from selmem.baselines import MODELS, PEERS
from selmem.config import TrainConfig
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
