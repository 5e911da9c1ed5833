"""Training on two processes (torchrun, gloo on CPU): the ranks keep identical weights, and the
run equals a single-process run on the same global batch, step for step, through a resume."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from selmem.experiment import ExperimentConfig
from selmem.train.loop import train
from selmem.train.run import read_metrics
from tests.helpers import assert_close

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def experiment(out: str, steps: int, resume: bool = False) -> ExperimentConfig:
    """configs/smoke.yaml with a global batch of 4 and the aux losses off: InfoNCE contrasts the
    sequences of a rank's shard and the sparsity budget is nonlinear in the batch mean, so with
    them on two ranks of 2 rows train a (slightly) different objective than one process of 4."""
    exp = ExperimentConfig.from_yaml(SMOKE)
    model = replace(exp.model, lambda_nce=0.0, lambda_sparse=0.0, lambda_rec=0.0, credit="none")
    train_cfg = replace(exp.train, out_dir=out, name="run", steps=steps, batch_size=4, eval_every=2,
                        ckpt_every=1, resume=resume)
    return replace(exp, model=model, train=train_cfg)


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


def test_two_processes_equal_one_on_the_global_batch(tmp_path):
    train(experiment(str(tmp_path / "single"), steps=2))  # what the worker does, on one process
    single = train(experiment(str(tmp_path / "single"), steps=4, resume=True))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "train" / "ddp_worker.py"), str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        assert (ranks[0][k] == ranks[1][k]).all(), f"{k} differs between the ranks"
    ddp_losses, one_losses = losses(tmp_path / "ddp" / "run"), losses(Path(single["run_dir"]))
    assert len(ddp_losses) == len(one_losses) == 4  # the resume lost no step and repeated none
    for step, (a, b) in enumerate(zip(ddp_losses, one_losses, strict=True), 1):
        assert a == pytest.approx(b, rel=1e-5), f"step {step}: 2 ranks {a}, 1 process {b}"
    single_weights = load_file(Path(single["run_dir"]) / "ckpt" / "last" / "model.safetensors")
    for k, v in single_weights.items():
        assert_close(k, v, ranks[0][k], atol=1e-5)
