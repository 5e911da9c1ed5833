"""Reading a run folder back: the experiment, the model with a checkpoint's weights, the task.

``selmem train`` writes the folder (train/run.py holds its layout); everything that reads one
(``selmem eval``, ``inspect``, ``length``, ``generate``, ``export``) loads it here, so the readers
sit below the command line and none of them imports ``cli.py``.

    exp, model, task = load_run("runs/NAME")            # ckpt/best, or runs/NAME/ckpt/last
    exp, model = load_selmem_run("runs/NAME", "last")   # a selmem model, or a ValueError
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from selmem.experiment import ExperimentConfig, build
from selmem.tasks.base import Task


def overrides(obj: Any, items: list[str], flag: str, what: str) -> dict[str, Any]:
    """``key=value`` strings -> {field: value of that field's type} for the dataclass ``obj``;
    a ValueError naming ``flag`` and the item for a key ``obj`` lacks or a value of another type."""
    updates: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not hasattr(obj, key):
            raise ValueError(f"{flag} expects key=value with a field of {what}, got {item!r}")
        old = getattr(obj, key)
        if isinstance(old, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{flag} {key} takes true or false, got {value!r}")
            updates[key] = value.lower() in ("true", "1")
        else:
            try:
                updates[key] = type(old)(value)
            except ValueError:
                raise ValueError(f"{flag} {key} takes a {type(old).__name__}, got {value!r}") from None
    return updates


def load_run(run: str | Path, ckpt: str = "", task_set: list[str] | None = None,
             model_set: list[str] | None = None) -> tuple[ExperimentConfig, nn.Module, Task]:
    """(experiment, model with the checkpoint's weights, task) of a run folder or of a checkpoint
    folder inside one (runs/NAME/ckpt/TAG); ``ckpt`` picks another tag (default: best).
    ``task_set`` / ``model_set`` override task / model fields as ``key=value`` (model fields that
    change no weight, such as age_weight, so the checkpoint still loads). A damaged or missing
    checkpoint falls back to the newest good one, and one line on stderr names both
    (``checkpoint.load_newest_good``); ``load_run_checkpoint`` also returns the one loaded."""
    return load_run_checkpoint(run, ckpt, task_set, model_set)[:3]


def load_run_checkpoint(run: str | Path, ckpt: str = "", task_set: list[str] | None = None,
                        model_set: list[str] | None = None) -> tuple[ExperimentConfig, nn.Module, Task, Path]:
    """``load_run``, and the checkpoint folder whose weights the model holds: the one asked for, or
    the newest good one a reader fell back to (inspect and length say which)."""
    from selmem.train.checkpoint import load_newest_good

    run = Path(run)
    if not (run / "config.yaml").is_file():
        if run.parent.name != "ckpt" or not (run.parent.parent / "config.yaml").is_file():
            raise FileNotFoundError(f"{run} is not a run folder: no config.yaml (pass runs/NAME or "
                                    "runs/NAME/ckpt/TAG)")
        run, ckpt = run.parent.parent, ckpt or run.name
    ckpt = ckpt or "best"
    exp = ExperimentConfig.from_yaml(run / "config.yaml")
    if task_set:
        exp = replace(exp, task=replace(exp.task, **overrides(exp.task, task_set, "--task-set",
                                                                f"task {exp.task.name}")))
    if model_set:
        exp = replace(exp, model=replace(exp.model, **overrides(exp.model, model_set, "--model-set", "the model")))
    try:  # a config.yaml cut short may parse, its fields then at odds (a segment above the maximum)
        exp = exp.resolved()
    except ValueError as e:
        given = " with the --task-set/--model-set overrides" if task_set or model_set else ""
        raise ValueError(f"{run / 'config.yaml'}{given}: {e}") from None
    model, task = build(exp)
    used = load_newest_good(run / "ckpt" / ckpt, model, inference=True,
                            log=lambda message: print(message, file=sys.stderr, flush=True))
    return exp, model.eval(), task, used


def load_selmem_run(run: str | Path, ckpt: str = "best") -> tuple[ExperimentConfig, nn.Module]:
    """(experiment, selmem model with the checkpoint's weights) of a run folder; ValueError for a
    baseline's run."""
    from selmem.model import SelectiveMemoryTransformer

    exp, model, _ = load_run(run, ckpt)
    if not isinstance(model, SelectiveMemoryTransformer):
        raise ValueError(f"{run} is a {exp.arch} run; generate and export need a selmem model")
    return exp, model
