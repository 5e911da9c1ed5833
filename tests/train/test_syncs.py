"""A training step reads one value back from the device: the fault check (train/faults.py).

On a GPU every read of a device value (``.item()``, ``bool``/``int``/``float`` of a tensor, a
boolean index, ``nonzero``, ``.tolist()``) waits for the queued kernels. This test counts them
on the CPU below autograd, as the ATen ops that read values (``_local_scalar_dense``, ``nonzero``,
boolean ``index``/``index_put``), plus ``Tensor.tolist``, which bypasses the dispatcher on the
CPU. The optimiser's own reads are left out: PyTorch keeps Adam's step counters on the host."""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from selmem.experiment import ExperimentConfig
from selmem.train.loop import Trainer, host_checks
from selmem.train.optim import build_optimizer, build_scheduler

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
READS = {"_local_scalar_dense", "nonzero", "masked_select"}


def _caller() -> str | None:
    """file:line of the innermost selmem frame, None inside the optimiser (host counters)."""
    stack = traceback.extract_stack()
    if any("/torch/optim/" in f.filename for f in stack):
        return None
    mine = [f for f in stack if "/selmem/" in f.filename]
    return f"{mine[-1].filename.rsplit('/selmem/', 1)[-1]}:{mine[-1].lineno}" if mine else "outside selmem"


class CountReads(TorchDispatchMode):
    """Counts the ops that read device values, by the selmem line that caused them."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        indices = args[1] if name in ("index", "index_put", "index_put_") and len(args) > 1 else []
        boolean = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
        if name in READS or boolean:
            where = _caller()
            if where is not None:
                self.reads[f"{name} at {where}"] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model", [
    pytest.param({}, id="smoke-probe-credit"),
    pytest.param(dict(n_layers=2, credit="read", select="topk"), id="L2-read-credit-topk"),
    pytest.param(dict(n_layers=2, credit="none", address="fifo", compress="maxpool"), id="L2-fifo-maxpool"),
])
def test_a_training_step_makes_one_host_sync(tmp_path, monkeypatch, model):
    exp = ExperimentConfig.from_yaml(SMOKE)
    exp = replace(exp, model=replace(exp.model, **model),
                  train=replace(exp.train, out_dir=str(tmp_path), name="syncs", steps=3))
    t = Trainer.create(exp)
    opt = build_optimizer(t.model, exp.train)
    sched = build_scheduler(opt, exp.train)
    tolist = torch.Tensor.tolist
    counter = CountReads()

    def counted_tolist(self):
        where = _caller()
        if where is not None:
            counter.reads[f"tolist at {where}"] += 1
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    for step in range(2):  # the second step: the optimiser's state exists
        host = t.task.batch("train", step, exp.train.batch_size)
        scored = host_checks(t.model, host)  # on the host copy, before the batch moves
        counter.reads.clear()
        with counter:
            _, _, _, _, fault = t._step(step, host.to(t.device), exp.segment_len(), opt, sched, scored)
        assert fault is None
    assert sum(counter.reads.values()) == 1, dict(counter.reads)
    assert all("train/faults.py" in k for k in counter.reads), dict(counter.reads)
