"""ExperimentConfig: which model, which task, how to train. One YAML file, one run.

    arch: selmem                 # or a baseline: local full txl rmt armt lstm
    model: {d_model: 64, ...}    # SelmemConfig; vocab_size follows the task
    task: {name: mqar, num_pairs: 8, ...}
    train: {steps: 2000, ...}    # TrainConfig
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import tyro
import yaml
from torch import nn

from selmem.baselines import ARCHS, build_model
from selmem.config import SelmemConfig, TrainConfig, from_dict, load_yaml
from selmem.tasks import TASKS
from selmem.tasks.base import Task

# the names the model classes declare (baselines.ARCHS), as a Literal so that tyro and the YAML
# check offer exactly those
Arch = Literal[tuple(ARCHS)]  # type: ignore[valid-type]

# tyro shows each task as a subcommand named like the task: `task:mqar --task.num-pairs 4`
TaskChoice = Union[tuple(  # noqa: UP007 (a Union built at runtime from the registry)
    Annotated[cls, tyro.conf.subcommand(name)] for name, cls in TASKS.items()
)]  # type: ignore[misc]


def _default_task() -> Task:
    return TASKS["mqar"]()


@dataclass
class ExperimentConfig:
    """A model, a task and a training recipe."""

    arch: Arch = "selmem"
    """Which model: selmem or a baseline, by the name its class declares (baselines.ARCHS)."""
    model: SelmemConfig = field(default_factory=SelmemConfig)
    """Model config; baselines read the fields they share (widths, depth, slots as memory size)."""
    task: TaskChoice = field(default_factory=_default_task)  # type: ignore[valid-type]
    """The task and its parameters."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> ExperimentConfig:
        self.model.validate()
        self.train.validate()
        self.task.validate()
        seg = self.segment_len()
        if seg > self.model.max_segment_len:
            source = "train.segment_len" if self.train.segment_len else "task.segment_len"
            raise ValueError(f"{source}={seg} exceeds model.max_segment_len={self.model.max_segment_len}: a "
                             f"segment must fit the model's positions (raise model.max_segment_len or lower {source})")
        if self.arch == "selmem" and self.model.select == "topk" and self.model.topk > seg:
            raise ValueError(f"model.topk={self.model.topk} exceeds the segment length {seg}: select='topk' "
                             "writes k of a segment's tokens, so k must be <= the segment length")
        return self

    def segment_len(self) -> int:
        """train.segment_len, else the task's segment_len, else model.max_segment_len."""
        return self.train.segment_len or getattr(self.task, "segment_len", 0) or self.model.max_segment_len

    def resolved(self) -> ExperimentConfig:
        """A validated copy whose model vocabulary is the task's."""
        exp = replace(self, model=replace(self.model, vocab_size=self.task.vocab_size))
        return exp.validate()

    # --- YAML ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "model": self.model.to_dict(),
                "task": {"name": self.task.name, **asdict(self.task)}, "train": asdict(self.train)}

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown experiment key(s) {unknown}; known keys: {sorted(known)}")
        for part in ("model", "task", "train"):
            if data.get(part) is not None and not isinstance(data[part], dict):
                raise ValueError(f"{part} must be a mapping of fields (e.g. {part}: {{...}} or indented "
                                 f"lines below it), got {type(data[part]).__name__} {data[part]!r:.40}")
        task = dict(data.get("task") or {"name": "mqar"})
        name = task.pop("name", None)
        if not isinstance(name, str) or name not in TASKS:
            raise ValueError(f"task.name must be one of {sorted(TASKS)}, got {name!r}")
        exp = cls(arch=data.get("arch", "selmem"),
                  model=SelmemConfig.from_dict(data.get("model") or {}),
                  task=from_dict(TASKS[name], task),
                  train=from_dict(TrainConfig, data.get("train") or {}))
        if exp.arch not in Arch.__args__:  # type: ignore[attr-defined]
            raise ValueError(f"arch must be one of {list(Arch.__args__)}, got {exp.arch!r}")  # type: ignore[attr-defined]
        return exp

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        data = load_yaml(path)  # its errors name the file already
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


def build(exp: ExperimentConfig) -> tuple[nn.Module, Task]:
    """The model and task of a resolved experiment."""
    return build_model(exp.arch, exp.model), exp.task
