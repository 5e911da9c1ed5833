"""The run folder is the record: everything a number came from sits next to the number.

runs/<name>/
  command.txt     the command line that started (or resumed) the run
  config.yaml     the resolved experiment config
  env.json        git hash, torch version, device, CPU count, python
  metrics.jsonl   one JSON object per logged step / evaluation
  ckpt/last/      checkpoint for --resume;  ckpt/best/  best test metric so far
  ckpt/step-<N>/  the train.keep_last - 1 checkpoints before last, for a fallback when it is damaged
  results.json    final numbers
  run.lock        held (fcntl.flock) by the one process writing the folder, with its pid
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from selmem.files import BadFile, writing


class Logger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...


class DiskLogger:
    """Appends JSON lines to ``metrics.jsonl``; flushes every record so a crash loses nothing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def log(self, record: dict[str, Any]) -> None:
        with writing(self.path), self.path.open("a") as f:
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
        with writing(tmp):
            tmp.write_text("".join(line + "\n" for line in keep))
        with writing(path):
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


#: what a run writes in its folder: a folder holding anything else is not a run to reuse
RECORD = {"command.txt", "config.yaml", "env.json", "metrics.jsonl", "metrics.jsonl.tmp", "ckpt", "results.json",
          "run.lock"}


class RunInUse(OSError):
    """Another live process holds the run folder's lock."""


def holder_pid(fd: int, wait: float = 1.0) -> str:
    """The pid the lock's holder wrote into the lock file, or "unknown". The holder writes it just
    after it takes the lock, so a process refused in between waits up to ``wait`` seconds for it."""
    deadline = time.monotonic() + wait
    while True:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid or time.monotonic() > deadline:
            return pid or "unknown"
        time.sleep(0.01)


class RunLock:
    """An exclusive OS lock (``fcntl.flock``) on ``run/run.lock`` while this process writes the run
    folder: a second writer (a copy of the same command, a resume of a live run) is refused by
    name. The OS drops the lock when the process dies, however it dies, so a killed run never
    leaves a folder that stays locked."""

    def __init__(self, run: Path) -> None:
        self.path = run / "run.lock"
        while True:
            with writing(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = holder_pid(fd)
                os.close(fd)
                raise RunInUse(f"run folder {run} is in use by another process (pid {pid}); wait for it to "
                               "end or pick another train.name") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its holder removed on release: lock the one now in its place
        with writing(self.path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (removed first, while held: a process that opened
        the old file meanwhile sees that it is gone, above). Safe to call twice."""
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def has_checkpoint(ckpt: Path) -> bool:
    """Whether ``ckpt/`` holds any checkpoint (``<tag>.tmp`` is a write that died unfinished)."""
    return ckpt.is_dir() and any(not p.name.endswith(".tmp") for p in ckpt.iterdir())


def make_run_dir(out_dir: str, name: str, default_name: str, resume: bool,
                 log: Any = None) -> tuple[Path, RunLock]:
    """Create (or, when resuming, find) the run folder and lock it (``RunLock``); never overwrite
    another run's record. A folder of a run that stopped before its first checkpoint (it can be
    neither resumed nor finished) is started afresh, its old metrics cleared, and ``log(message)``
    says so."""
    run = Path(out_dir) / (name or f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    taken = FileExistsError(f"run folder {run} already exists; pick another train.name or pass "
                            "--train.resume to continue it")
    if resume:
        from selmem.train.checkpoint import resumable

        if not resumable(run / "ckpt" / "last"):
            raise FileNotFoundError(f"cannot resume: no checkpoint at {run / 'ckpt' / 'last'}")
        return run, RunLock(run)
    if run.exists() and (not run.is_dir() or any(p.name not in RECORD for p in run.iterdir())):
        raise taken  # not a run's folder: leave it as it is, not even a lock file in it
    with writing(run):
        run.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run)
    try:  # under the lock: the folder's writer, if any, has ended
        if (run / "results.json").exists() or has_checkpoint(run / "ckpt"):
            raise taken
        old = [p for p in run.iterdir() if p.name != "run.lock"]
        if old:
            for p in old:  # config.yaml and env.json are rewritten; command.txt keeps both starts
                if p.name == "ckpt":
                    shutil.rmtree(p)  # unfinished writes only (has_checkpoint)
                elif p.name.startswith("metrics.jsonl"):
                    p.unlink()
            if log:
                log(f"run folder {run} holds no checkpoint (its run stopped before the first one): "
                    "starting it afresh, its old metrics.jsonl cleared")
    except BaseException:
        lock.release()
        raise
    return run, lock


def write_command(run: Path) -> None:
    with writing(run / "command.txt"), (run / "command.txt").open("a") as f:
        f.write(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) + "\n")
