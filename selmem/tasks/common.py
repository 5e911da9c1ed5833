"""Small helpers every task generator shares: range checks, batch assembly, field docs.

Kept apart from ``base.py`` (the contract) so that a generator file reads as "parameters, layout,
sampling" and nothing else.

>>> check_int("num_pairs", 3, 1, 8)
>>> check_int("num_pairs", 0, 1, 8)
Traceback (most recent call last):
    ...
ValueError: num_pairs must be an int in [1, 8], got 0
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from functools import cache

import numpy as np
import torch

from selmem.tasks.base import Batch

PAD = 0  # id 0 is padding in every task


def check_int(field: str, value: object, lo: int, hi: int | None = None) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``value`` is an int in ``[lo, hi]``.

    ``hi=None`` means no upper bound. Booleans are rejected: ``True`` is not a count.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if ok and value >= lo and (hi is None or value <= hi):
        return
    upper = "inf)" if hi is None else f"{hi}]"
    raise ValueError(f"{field} must be an int in [{lo}, {upper}, got {value!r}")


def check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{field} must be one of {list(allowed)}, got {value!r}")


def check_batch_args(index: int, batch_size: int) -> None:
    """Raise ``ValueError`` for a negative batch index or a non-positive batch size."""
    check_int("index", index, 0)
    check_int("batch_size", batch_size, 1)


def make_batch(
    tokens: np.ndarray,
    targets: np.ndarray,
    loss_mask: np.ndarray,
    relevant: np.ndarray | None = None,
    source: np.ndarray | None = None,
    values: np.ndarray | None = None,
    reset: np.ndarray | None = None,
    repeat_of: np.ndarray | None = None,
) -> Batch:
    """Turn numpy arrays (B, N) / (B, N, 2) into a :class:`Batch` of long/bool torch tensors.

    Targets outside ``loss_mask`` are set to PAD so that no unscored label leaks information.
    """
    targets = np.where(loss_mask, targets, PAD)
    return Batch(
        tokens=torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)),
        targets=torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64)),
        loss_mask=torch.from_numpy(np.ascontiguousarray(loss_mask, dtype=np.bool_)),
        relevant=None
        if relevant is None
        else torch.from_numpy(np.ascontiguousarray(relevant, dtype=np.bool_)),
        source=None
        if source is None
        else torch.from_numpy(np.ascontiguousarray(source, dtype=np.int64)),
        values=None
        if values is None
        else torch.from_numpy(np.ascontiguousarray(np.where(loss_mask, values, 0.0), dtype=np.float32)),
        reset=None if reset is None else torch.from_numpy(np.ascontiguousarray(reset, dtype=np.bool_)),
        repeat_of=None
        if repeat_of is None
        else torch.from_numpy(np.ascontiguousarray(np.where(loss_mask, repeat_of, -1), dtype=np.int64)),
    )


def empty_source(batch_size: int, length: int) -> np.ndarray:
    """A (B, N, 2) source array filled with -1 ("no source here")."""
    return np.full((batch_size, length, 2), -1, dtype=np.int64)


def answered_spans(B: int, N: int, asked: np.ndarray, answers: np.ndarray, src: np.ndarray,
                   width: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The scored arrays of a recall batch: queries at ``asked`` (B, n) answer ``answers`` (B, n)
    from the ``width`` tokens starting at ``src`` (B, n) -> targets, loss_mask, relevant (B, N)
    and source (B, N, 2) (``[src, src + width)`` at each query)."""
    rows = np.arange(B)[:, None]
    targets = np.zeros((B, N), dtype=np.int64)
    targets[rows, asked] = answers
    loss_mask = np.zeros((B, N), dtype=bool)
    loss_mask[rows, asked] = True
    relevant = np.zeros((B, N), dtype=bool)
    for i in range(width):
        relevant[rows, src + i] = True
    source = empty_source(B, N)
    source[rows, asked, 0] = src
    source[rows, asked, 1] = src + width
    return targets, loss_mask, relevant, source


def random_subsets(
    rng: np.random.Generator, batch_size: int, population: int, k: int
) -> np.ndarray:
    """(B, k) distinct draws from ``range(population)`` per row, in random order (vectorised)."""
    return np.argsort(rng.random((batch_size, population)), axis=1)[:, :k]


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass: ``{field: "text"}`` (the tyro convention).

    A field is documented by a string literal on the line after it::

        num_pairs: int = 8
        \"\"\"Key-value pairs per example.\"\"\"

    Returns ``{}`` when the source is unavailable (e.g. a frozen executable).
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:], strict=False):
            doc = getattr(nxt, "value", None)
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(doc, ast.Constant)
                and isinstance(doc.value, str)
            ):
                docs[stmt.target.id] = " ".join(doc.value.split())
    return docs
