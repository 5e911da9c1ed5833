"""docs/RELIABILITY.md is what `./dev reliability` writes from the tests' code: no count typed by hand."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.reliability import PAGE, ROOT, cases, ids, render, unimported


def test_reliability_page_is_regenerated():
    assert PAGE.read_text() == render(), "docs/RELIABILITY.md is stale: run ./dev reliability"


def test_the_page_is_written_without_the_hf_extra():
    """On an install without transformers, `./dev reliability` stopped at test_hf's
    pytest.importorskip (a Skipped exception, outside pytest); now it writes the same page,
    from_pretrained's promise included."""
    code = ("import sys; sys.modules['transformers'] = None  # import transformers -> ImportError\n"
            "from tests.reliability import render; sys.stdout.write(render())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == PAGE.read_text()
    assert "from_pretrained on a damaged model.safetensors" in out.stdout


def test_reading_test_hf_gives_the_marks_importing_it_gives():
    pytest.importorskip("transformers")
    from tests import test_hf

    read = unimported("test_hf")
    tests = [name for name in dir(test_hf) if name.startswith("test_")]
    assert tests == sorted(name for name in vars(read) if name.startswith("test_"))
    for name in tests:
        fn, stand_in = getattr(test_hf, name), getattr(read, name)
        assert cases(stand_in) == cases(fn), name
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize" and not callable(mark.kwargs.get("ids")):  # a callable: ids() reads none
                arg = mark.args[0].split(",")[0].strip()
                assert ids(stand_in, arg) == ids(fn, arg), (name, arg)
