"""Progress a person can follow: a tqdm bar on a terminal, plain lines otherwise, each with
step/total, elapsed, ETA, tokens/s, loss and the last test metric; the run folder comes first;
--train.ckpt-every writes checkpoints between evaluations."""

from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from selmem.experiment import ExperimentConfig
from selmem.tasks import MQARTask
from selmem.train.loop import train
from selmem.train.progress import Progress
from selmem.train.run import read_metrics

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
REC = {"loss": 1.2345, "tokens_per_s": 5000.0}
EVAL = {"accuracy": 0.75, "bits_per_token": 0.5}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def smoke(tmp_path: Path, **train_overrides) -> ExperimentConfig:
    exp = ExperimentConfig.from_yaml(SMOKE)
    return replace(exp, train=replace(exp.train, out_dir=str(tmp_path), **train_overrides))


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(total=10, file=out)
    p.update(2, {**REC, "elapsed": 4.0}, {})
    p.update(4, {**REC, "elapsed": 8.0}, EVAL)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 2
    assert lines[1] == "step 4/10  elapsed 00:08  eta 00:12  loss 1.2345  5,000 tok/s  test acc 0.750"


def test_a_bar_on_a_terminal():
    out = Terminal()
    p = Progress(total=10, file=out, metric="bits_per_token")
    p.update(3, {**REC, "elapsed": 1.0}, EVAL)
    p.note("run folder: runs/x")
    p.close()
    text = out.getvalue()
    assert "\r" in text, "tqdm redraws the bar in place"
    assert re.search(r"3/10 \[\d\d:\d\d<\d\d:\d\d", text), text  # step/total [elapsed<ETA
    assert "loss 1.2345" in text and "5,000 tok/s" in text and "test bits 0.500" in text
    assert "run folder: runs/x\n" in text


def test_resumed_bar_counts_from_the_resume_step():
    out = Terminal()
    Progress(total=10, initial=6, file=out, elapsed=30.0).close()
    assert re.search(r"6/10 \[00:3\d<", out.getvalue()), out.getvalue()


def test_training_prints_the_run_folder_first_then_one_line_per_log(tmp_path, capsys):
    train(smoke(tmp_path, name="p", steps=4, log_every=2, eval_every=4, progress=True))
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"run folder: {tmp_path / 'p'}") and "--train.resume" in err[0]
    steps = [line for line in err[1:] if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["2/4", "4/4"]
    assert all("elapsed" in line and "eta" in line and "tok/s" in line for line in steps)
    assert err[1:] == [steps[0], steps[1], next(line for line in err if line.startswith("[test] step 4/4"))]


def test_ckpt_every_writes_checkpoints_between_evaluations_without_changing_the_run(tmp_path, monkeypatch):
    plain = train(smoke(tmp_path, name="plain", steps=6, eval_every=6))
    batch = MQARTask.batch

    def crash_at_5(self, split, index, size):
        if split == "train" and index == 4:
            raise KeyboardInterrupt
        return batch(self, split, index, size)

    monkeypatch.setattr(MQARTask, "batch", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(smoke(tmp_path, name="often", steps=6, eval_every=6, ckpt_every=2))
    monkeypatch.undo()
    last = tmp_path / "often" / "ckpt" / "last" / "train.json"
    assert json.loads(last.read_text())["meta"]["step"] == 4  # without ckpt-every: no checkpoint yet
    train(smoke(tmp_path, name="often", steps=6, eval_every=6, ckpt_every=2, resume=True))
    timing = {"elapsed", "tokens_per_s"}
    strip = [[{k: v for k, v in r.items() if k not in timing} for r in read_metrics(run)]
             for run in (plain["run_dir"], tmp_path / "often")]
    assert strip[0] == strip[1]
