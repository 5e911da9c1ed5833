"""docs/RELIABILITY.md is what `./dev reliability` writes from the tests' code: no count typed by hand."""

from __future__ import annotations

from tests.reliability import PAGE, render


def test_reliability_page_is_regenerated():
    assert PAGE.read_text() == render(), "docs/RELIABILITY.md is stale: run ./dev reliability"
