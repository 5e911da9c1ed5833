"""The run folder (selmem/train/run.py): a run killed before its first checkpoint can be started
afresh in its own folder; a folder is locked while a process writes it, so a second writer is
refused by name, and the lock goes with the process that held it, however it dies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selmem.cli import main
from selmem.tasks import MQARTask
from selmem.train.loop import train
from selmem.train.run import RunInUse, RunLock
from tests.test_cli import train_args
from tests.train.test_loop import metrics, smoke

ROOT = Path(__file__).resolve().parents[2]


class Killed(BaseException):
    """A kill in the middle of training: nothing in the loop catches it."""


def killed_before_the_first_checkpoint(tmp_path: Path, monkeypatch, name: str) -> Path:
    """A run that logged 3 steps, then died fetching batch 3, before its checkpoint at step 4,
    with a checkpoint write of another attempt left unfinished in ckpt/last.tmp."""
    batch = MQARTask.batch

    def die_at_3(self, split, index, batch_size):
        if split == "train" and index == 3:
            raise Killed
        return batch(self, split, index, batch_size)

    monkeypatch.setattr(MQARTask, "batch", die_at_3)
    with pytest.raises(Killed):
        train(smoke(tmp_path, name=name, eval_every=4))
    monkeypatch.undo()
    run = tmp_path / name
    (run / "ckpt" / "last.tmp").mkdir(parents=True)
    (run / "ckpt" / "last.tmp" / "model.safetensors").write_bytes(b"half a file")
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]
    return run


def test_a_run_killed_before_its_first_checkpoint_starts_afresh_in_its_folder(tmp_path, monkeypatch, capsys):
    clean = train(smoke(tmp_path, name="clean", eval_every=4))
    run = killed_before_the_first_checkpoint(tmp_path, monkeypatch, "early")
    with pytest.raises(FileNotFoundError, match="cannot resume: no checkpoint"):  # nothing to resume
        train(smoke(tmp_path, name="early", eval_every=4, resume=True))

    capsys.readouterr()
    again = train(smoke(tmp_path, name="early", eval_every=4))
    err = capsys.readouterr().err
    assert f"run folder {run} holds no checkpoint" in err and "starting it afresh" in err, err
    assert metrics(run) == metrics(clean["run_dir"])  # the old steps 1-3 are gone, not doubled
    assert again["test"] == clean["test"]
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["best", "last"]
    assert not (run / "run.lock").exists()  # released: the run is over


def test_a_folder_that_is_not_a_run_without_checkpoint_is_still_refused(tmp_path, monkeypatch):
    run = killed_before_the_first_checkpoint(tmp_path, monkeypatch, "mine")
    (run / "notes.txt").write_text("not the run's")  # a file a run does not write: someone else's folder
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(FileExistsError, match="mine already exists"):
        train(smoke(tmp_path, name="mine"))
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_run_folder_held_by_a_lock_is_refused_by_name(tmp_path):
    (tmp_path / "busy").mkdir()
    lock = RunLock(tmp_path / "busy")
    with pytest.raises(RunInUse, match=rf"run folder {tmp_path / 'busy'} is in use by another process "
                                       rf"\(pid {os.getpid()}\)"):
        train(smoke(tmp_path, name="busy"))
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["run.lock"]  # nothing written
    lock.release()
    assert list((tmp_path / "busy").iterdir()) == []
    train(smoke(tmp_path, name="busy"))  # free again


def test_a_writer_refused_before_the_holder_wrote_its_pid_waits_for_it(tmp_path):
    # the holder takes the lock, then writes its pid: a process refused in between names the pid,
    # not "unknown" (seen in CI, two trainings started at once)
    import fcntl
    import threading

    (tmp_path / "busy").mkdir()
    fd = os.open(tmp_path / "busy" / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, still empty
    writer = threading.Timer(0.2, lambda: os.pwrite(fd, b"4242\n", 0))
    writer.start()
    try:
        with pytest.raises(RunInUse, match=r"\(pid 4242\)"):
            RunLock(tmp_path / "busy")
    finally:
        writer.join()
        os.close(fd)


HOLD = """
import sys, time
from pathlib import Path
from selmem.train.run import RunLock
RunLock(Path(sys.argv[1]))
Path(sys.argv[2]).touch()
time.sleep(600)
"""


def test_the_lock_goes_with_a_killed_process(tmp_path):
    """flock belongs to the process: a SIGKILL, which runs no cleanup, still frees the folder."""
    run, held = tmp_path / "run", tmp_path / "held"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run), str(held)], cwd=ROOT)
    try:
        while not held.exists():
            assert proc.poll() is None, "the holder died before it locked"
            time.sleep(0.01)
        with pytest.raises(RunInUse, match=rf"\(pid {proc.pid}\)"):
            RunLock(run)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (run / "run.lock").exists()  # left by the kill; no longer locked
    RunLock(run).release()


GATED = """
import sys, time
from pathlib import Path
import selmem.train.loop  # imports done before the gate, so both reach the run folder together
from selmem.cli import main
ready, gate = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not gate.exists():
    time.sleep(0.001)
