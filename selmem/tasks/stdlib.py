"""The running interpreter's standard library as a corpus: source bytes and docstring sentences.

Shared by ``code-lm`` (the source files) and ``babi`` (docstring sentences as real-English
filler). Everything is deterministic given the interpreter: a sorted file list, a fixed byte cap,
a split by a CRC32 of the relative path (Python's ``hash`` is salted per process, CRC32 is not).
The corpus differs between Python versions, so record ``sys.version`` with any result.

>>> files = stdlib_files(200_000)
>>> all(path.endswith(".py") for path, _ in files), sum(len(src) for _, src in files) <= 200_000
(True, True)
>>> is_test_path("json/decoder.py") == (zlib.crc32(b"json/decoder.py") % 10 == 0)
True
"""

from __future__ import annotations

import ast
import re
import sysconfig
import zlib
from functools import lru_cache
from pathlib import Path

# Test suites, the IDE, 2to3, third-party packages, generated tables and doc blobs: not the
# hand-written library code we want to model.
EXCLUDED_DIRS = frozenset(
    {
        "test", "tests", "idle_test", "idlelib", "lib2to3", "site-packages", "dist-packages",
        "pydoc_data", "encodings", "turtledemo", "__pycache__", "ensurepip",
    }
)  # fmt: skip
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")  # end mark, space, capital letter
SENTENCE_CHARS = (20, 200)  # shortest/longest filler sentence kept, in bytes


def stdlib_root() -> Path:
    """The directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _excluded(rel: Path) -> bool:
    if set(rel.parts[:-1]) & EXCLUDED_DIRS or rel.parts[0].startswith("config-"):
        return True
    return rel.name.startswith("_sysconfigdata")  # generated per build


@lru_cache(maxsize=4)
def stdlib_files(max_bytes: int) -> tuple[tuple[str, bytes], ...]:
    """``(relative posix path, source bytes)`` of the sorted stdlib ``.py`` files.

    The longest prefix of the sorted path list whose total size stays within ``max_bytes``.
    Files holding a NUL byte are skipped, so id 0 can mean PAD in byte-level tasks.
    """
    root = stdlib_root()
    paths = sorted(p.relative_to(root) for p in root.rglob("*.py"))
    out, total = [], 0
    for rel in paths:
        if _excluded(rel):
            continue
        src = (root / rel).read_bytes()
        if total + len(src) > max_bytes:
            break
        if b"\0" in src:
            continue
        out.append((rel.as_posix(), src))
        total += len(src)
    return tuple(out)


def is_test_path(rel: str) -> bool:
    """The split rule: a file is held out when CRC32 of its relative path is 0 mod 10."""
    return zlib.crc32(rel.encode()) % 10 == 0


def docstrings(source: bytes) -> list[str]:
    """The docstrings of a module and its classes and functions, whitespace collapsed."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
    return [" ".join(doc.split()) for doc in docs if doc]


@lru_cache(maxsize=4)
def docstring_sentences(max_bytes: int, banned: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """English sentences from stdlib docstrings: printable ASCII, 20-200 bytes, ending in .!?

    Sentences are deduplicated (first occurrence kept, so the order is deterministic) and those
    containing any word of ``banned`` (lower case; matched case-insensitively) are dropped: babi
    bans its names, places and objects so that filler never reads like a fact.
    """
    seen: dict[str, None] = {}
    lo, hi = SENTENCE_CHARS
    for _, src in stdlib_files(max_bytes):
        for doc in docstrings(src):
            for sent in SENTENCE_SPLIT.split(doc):
                if not (lo <= len(sent) <= hi and sent.isascii() and sent.isprintable()):
                    continue
                words = {w.lower() for w in re.findall(r"[A-Za-z]+", sent)}
                if sent[-1] in ".!?" and not banned & words:
                    seen.setdefault(sent, None)
    return tuple(seen)
