"""Reading the files a run is made of, with one-line errors that name the file.

Every reader raises ``BadFile`` (a ValueError) as ``"PATH: what is wrong"``, which the CLI prints
as it is. Only safe formats: JSON, YAML through ``safe_load`` (config.py), safetensors. No pickle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open


class BadFile(ValueError):
    """A file that exists but cannot be used: damaged, truncated or of the wrong shape."""


class WriteError(OSError):
    """A file that could not be written (a full disk, a read-only folder), named in one line."""


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Raise an OSError (or safetensors' SafetensorError, which wraps it) inside as a WriteError
    ``"PATH: cannot write it (No space left on device, errno 28)"``: a full disk gave
    ``[Errno 28] No space left on device`` naming no file (issue 28). A WriteError from an inner
    ``writing`` passes unchanged, so the innermost file is the one named."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, SafetensorError) as e:
        errno = getattr(e, "errno", None)
        why = (f"{e.strerror}, errno {errno}" if isinstance(e, OSError) and e.strerror else one_line(e))
        err = WriteError(f"{path}: cannot write it ({why})")
        err.errno = errno
        raise err from None


def one_line(e: BaseException) -> str:
    """An exception's message on one line, cut at 200 characters (its type's name if it has none)."""
    text = " ".join(str(e).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(e).__name__


def read_json(path: str | Path) -> Any:
    """The JSON value in ``path``; BadFile naming the file and the position of a decode error."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise BadFile(f"{path}: not a text file ({one_line(e)})") from None
    if not text.strip():
        raise BadFile(f"{path}: empty file (was it cut short by a crash?)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadFile(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}; "
                      "was it cut short by a crash?)") from None


def read_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; BadFile naming the file when it is truncated or not one.

    The safetensors header is parsed and every tensor read: a file cut short fails here rather
    than deep inside torch later."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:  # SafetensorError, or an OSError from a short read: both mean a bad file
        raise BadFile(f"{path}: not a readable safetensors file ({one_line(e)})") from None


def sha256(path: str | Path, start: int = 0) -> str:
    """Hex SHA-256 of a file's bytes from byte ``start`` on (checkpoints record it to catch damage
    safetensors cannot see; a state file records that of its data, which follow the header)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        f.seek(start)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync(path: str | Path) -> None:
    """Flush a file (or a folder's entries) to disk, so a rename after it never exposes a hole."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
