"""The run folder is the record: everything a number came from sits next to the number.

runs/<name>/
  command.txt     the command line that started (or resumed) the run
  config.yaml     the resolved experiment config
  env.json        git hash, torch version, device, CPU count, python
  metrics.jsonl   one JSON object per logged step / evaluation
  ckpt/last/      checkpoint for --resume;  ckpt/best/  best test metric so far
  results.json    final numbers
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from selmem.files import BadFile


class Logger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...


class DiskLogger:
    """Appends JSON lines to ``metrics.jsonl``; flushes every record so a crash loses nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")  # one write: a kill tears at most this last line


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of every line of a metrics.jsonl. A last line without its newline is a record
    that a kill cut short: it is dropped. Any other line that is not a JSON object with a step
    raises BadFile naming the file and the line."""
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    lines.pop()  # what follows the last newline: "" when complete, else a record a kill tore
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadFile(f"{path} line {i}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise BadFile(f"{path} line {i}: expected a JSON object with an integer 'step', got {line[:60]!r}")
        out.append((line, rec))
    return out


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (a torn last line, left by a kill, is left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [rec for _, rec in _records(path)]


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop the records after ``step`` (logged by a run that stopped past its last checkpoint),
    and a torn last line, so that a resumed run's metrics.jsonl reads as one uninterrupted run."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        keep = [line for line, rec in _records(path) if rec["step"] <= step]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)  # a kill here leaves the old file or the new one, never half of one


def git_hash() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    env = {"git": git_hash(), "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cpu_count": os.cpu_count(),
           "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def make_run_dir(out_dir: str, name: str, default_name: str, resume: bool) -> Path:
    """Create (or, when resuming, find) the run folder; never overwrite another run's record."""
    run = Path(out_dir) / (name or f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if resume:
        from selmem.train.checkpoint import resumable

        if not resumable(run / "ckpt" / "last"):
            raise FileNotFoundError(f"cannot resume: no checkpoint at {run / 'ckpt' / 'last'}")
        return run
    if run.exists() and any(run.iterdir()):
        raise FileExistsError(f"run folder {run} already exists; pick another train.name or pass "
                              "--train.resume to continue it")
    run.mkdir(parents=True, exist_ok=True)
    return run


def write_command(run: Path) -> None:
    with (run / "command.txt").open("a") as f:
        f.write(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) + "\n")
