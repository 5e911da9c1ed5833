"""Checkpoints: a save/load round trip restores everything training needs, the files are
safetensors + JSON (no pickle), a crash mid-save keeps the old one, misfits are named."""

from __future__ import annotations

import json

import pytest
import torch

import selmem.train.checkpoint as checkpoint
from selmem.config import TrainConfig
from selmem.train.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from selmem.train.optim import build_optimizer, build_scheduler
from selmem.train.seed import rng_state
from tests.helpers import tiny_model, tokens

TINY = dict(n_layers=1, max_segment_len=8)
TRAIN = TrainConfig(steps=10, warmup=2, lr=1e-2)


def trained(seed: int, steps: int = 2, **overrides):
    """A tiny model, its AdamW and schedule after ``steps`` steps on random tokens."""
    torch.manual_seed(seed)
    model = tiny_model(torch.float32, **{**TINY, **overrides})
    opt = build_optimizer(model, TRAIN)
    sched = build_scheduler(opt, TRAIN)
    for _ in range(steps):
        step(model, opt, sched)
    return model, opt, sched


def step(model, opt, sched) -> None:
    x = tokens(2, 8)
    out = model(x[:, :-1])
    loss = (
        torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), x[:, 1:].flatten())
        + out.losses["aux"]
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_round_trip_restores_model_optimizer_schedule_and_rng(tmp_path):
    model, opt, sched = trained(seed=0)
    rng = rng_state()
    save_checkpoint(tmp_path / "ckpt", model, opt, sched, rng, meta={"step": 2, "best": 0.5})

    model2, opt2, sched2 = trained(seed=1, steps=3)  # other weights, moments, step count
    meta, rng2 = load_checkpoint(tmp_path / "ckpt", model2, opt2, sched2)

    assert meta == {"step": 2, "best": 0.5}
    assert model.state_dict().keys() == model2.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, model2.state_dict()[name]), name
    state, state2 = opt.state_dict(), opt2.state_dict()
    assert state["state"].keys() == state2["state"].keys() and state["state"]
    for idx, moments in state["state"].items():
        for key in ["exp_avg", "exp_avg_sq", "step"]:
            assert torch.equal(moments[key], state2["state"][idx][key]), f"optimizer {idx}.{key}"
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
    assert sched2.last_epoch == sched.last_epoch == 2
    assert rng.keys() == rng2.keys() and all(torch.equal(rng[k], rng2[k]) for k in rng)

    # the proof: one more step from each lands on the same weights
    torch.manual_seed(7)
    step(model, opt, sched)
    torch.manual_seed(7)
    step(model2, opt2, sched2)
    for name, value in model.state_dict().items():
        assert torch.equal(value, model2.state_dict()[name]), name


def test_files_are_safetensors_and_json_never_pickle(tmp_path):
    model, opt, sched = trained(seed=0)
    path = save_checkpoint(tmp_path / "ckpt", model, opt, sched, rng_state(), meta={"step": 2})
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors",
        "train.json",
        "train.safetensors",
    ]
    assert not [p for p in tmp_path.rglob("*") if p.suffix in {".pt", ".pth", ".pkl", ".bin"}]
    info = json.loads((path / "train.json").read_text())
    assert {"meta", "param_groups", "scheduler"} <= set(info)
    for file in ["model.safetensors", "train.safetensors"]:
        # safetensors: 8-byte little-endian header length, then a JSON header
        head = (path / file).read_bytes()
        assert head[8:9] == b"{", f"{file} is not safetensors"
    assert not (tmp_path / "ckpt.tmp").exists() and not (tmp_path / "ckpt.old").exists()


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, _, _ = trained(seed=0)
    save_checkpoint(tmp_path / "ckpt", model, meta={"step": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt", model, meta={"step": 2})
    monkeypatch.undo()
    meta, _ = load_checkpoint(tmp_path / "ckpt", model)
    assert meta == {"step": 1}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "overrides, match",
    [
        pytest.param(dict(slots=8), r"init_slots \(1, 4, 16\) vs \(1, 8, 16\)", id="other-slots"),
        pytest.param(
            dict(d_model=48, n_heads=3), r"embed\.weight \(16, 32\) vs \(16, 48\)", id="other-width"
        ),
        pytest.param(dict(n_layers=2), r"missing \['blocks\.1\.", id="more-layers"),
        pytest.param(dict(meta_cache=True), r"missing \[.*meta", id="extra-module"),
    ],
)
def test_loading_into_another_config_names_the_misfit(tmp_path, overrides, match):
    model, _, _ = trained(seed=0)
    save_checkpoint(tmp_path / "ckpt", model)
    other = tiny_model(torch.float32, **{**TINY, **overrides})
    with pytest.raises(ValueError, match=rf"does not fit this model.*{match}"):
        load_model_weights(tmp_path / "ckpt", other)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors in checkpoint"):
        load_model_weights(tmp_path / "nowhere", tiny_model(**TINY))


def test_inference_loading_does_without_the_train_time_probe(tmp_path):
    """Evaluating a model does not need the teacher it was trained with: a checkpoint trained with
    the credit probe loads into a model without one (and back) for inference, never for resume."""
    model = tiny_model(torch.float32, **TINY)  # credit='probe' by default
    save_checkpoint(tmp_path / "ckpt", model)
    plain = tiny_model(torch.float32, **{**TINY, "credit": "none"})
    with pytest.raises(ValueError, match=r"unexpected \['probe\."):
        load_model_weights(tmp_path / "ckpt", plain)
    load_model_weights(tmp_path / "ckpt", plain, inference=True)
    shared = {k: v for k, v in model.state_dict().items() if not k.startswith("probe.")}
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in shared.items())
    save_checkpoint(tmp_path / "plain", plain)
    load_model_weights(tmp_path / "plain", model, inference=True)  # probe missing: kept as it was


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_last_keeps_that_many_training_checkpoints_the_newest(tmp_path, keep):
    """train.keep_last=N: ckpt/last and the N - 1 checkpoints before it as ckpt/step-<step>, each
    complete; keep_last=1 is the layout of before (last and best only)."""
    from dataclasses import replace
    from pathlib import Path

    from selmem.experiment import ExperimentConfig
    from selmem.train.loop import train

    exp = ExperimentConfig.from_yaml(Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml")
    exp = replace(exp, train=replace(exp.train, out_dir=str(tmp_path), name="r", steps=8, eval_every=2,
                                     keep_last=keep, progress=False))
    train(exp)
    ckpt = tmp_path / "r" / "ckpt"
    older = [f"step-{s:06d}" for s in (6, 4, 2)][: keep - 1]  # checkpoints at 2, 4, 6 and 8 (last)
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(["best", "last", *older])
    steps = [checkpoint.check_checkpoint(p)["meta"]["step"] for p in checkpoint.training_checkpoints(ckpt / "last")
             if p.exists()]
    assert steps == [8, 6, 4][:keep]


def test_keep_last_below_one_is_refused_by_name():
    with pytest.raises(ValueError, match=r"train\.keep_last must be >= 1, got 0"):
        TrainConfig(keep_last=0).validate()
