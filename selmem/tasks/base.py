"""What every task yields, and the seeding rule that keeps train and test apart.

A task is a small dataclass (its parameters) with a ``batch(split, index, batch_size)`` method.
Batches are a pure function of ``(task parameters, split, index)``: the generator of batch
``index`` of ``split`` is ``np.random.default_rng([seed, SPLIT_IDS[split], index])``, so train and
test draw from disjoint seed streams, a run can resume at any step, and nothing touches numpy's or
torch's global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

SPLIT_IDS = {"train": 0, "test": 1}
PERCENT_METRICS = ("accuracy", "exact_match")  # fractions, shown as percentages; higher is better
LOWER_IS_BETTER = ("bits_per_token", "mae")


def default_metric(chance: float | None) -> str:
    """Answer accuracy for classification, bits per token for language modelling (no chance)."""
    return "accuracy" if chance is not None else "bits_per_token"


def headline_metric(results: dict) -> str:
    """The test metric a run (its results.json, or a summary row) is judged by: the task's
    ``metric`` where recorded, else accuracy for classification and bits per token for language
    modelling (results written before tasks named their metric)."""
    return results.get("metric") or default_metric(results["chance"])


@dataclass
class Batch:
    """One batch of a task. N is the sequence length.

    tokens:    (B, N) long, the input ids.
    targets:   (B, N) long, what position t must predict (only read where ``loss_mask``).
    loss_mask: (B, N) bool, the scored positions.
    relevant:  (B, N) bool, input positions whose content is needed later (ground truth for
               selection precision/recall), or None where the task cannot say.
    source:    (B, N, 2) long, for each scored position the half-open span [start, end) of input
               positions holding what its answer needs (for read hit rate); -1 where unknown.
               None where the task cannot say.
    values:    (B, N) float, for tasks whose answer stands for a number (molecules: the property
               whose bin is the target), that number at each scored position; None otherwise.
    reset:     (B, N) bool, True where a new document starts in a packed row: a model that
               takes it (selmem's forward_sequence(reset=...)) starts that document with a fresh
               memory. None for rows of one document.
    repeat_of: (B, N) long, for language modelling: at each scored position t, the earliest
               position u < t of the same document and row whose target completes the same n-gram
               as t's (the n bytes ending with the target), -1 where there is none. Zoology's
               "associative recall hits"; ``selmem.train.loop.evaluate`` splits the bits per
               token into those an earlier segment's memory must supply and the rest
               (``recall_slices``). None where the task does not say.
    """

    tokens: Tensor
    targets: Tensor
    loss_mask: Tensor
    relevant: Tensor | None = None
    source: Tensor | None = None
    values: Tensor | None = None
    reset: Tensor | None = None
    repeat_of: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """Move every tensor to ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: (v.to(device) if v is not None else None) for k, v in moved.items()})

    def __len__(self) -> int:
        return self.tokens.shape[0]


class Task:
    """Base class of the task dataclasses: seeding and the fixed test set."""

    name: ClassVar[str] = ""

    seed: int  # every subclass declares it as a dataclass field

    def rng(self, split: str, index: int) -> np.random.Generator:
        """The generator of batch ``index`` of ``split``: disjoint streams per split."""
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        return np.random.default_rng([self.seed, SPLIT_IDS[split], index])

    def test_set(self, n_batches: int, batch_size: int) -> list[Batch]:
        """The fixed held-out set: test batches 0..n_batches-1."""
        return [self.batch("test", i, batch_size) for i in range(n_batches)]

    # subclasses implement these
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def seq_len(self) -> int:
        raise NotImplementedError

    @property
    def metric(self) -> str:
        """The test metric the task is judged by (a key of ``evaluate``'s result): answer
        accuracy for classification, bits per token for language modelling (no chance)."""
        return default_metric(self.chance)

    @property
    def chance(self) -> float | None:
        raise NotImplementedError

    def validate(self) -> None:
        """Raise ValueError naming the field when the parameters are impossible."""

    def predict_values(self, logits: Tensor) -> Tensor:
        """(n,) numbers the (n, vocab) logits at scored positions stand for; only tasks whose
        batches carry ``values`` (regression read off a classifier) implement it."""
        raise NotImplementedError(f"task {self.name} has no numeric answers")

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        raise NotImplementedError