sys.exit(main(sys.argv[3:]))
"""


def test_two_processes_on_one_run_name_one_trains_the_other_is_refused(tmp_path, capsys):
    args = ["--train.steps", "8", "--train.eval-every", "2"]
    assert main(train_args(tmp_path / "ref", "run", *args)) == 0

    gate, runs = tmp_path / "gate", tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", GATED, str(tmp_path / f"ready{i}"), str(gate),
                               *train_args(runs, "run", *args)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        gate.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    err = outs[loser][1]
    assert err.count("\n") == 1 and re.search(
        rf"run folder {runs / 'run'} is in use by another process \(pid {procs[winner].pid}\)", err), err
    assert metrics(runs / "run") == metrics(tmp_path / "ref" / "run")  # a clean run's, record for record
    assert len((runs / "run" / "command.txt").read_text().splitlines()) == 1  # the loser wrote nothing
    assert not (runs / "run" / "run.lock").exists()


#: every file a run writes, in the order of a two-step run; a full disk at each must name it
RUN_FILES = ["run.lock", "command.txt", "config.yaml", "env.json", "metrics.jsonl", "model.safetensors",
             "train.safetensors", "train.json", "results.json"]


def full_disk_at(monkeypatch, name: str) -> None:
    """Writing a file called ``name`` fails as on a full disk: OSError 28 from open, os.open and
    (safetensors wraps it) SafetensorError from save_file, which named no file."""
    from safetensors import SafetensorError

    from selmem.train import checkpoint

    def full(what: object) -> bool:
        return Path(str(what)).name == name

    opener, os_open, save_file = Path.open, os.open, checkpoint.save_file

    def path_open(self, mode="r", *args, **kwargs):
        if full(self) and set(mode) & set("wax+"):
            raise OSError(28, "No space left on device")
        return opener(self, mode, *args, **kwargs)

    def raw_open(path, flags, *args, **kwargs):
        if full(path) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(28, "No space left on device")
        return os_open(path, flags, *args, **kwargs)

    def save(tensors, filename, *args, **kwargs):
        if full(filename):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(Path, "open", path_open)
    monkeypatch.setattr(os, "open", raw_open)
    monkeypatch.setattr(checkpoint, "save_file", save)


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch, capsys, name):
    """Issue 28: a full disk stopped a run with '[Errno 28] No space left on device' or a
    SafetensorError, naming no file; now one line names the file the run was writing."""
    full_disk_at(monkeypatch, name)
    assert main(train_args(tmp_path, "full", "--train.steps", "2", "--train.eval-every", "2")) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("selmem train: error: ") and "No space left on device" in err, err
    path = re.search(r"error: (\S+): cannot write it \(", err)
    assert path and Path(path[1]).name == name and Path(path[1]).is_relative_to(tmp_path / "full"), err

