"""ListOps (Nangia & Bowman 2018; LRA, Tay et al. 2021), generated here with LRA's grammar.

An expression is a digit 0-9 or ``[ OP e1 ... ek ]`` with 2 <= k <= ``max_args`` and OP one of
MIN, MAX, MED (median, rounded down as LRA's ``int(np.median(...))``) and SM (sum mod 10). Like
LRA's generator, a node below ``max_depth`` becomes an operator with probability 1/4 (else a
digit), and expressions are resampled until their token count lies in ``[min_len, max_len]``;
unlike LRA, the root is always an operator (LRA rejects bare digits through min_len anyway).

Ids: ``0`` PAD, digits ``1..10`` (digit d is id d+1), ``11`` MIN, ``12`` MAX, ``13`` MED,
``14`` SM, ``15`` "[", ``16`` "]", ``17`` ANSWER; ``vocab_size = 18``,
``seq_len = max_len + 1``. Rows are right-aligned: left PAD, the expression, then ANSWER as the
last token. Only the ANSWER position is scored; its target is the value's digit id. Every
expression token is ``relevant``; ``source`` at ANSWER spans the whole expression.

Worked example, ``[ MAX 4 3 [ MIN 2 3 ] 1 0 ]`` (= 4) with ``max_len=13`` (seq_len 14)::

    position   0  1  2  3  4  5  6  7  8  9 10 11 12 13
    tokens     0 15 12  5  4 15 11  3  4 16  2  1 16 17
    targets    .  .  .  .  .  .  .  .  .  .  .  .  .  5
    loss_mask                                         ^
    relevant      ^  ^  ^  ^  ^  ^  ^  ^  ^  ^  ^  ^
    source at 13: [1, 13)

Chance accuracy is reported as 1/10 (the answer distribution is not uniform: MIN and MAX skew it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from selmem.tasks.base import Batch, Task
from selmem.tasks.common import PAD, check_batch_args, check_int, empty_source, make_batch

DIGIT0 = 1
OPS = ("MIN", "MAX", "MED", "SM")
OP_IDS = {op: 11 + i for i, op in enumerate(OPS)}  # MIN 11, MAX 12, MED 13, SM 14
OPEN, CLOSE, ANSWER = 15, 16, 17
VALUE_P = 0.25  # LRA: a node below max_depth is an operator with probability 1 - 0.75
MAX_TRIES = 10_000  # resampling budget per expression before giving up


def apply_op(op: str, args: list[int]) -> int:
    """Evaluate one operator on digit arguments, exactly as LRA does.

    >>> apply_op("MED", [1, 2, 4, 9]), apply_op("SM", [7, 8]), apply_op("MIN", [3, 1])
    (3, 5, 1)
    """
    if op == "MIN":
        return min(args)
    if op == "MAX":
        return max(args)
    if op == "MED":
        return int(np.median(args))
    if op == "SM":
        return sum(args) % 10
    raise ValueError(f"op must be one of {list(OPS)}, got {op!r}")


def evaluate(tokens: list[int]) -> int:
    """Evaluate a token-id expression (no PAD, no ANSWER) with a stack; the test oracle.

    >>> evaluate([OPEN, OP_IDS["SM"], 8, 9, CLOSE])  # [ SM 7 8 ] = 15 mod 10
    5
    """
    names = {v: k for k, v in OP_IDS.items()}
    stack: list[list] = [[]]
    for t in tokens:
        if t == OPEN:
            stack.append([])
        elif t in names:
            stack[-1].append(names[t])
        elif t == CLOSE:
            op, *args = stack.pop()
            stack[-1].append(apply_op(op, args))
        else:
            stack[-1].append(t - DIGIT0)
    (value,) = stack[0]
    return value


def _tree(
    rng: np.random.Generator, depth: int, max_depth: int, max_args: int, out: list[int]
) -> int:
    """Append one random (sub)expression's ids to ``out`` and return its value (LRA's recursion)."""
    if depth > 1 and (depth >= max_depth or rng.random() > VALUE_P):
        value = int(rng.integers(0, 10))
        out.append(DIGIT0 + value)
        return value
    op = OPS[int(rng.integers(0, len(OPS)))]
    out += [OPEN, OP_IDS[op]]
    args = [
        _tree(rng, depth + 1, max_depth, max_args, out)
        for _ in range(int(rng.integers(2, max_args + 1)))
    ]
    out.append(CLOSE)
    return apply_op(op, args)


@dataclass
class ListOpsTask(Task):
    """Evaluate a nested MIN/MAX/MED/SM expression over digits; the answer is one digit."""

    name: ClassVar[str] = "listops"

    max_depth: int = 8
    """Depth limit as in LRA (10 there): operators only at depths < max_depth; root = depth 1."""
    max_args: int = 6
    """Most arguments of one operator, at least 2 (LRA: 10)."""
    min_len: int = 32
    """Fewest expression tokens (LRA: 500); shorter expressions are resampled."""
    max_len: int = 256
    """Most expression tokens (LRA: 2000); seq_len = max_len + 1."""
    seed: int = 0
    """Seed of the train/test streams (see Task.rng)."""

    @property
    def vocab_size(self) -> int:
        """PAD, 10 digits, 4 operators, brackets and ANSWER."""
        return ANSWER + 1

    @property
    def seq_len(self) -> int:
        """max_len expression tokens plus the ANSWER marker."""
        return self.max_len + 1

    @property
    def chance(self) -> float:
        """Reported as uniform over the 10 digits."""
        return 0.1

    def validate(self) -> None:
        """Raise ValueError naming the first impossible field."""
        check_int("max_depth", self.max_depth, 2)
        check_int("max_args", self.max_args, 2)
        check_int("max_len", self.max_len, 5)  # the smallest expression, [ OP a b ], has 5 tokens
        check_int("min_len", self.min_len, 1, self.max_len)
        check_int("seed", self.seed, 0)

    def sample(self, rng: np.random.Generator) -> tuple[list[int], int]:
        """One expression (ids) with its value, resampled until its length is in range."""
        for _ in range(MAX_TRIES):
            out: list[int] = []
            value = _tree(rng, 1, self.max_depth, self.max_args, out)
            if self.min_len <= len(out) <= self.max_len:
                return out, value
        raise ValueError(
            f"no expression with min_len={self.min_len} <= length <= max_len={self.max_len} in "
            f"{MAX_TRIES} tries: raise max_depth/max_args or widen [min_len, max_len]"
        )

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        """Batch ``index`` of ``split``: a pure function of the parameters, split and index."""
        self.validate()
        check_batch_args(index, batch_size)
        rng = self.rng(split, index)
        B, N = batch_size, self.seq_len
        tokens = np.full((B, N), PAD, dtype=np.int64)
        targets = np.zeros((B, N), dtype=np.int64)
        relevant = np.zeros((B, N), dtype=bool)
        source = empty_source(B, N)
        for b in range(B):
            expr, value = self.sample(rng)
            start = N - 1 - len(expr)
            tokens[b, start : N - 1] = expr
            relevant[b, start : N - 1] = True
            targets[b, N - 1] = DIGIT0 + value
            source[b, N - 1] = (start, N - 1)
        tokens[:, N - 1] = ANSWER
        loss_mask = np.zeros((B, N), dtype=bool)
        loss_mask[:, N - 1] = True
        return make_batch(tokens, targets, loss_mask, relevant, source)
