"""Shared helpers: range checks that name the field, batch assembly, field docstrings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from selmem.tasks.common import check_choice, check_int, field_docs, make_batch, random_subsets


def test_checks_name_the_field_and_range():
    check_int("n", 3, 1, 3)
    with pytest.raises(ValueError, match=r"^n must be an int in \[1, 3\], got 4$"):
        check_int("n", 4, 1, 3)
    with pytest.raises(ValueError, match=r"\[0, inf\)"):
        check_int("n", -1, 0)
    with pytest.raises(ValueError, match="got True"):
        check_int("n", True, 0)
    with pytest.raises(ValueError, match=r"^mode must be one of \['a', 'b'\], got 'c'$"):
        check_choice("mode", "c", ("a", "b"))


def test_make_batch_types_and_unscored_targets():
    mask = np.array([[False, True]])
    batch = make_batch(np.array([[5, 6]]), np.array([[7, 8]]), mask, mask, np.full((1, 2, 2), -1))
    assert batch.tokens.dtype == torch.long and batch.loss_mask.dtype == torch.bool
    assert batch.targets.tolist() == [[0, 8]] and batch.relevant.dtype == torch.bool


def test_random_subsets_are_distinct():
    draws = random_subsets(np.random.default_rng(0), 50, 6, 6)
    assert (np.sort(draws, axis=1) == np.arange(6)).all()


def test_field_docs_reads_attribute_docstrings():
    @dataclass
    class Demo:
        a: int = 1
        """First."""
        b: int = 2

    assert field_docs(Demo) == {"a": "First."}
