"""A kill at any point of a checkpoint write leaves a checkpoint that resume finds and loads;
a damaged checkpoint is named and the previous one takes over; a training process killed with
SIGKILL at several points and resumed ends exactly as a run that was never stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import selmem.train.checkpoint as checkpoint
from selmem.config import TrainConfig
from selmem.files import read_tensors
from selmem.train.checkpoint import CheckpointError, load_checkpoint, recover, save_checkpoint
from selmem.train.optim import build_optimizer, build_scheduler
from selmem.train.seed import rng_state

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
TIMING = {"elapsed", "tokens_per_s", "wall_s", "train_tokens_per_s", "peak_mem_mb", "run_dir"}
WRITES = 3  # checkpoint writes in a row: a fresh one, a replacing one, one after a recovery


class Killed(BaseException):
    """A kill: nothing in save_checkpoint catches it, so the disk is left as a SIGKILL leaves it."""


def model_at(step: int):
    """A tiny model, optimizer and schedule whose weights say which step they were saved at."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))  # any module will do
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(step))
    opt = build_optimizer(model, TrainConfig(steps=10, warmup=2))
    return model, opt, build_scheduler(opt, TrainConfig(steps=10, warmup=2))


def save(folder: Path, step: int, keep: int = 1) -> None:
    model, opt, sched = model_at(step)
    save_checkpoint(folder / "last", model, opt, sched, rng_state(), meta={"step": step}, keep=keep)


def kill_points(folder: Path, keep: int = 1) -> list[list[str]]:
    """The points of each of WRITES checkpoint writes in a row, as save_checkpoint marks them,
    keeping ``keep`` training checkpoints (tests/reliability.py counts them for docs/RELIABILITY.md)."""
    seen: list[list[str]] = []
    marker, checkpoint._reached = checkpoint._reached, lambda point: seen[-1].append(point)
    try:
        for step in range(1, WRITES + 1):
            seen.append([])
            save(folder, step, keep)
    finally:
        checkpoint._reached = marker
    return seen


def loaded_step(folder: Path) -> int:
    """What a restarted run finds: recover, load into a fresh model, check weights match the step."""
    model, opt, sched = model_at(-1)
    meta, _ = load_checkpoint(recover(folder / "last"), model, opt, sched)
    assert all(torch.all(p == meta["step"]) for p in model.parameters()), "weights of another step"
    return meta["step"]


#: train.keep_last values the kill test runs with: only last; last and one step folder, so that the
#: third write removes the oldest (WRITES > KEEP[-1])
KEEP = [1, 2]


@pytest.mark.parametrize("keep", KEEP, ids=[f"keep_last={k}" for k in KEEP])
def test_a_kill_at_each_point_of_a_checkpoint_write_leaves_one_that_loads(tmp_path, monkeypatch, keep):
    points = kill_points(tmp_path / "trace", keep)
    assert len(points[0]) >= 4 and any("moved last to last.old" in p for p in points[1])
    if keep > 1:
        assert "last: removed the oldest step checkpoint" in points[2], points[2]
    tried = 0
    for write, names in enumerate(points):
        for k, name in enumerate(names):
            folder = tmp_path / f"w{write}-k{k}"
            for step in range(1, write + 1):
                save(folder, step, keep)

            def die(point, name=name):
                if point == name:
                    raise Killed

            monkeypatch.setattr(checkpoint, "_reached", die)
            with pytest.raises(Killed):
                save(folder, write + 1, keep)
            monkeypatch.undo()
            if write == 0 and k < names.index("last: moved last.tmp to last"):
                # killed before the first checkpoint existed: nothing to resume, and it says so
                with pytest.raises(CheckpointError, match="no usable checkpoint"):
                    recover(folder / "last")
            else:
                # the new checkpoint once it is in place, the previous one before
                new = k >= names.index("last: moved last.tmp to last")
                assert loaded_step(folder) == (write + 1 if new else write), f"killed after {name!r}"
            for step in range(write + 2, WRITES + 2):  # the run goes on: later writes still work
                save(folder, step, keep)
            assert loaded_step(folder) == WRITES + 1
            kept = checkpoint.step_checkpoints(folder)  # at most keep - 1 beside last, each good
            assert len(kept) <= keep - 1, [p.name for p in kept]
            for older in kept:
                checkpoint.check_checkpoint(older)
                assert int(older.name.split("-")[1]) < WRITES + 1
            tried += 1
    assert tried == sum(map(len, points))


