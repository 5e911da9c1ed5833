"""configs/cpu/: one preset per task, each opening with the command that uses it, each valid, and
the recall-type ones on layouts where a context-free lookup table cannot find what to keep."""

from __future__ import annotations

from pathlib import Path

import pytest

from selmem.experiment import ExperimentConfig
from selmem.tasks import TASKS
from selmem.tasks.shortcuts import RULES, shortcut_f1

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "cpu"
RECALL = ["mqar", "passkey", "selective-copy", "induction"]


VARIANTS = sorted(p.stem for p in PRESETS.glob("*.yaml") if p.stem not in TASKS)


def test_every_task_has_a_preset():
    """One preset per task, named after it; a variant of a task's layout is named TASK-WHAT."""
    stems = {p.stem for p in PRESETS.glob("*.yaml")}
    assert set(TASKS) <= stems
    assert all(any(v.startswith(f"{t}-") for t in TASKS) for v in VARIANTS), VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_opens_with_its_command_and_is_valid(variant):
    path = PRESETS / f"{variant}.yaml"
    assert path.read_text().splitlines()[0].startswith(f"# selmem compare --config configs/cpu/{variant}.yaml ")
    exp = ExperimentConfig.from_yaml(path).resolved()
    assert variant.startswith(f"{exp.task.name}-") and exp.arch == "selmem"
    assert exp.task.seq_len // exp.segment_len() >= 4, "the input must span several segments"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_preset_opens_with_its_command_and_is_valid(task):
    path = PRESETS / f"{task}.yaml"
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# selmem compare --config configs/cpu/{task}.yaml --compare.models selmem local full ")
    exp = ExperimentConfig.from_yaml(path).resolved()
    assert exp.task.name == task and exp.arch == "selmem"
    assert exp.task.seq_len // exp.segment_len() >= 4, "the input must span several segments"


@pytest.mark.parametrize("task", RECALL)
@pytest.mark.parametrize("rule", RULES)
def test_recall_presets_use_hard_layouts(task, rule):
    exp = ExperimentConfig.from_yaml(PRESETS / f"{task}.yaml").resolved()
    assert shortcut_f1(exp.task, rule, segment_len=exp.segment_len()) <= 0.8
