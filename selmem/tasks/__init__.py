"""The task suite: one generator per file, looked up by name.

>>> task = build_task("mqar", num_pairs=4, segment_len=16)
>>> batch = task.batch("train", 0, batch_size=2)
>>> tuple(batch.tokens.shape), task.vocab_size
((2, 64), 49)
>>> build_task("mqar", pairs=4)
Traceback (most recent call last):
    ...
ValueError: unknown parameter 'pairs' for task 'mqar'; its parameters are: num_pairs, ..., seed
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from selmem.tasks.babi import BabiTask
from selmem.tasks.base import SPLIT_IDS, Batch, Task
from selmem.tasks.code_lm import CodeLMTask
from selmem.tasks.icr import InContextRecallTask
from selmem.tasks.common import field_docs
from selmem.tasks.induction import InductionTask
from selmem.tasks.listops import ListOpsTask
from selmem.tasks.molecules import MoleculesTask
from selmem.tasks.mqar import MQARTask
from selmem.tasks.passkey import PasskeyTask
from selmem.tasks.selective_copy import SelectiveCopyTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        MQARTask,
        SelectiveCopyTask,
        PasskeyTask,
        InductionTask,
        InContextRecallTask,
        BabiTask,
        ListOpsTask,
        CodeLMTask,
        MoleculesTask,
    )
}


def build_task(name: str, **params: object) -> Task:
    """Construct the task ``name`` with ``params`` and validate it.

    Raises ValueError for an unknown task name (listing the known ones), an unknown parameter
    (naming it and listing the task's fields) or an impossible value (naming the field).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    cls = TASKS[name]
    names = [f.name for f in fields(cls)]
    for key in params:
        if key not in names:
            raise ValueError(
                f"unknown parameter {key!r} for task {name!r}; "
                f"its parameters are: {', '.join(names)}"
            )
    task = cls(**params)
    task.validate()
    return task


def describe_tasks() -> str:
    """Every task, its summary and its parameters (default and meaning), for ``selmem tasks``."""
    lines = []
    for name, cls in TASKS.items():
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"{name} ({cls.__name__}): {summary}")
        docs = field_docs(cls)
        for f in fields(cls):
            default = "required" if f.default is MISSING else repr(f.default)
            lines.append(f"  {f.name} = {default}  # {docs.get(f.name, '')}".rstrip(" #"))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


__all__ = [
    "SPLIT_IDS",
    "TASKS",
    "BabiTask",
    "Batch",
    "CodeLMTask",
    "InductionTask",
    "InContextRecallTask",
    "ListOpsTask",
    "MQARTask",
    "MoleculesTask",
    "PasskeyTask",
    "SelectiveCopyTask",
    "Task",
    "build_task",
    "describe_tasks",
]