@pytest.mark.parametrize("file", ["model.safetensors", "train.safetensors", "train.json"])
@pytest.mark.parametrize("damage", ["truncated", "flipped-byte", "deleted"])
def test_damaged_last_is_named_and_the_previous_checkpoint_takes_over(tmp_path, file, damage):
    save(tmp_path / "a", 1)
    save(tmp_path / "b", 2)
    (tmp_path / "a" / "last").rename(tmp_path / "last.old")  # as a kill before the old one is removed
    (tmp_path / "b" / "last").rename(tmp_path / "last")
    target = tmp_path / "last" / file
    data = target.read_bytes()
    if damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flipped-byte":
        target.write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match=re.escape(file)):
        load_checkpoint(target.parent, model_at(-1)[0])
    messages: list[str] = []
    assert recover(tmp_path / "last", log=messages.append) == tmp_path / "last"
    assert loaded_step(tmp_path) == 1  # the older, good one
    assert len(messages) == 1 and file in messages[0] and "last.old" in messages[0], messages
    assert (tmp_path / "last.bad").is_dir() and not (tmp_path / "last.old").exists()


# --- a real process, a real SIGKILL -------------------------------------------------------------

#: where the training subprocesses of the test below die, in order: (what, which occurrence, at)
SIGKILLS = [
    ("batch", 5, "fetching train batch 5, one step past the checkpoint of step 4"),
    ("last: moved last to last.old", 2, "between the two renames of the step-8 checkpoint"),
    ("last: wrote train.json", 2, "with the step-10 checkpoint complete in last.tmp, not yet moved"),
    ("last: kept last.old as a step checkpoint", 2, "after the final checkpoint, before results.json"),
]

CHILD = """
import os, signal, sys
from selmem.cli import main
from selmem.tasks import MQARTask
from selmem.train import checkpoint
what, nth = sys.argv[1], int(sys.argv[2])
seen = [0]
def die_at(point):
    if point == what:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
if what == "batch":
    batch = MQARTask.batch
    def die_in_batch(self, split, index, size):
        if split == "train" and index == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return batch(self, split, index, size)
    MQARTask.batch = die_in_batch
else:
    checkpoint._reached = die_at
sys.exit(main(sys.argv[3:]))
"""


def train_argv(out: Path, name: str, resume: bool) -> list[str]:
    return ["train", "--config", str(SMOKE), "--train.out-dir", str(out), "--train.name", name,
            "--train.steps", "12", "--train.eval-every", "4", "--train.ckpt-every", "2",
            *(["--train.resume"] if resume else [])]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_sigkilled_training_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    from selmem.cli import main
    from selmem.train.run import read_metrics

    assert main(train_argv(tmp_path, "whole", resume=False)) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    stderr = []
    for i, (what, nth, _) in enumerate(SIGKILLS):
        child = subprocess.run([sys.executable, "-c", CHILD, what, str(nth),
                                *train_argv(tmp_path, "killed", resume=i > 0)],
                               env=env, capture_output=True, text=True, timeout=120)
        assert child.returncode == -signal.SIGKILL, f"kill {i} ({what}) did not happen: {child.stderr[-2000:]}"
        stderr.append(child.stderr)
    # each resume says where it starts; the one after the kill between the renames falls back
    assert "from step 4 of 12" in stderr[1]
    assert "last.old" in stderr[2] and "from step 6 of 12" in stderr[2]
    assert "from step 8 of 12" in stderr[3]  # last.tmp (step 10) was never moved in place
    capsys.readouterr()
    assert main(train_argv(tmp_path, "killed", resume=True)) == 0
    assert "from step 12 of 12" in capsys.readouterr().err

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert untimed(read_metrics(killed)) == untimed(read_metrics(whole))
    results = [json.loads((run / "results.json").read_text()) for run in (whole, killed)]
    assert untimed([results[1]]) == untimed([results[0]])
    for tag in ["last", "best"]:
        ref, out = (read_tensors(run / "ckpt" / tag / "model.safetensors") for run in (whole, killed))
        assert all(torch.equal(ref[k], out[k]) for k in ref), f"ckpt/{tag} differs"
    assert len((killed / "command.txt").read_text().splitlines()) == len(SIGKILLS) + 1


def test_resume_with_steps_lower_than_done_is_refused(tmp_path):
    from selmem.experiment import ExperimentConfig
    from selmem.train.loop import train

    exp = ExperimentConfig.from_yaml(SMOKE)
    exp = replace(exp, train=replace(exp.train, out_dir=str(tmp_path), name="r", steps=4, eval_every=2))
    train(exp)
    (tmp_path / "r" / "results.json").unlink()
    with pytest.raises(ValueError, match="already finished 4 of train.steps=2"):
        train(replace(exp, train=replace(exp.train, steps=2, resume=True)))
