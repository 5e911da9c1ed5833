"""Induction heads (Olsson et al. 2022; the H3 paper's synthetic): "[T] x ... [T]" -> x.

Random tokens, with a TRIGGER appearing once at a random position followed by a random token x.
The row ends with the TRIGGER again; the model must output x there. The trigger id never appears
elsewhere, so the lookup is unambiguous.

Ids: ``0`` PAD, ``1`` TRIGGER, data ``2..1+vocab``; ``vocab_size = 2 + vocab``,
``seq_len = seq_len``. The first trigger is at ``p``, uniform in ``[0, seq_len - 3]``; the only
scored position is the last (``seq_len - 1``), target ``tokens[p + 1]``. ``relevant`` marks
``p + 1``; ``source`` at the last position is ``[p + 1, p + 2)``.

Worked example, ``InductionTask(seq_len=8, vocab=4)`` (data ids 2-5), train batch 0, seed 0
(p = 1)::

    position   0  1  2  3  4  5  6  7
    tokens     5  1  4  3  3  2  2  1
    targets    .  .  .  .  .  .  .  4
    loss_mask                       ^
    relevant         ^
    source at 7: [2, 3)

Shortcuts: none to remove, so this task has no hard-layout options. The answer is a random data
id, like every other token but the triggers, at a uniform position; only context (TRIGGER right
before it) says it is worth keeping, which is the layout the other recall tasks reach with
``shared_ids``. A lookup table on (id, segment) or on position (``selmem.tasks.shortcuts``) does
no better than predicting "relevant" for every data token: F1 about ``2/seq_len``.

Chance accuracy is ``1/vocab``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from selmem.tasks.base import Batch, Task
from selmem.tasks.common import check_batch_args, check_int, empty_source, make_batch

TRIGGER, DATA0 = 1, 2


@dataclass
class InductionTask(Task):
    """Output the token that followed the trigger's earlier occurrence."""

    name: ClassVar[str] = "induction"

    seq_len: int = 64
    """Row length; the trigger pair can be anywhere before the final trigger (>= 3)."""
    vocab: int = 16
    """Distinct data ids (random tokens and the answer); chance accuracy is 1/vocab."""
    seed: int = 0
    """Seed of the train/test streams (see Task.rng)."""

    @property
    def vocab_size(self) -> int:
        """PAD, TRIGGER and the data ids."""
        return DATA0 + self.vocab

    @property
    def chance(self) -> float:
        """Accuracy of guessing a data token uniformly."""
        return 1.0 / self.vocab

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        check_int("seq_len", self.seq_len, 3)
        check_int("vocab", self.vocab, 1)
        check_int("seed", self.seed, 0)

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Batch ``index`` of ``split``: a pure function of the parameters, split and index."""
        self.validate()
        check_batch_args(index, batch_size)
        rng = self.rng(split, index)
        B, N = batch_size, self.seq_len
        rows = np.arange(B)

        tokens = DATA0 + rng.integers(0, self.vocab, size=(B, N))  # (B, N)
        trig = rng.integers(0, N - 2, size=B)  # (B,) first trigger position p
        tokens[rows, trig] = TRIGGER
        tokens[:, N - 1] = TRIGGER
        answer = tokens[rows, trig + 1]  # (B,) never a trigger: p + 1 <= N - 2

        targets = np.zeros((B, N), dtype=np.int64)
        targets[:, N - 1] = answer
        loss_mask = np.zeros((B, N), dtype=bool)
        loss_mask[:, N - 1] = True
        relevant = np.zeros((B, N), dtype=bool)
        relevant[rows, trig + 1] = True
        source = empty_source(B, N)
        source[:, N - 1, 0] = trig + 1
        source[:, N - 1, 1] = trig + 2
        return make_batch(tokens, targets, loss_mask, relevant, source)
