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


class Logger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...


class DiskLogger:
    """Appends JSON lines to ``metrics.jsonl``; flushes every record so a crash loses nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop the records after ``step`` (logged by a run that stopped past its last checkpoint),
    so that a resumed run's metrics.jsonl reads as one uninterrupted run."""
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))


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
