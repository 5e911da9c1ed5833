"""Training on two processes (torchrun, gloo on CPU): the ranks keep identical weights, and the
run equals a single-process run on the same global batch, step for step, through a resume; a
diagnostic undefined on one rank's shard is reduced safely; ``--train.resume`` works under
torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from safetensors.torch import load_file

from selmem.experiment import ExperimentConfig, build
from selmem.metrics import memory_metrics
from selmem.train import dist
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


def _reduce_on_rank(rank: int, out: str) -> None:
    """One of two spawned ranks: the smoke model's diagnostics on this rank's half of a batch whose
    rows 2-3 (rank 1's) ask nothing, reduced by ``mean_over_ranks``; local and reduced to JSON."""
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=2,
                                  timeout=timedelta(seconds=60))  # a hang fails the test, not the suite
    world = dist.World(rank, 2, rank)
    exp = experiment(out, steps=1)
    torch.manual_seed(0)
    model, task = build(exp)
    batch = task.batch("train", 0, 4)
    asks = torch.arange(4)[:, None] < 2  # (B, 1): rank 1's rows have no scored position
    batch = replace(batch, loss_mask=batch.loss_mask & asks, relevant=batch.relevant & asks)
    shard = dist.shard_batch(batch, world)
    with torch.no_grad():
        local = memory_metrics(model.forward_sequence(shard.tokens, exp.segment_len()).stats, shard)
    reduced = dist.mean_over_ranks(local, world)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"local": local, "reduced": reduced}))
    dist.close(world)


def test_a_metric_undefined_on_one_rank_is_averaged_over_the_ranks_that_define_it(tmp_path):
    """Issue 27: rank 1 logged fewer keys than rank 0 and gloo aborted the all_reduce."""
    torch.multiprocessing.spawn(_reduce_on_rank, args=(str(tmp_path),), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert "read_hit_rate" in r0["local"] and "read_hit_rate" not in r1["local"]  # the case
    assert "recall" in r0["local"] and "recall" not in r1["local"]
    assert r0["reduced"] == r1["reduced"]  # every rank logs the same record
    assert set(r0["reduced"]) == set(r0["local"]) | set(r1["local"])  # undefined everywhere: left out
    for k, v in r0["reduced"].items():
        defined = [r["local"][k] for r in (r0, r1) if k in r["local"]]
        assert v == pytest.approx(sum(defined) / len(defined), rel=1e-12), k
    assert dist.mean_over_ranks(r0["local"], dist.World()) is r0["local"]  # one process: untouched


def test_resume_under_torchrun(tmp_path):
    """``selmem train --train.resume`` in a second torchrun continues the first one's run folder to
    the new step count and finishes it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "selmem",
            "train", "--config", str(SMOKE), "--train.out_dir", str(tmp_path), "--train.name", "run",
            "--train.eval_every", "2"]
    for steps, more in ((2, []), (4, ["--train.resume"])):
        proc = subprocess.run([*base, "--train.steps", str(steps), *more], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stderr
    run_dir = tmp_path / "run"
    assert [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"] == [1, 2, 3, 4]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 4
