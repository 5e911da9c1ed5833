"""AdamW groups (decay on matrices only) and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
import torch

from selmem.baselines import MODELS, build_model
from selmem.config import TrainConfig
from selmem.train.optim import WarmupCosine, build_optimizer, build_scheduler
from tests.helpers import tiny_cfg

# learned initial memory of each model: embedding-like, looked up rather than multiplied
MEMORY_INIT = {"init_slots", "init_memory", "mem_tokens"}


@pytest.mark.parametrize(
    "warmup, steps, min_ratio",
    [
        pytest.param(4, 20, 0.1, id="warmup4-of-20"),
        pytest.param(1, 10, 0.0, id="warmup1-to-zero"),
        pytest.param(10, 11, 0.5, id="warmup-almost-all"),
    ],
)
def test_warmup_then_cosine(warmup, steps, min_ratio):
    f = WarmupCosine(warmup, steps, min_ratio)
    ramp = [f(s) for s in range(warmup)]
    assert ramp[0] == 1 / warmup and ramp[-1] == 1.0
    assert all(a < b for a, b in pairwise(ramp)), "warmup is not increasing"
    decay = [f(s) for s in range(warmup, steps + 1)]
    assert decay[0] == 1.0
    assert all(a >= b for a, b in pairwise(decay)), "not monotone after warmup"
    assert decay[-1] == pytest.approx(min_ratio, abs=1e-12)
    assert f(steps + 100) == pytest.approx(min_ratio, abs=1e-12)  # stays at the floor past the end
    assert all(min_ratio - 1e-12 <= v <= 1.0 for v in decay)


def test_no_warmup_starts_at_peak():
    assert WarmupCosine(0, 10, 0.1)(0) == 1.0


def test_scheduler_drives_the_optimizer_lr():
    cfg = TrainConfig(steps=12, warmup=3, lr=0.5, min_lr_ratio=0.2)
    opt = build_optimizer(torch.nn.Linear(4, 4), cfg)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(cfg.steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(cfg.lr) and lrs.index(max(lrs)) == cfg.warmup - 1
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    assert all(g["lr"] == opt.param_groups[0]["lr"] for g in opt.param_groups)
    json.dumps(sched.state_dict())  # plain data: checkpoints store it as JSON


@pytest.mark.parametrize("arch", list(MODELS))
def test_decay_on_matrices_only(arch):
    model = build_model(arch, tiny_cfg(n_layers=1, max_segment_len=8))
    cfg = TrainConfig(weight_decay=0.3)
    decay_group, plain_group = build_optimizer(model, cfg).param_groups
    assert decay_group["weight_decay"] == 0.3 and plain_group["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in decay_group["params"]}
    plain = {names[id(p)] for p in plain_group["params"]}
    assert decay | plain == set(names.values()) and not decay & plain, (
        "every parameter in one group"
    )
    for name in decay:
        leaf = name.split(".")[-1]
        assert "norm" not in name and not leaf.startswith("bias"), (
            f"{name} is a norm or bias but decays"
        )
        assert "embed" not in name and leaf not in MEMORY_INIT, f"{name} is an embedding but decays"
    assert "embed.weight" in plain
    assert MEMORY_INIT & plain == MEMORY_INIT & set(names.values())
    assert decay, "no matrix decays"
