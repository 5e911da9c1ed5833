"""The stdlib corpus: deterministic, sorted, without test suites; sentences are clean."""

from __future__ import annotations

from selmem.tasks.stdlib import EXCLUDED_DIRS, docstring_sentences, docstrings, stdlib_files


def test_files_are_a_sorted_capped_prefix():
    files = stdlib_files(1_000_000)
    paths = [p for p, _ in files]
    assert paths == sorted(paths) and sum(len(s) for _, s in files) <= 1_000_000
    assert paths == [p for p, _ in stdlib_files(2_000_000)][: len(paths)]
    assert not any(set(p.split("/")[:-1]) & EXCLUDED_DIRS for p in paths)
    assert not any(b"\0" in s for _, s in files)


def test_docstrings_and_sentences():
    src = b'"""Module doc.  Second\n   line."""\ndef f():\n    """Does f."""\n'
    assert docstrings(src) == ["Module doc. Second line.", "Does f."]
    assert docstrings(b"def (:") == []
    sents = docstring_sentences(300_000, frozenset({"file"}))
    assert sents and all(20 <= len(s) <= 200 and s[-1] in ".!?" and s.isascii() for s in sents)
    assert not any("file" in s.lower().split() for s in sents)
