"""Numerical faults stop with a message that gives the step and the layer, before any weight
changes, and leave the last good checkpoint intact; train.nonfinite='skip' skips the step instead.
forward() refuses a state holding NaN/inf (behind model.check_finite) and an empty batch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from selmem.experiment import ExperimentConfig
from selmem.files import read_tensors
from selmem.model import SelectiveMemoryTransformer
from selmem.tasks import MQARTask
from selmem.train.loop import Trainer
from selmem.train.run import read_metrics
from tests.helpers import tiny_model, tokens

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
FAULT_AT = 5  # the 1-based step that goes wrong; ckpt/last is at step 4


def trainer(tmp_path: Path, **train) -> Trainer:
    exp = ExperimentConfig.from_yaml(SMOKE)
    train = {"out_dir": str(tmp_path), "name": "run", "steps": 6, "eval_every": 6, "ckpt_every": 2, **train}
    return Trainer.create(replace(exp, train=replace(exp.train, **train)))


def at_fault_step(monkeypatch, action, after=None) -> None:
    """Call ``action()`` when the loop fetches the batch of step FAULT_AT (index FAULT_AT - 1),
    and ``after()`` when it fetches the next one."""
    batch = MQARTask.batch

    def hooked(self, split, index, size):
        if split == "train" and index == FAULT_AT - 1:
            action()
        if split == "train" and index == FAULT_AT and after:
            after()
        return batch(self, split, index, size)

    monkeypatch.setattr(MQARTask, "batch", hooked)


def poison_weight(t: Trainer):
    def action():
        with torch.no_grad():
            t.model.get_parameter("blocks.0.mlp.up.weight")[0, 0] = float("nan")
    return action


def poison_gradient(t: Trainer, once: bool = False):
    def action():
        param = t.model.get_parameter("select.0.score.0.weight")

        def inf(g):
            if once:
                handle.remove()
            return torch.full_like(g, float("inf"))
        handle = param.register_hook(inf)
    return action


def poison_state(t: Trainer, monkeypatch):
    def action():
        forward_sequence = SelectiveMemoryTransformer.forward_sequence

        def nan_state(self, *args, **kwargs):
            out = forward_sequence(self, *args, **kwargs)
            slots = out.state.slots.clone()
            slots[0, 0, 0, 0] = float("nan")  # layer 0 only: the loss stays finite
            out.state = replace(out.state, slots=slots)
            return out
        monkeypatch.setattr(SelectiveMemoryTransformer, "forward_sequence", nan_state)
    return action


@pytest.mark.parametrize("fault, match", [
    pytest.param("weight", rf"non-finite forward at step {FAULT_AT}: .*NaN/inf in layer\(s\) \[0\]"
                           r".*blocks\.0\.mlp\.up\.weight \(layer 0\)", id="nan-weight"),
    pytest.param("gradient", rf"non-finite gradient at step {FAULT_AT} in select\.0\.score\.0\.weight \(layer 0\)",
                 id="inf-gradient"),
    pytest.param("state", rf"non-finite forward at step {FAULT_AT}: the losses are finite; the state of layer 0",
                 id="nan-state"),
])
def test_a_fault_stops_the_run_with_step_and_layer_and_keeps_the_checkpoint(tmp_path, monkeypatch, fault, match):
    t = trainer(tmp_path)
    action = {"weight": poison_weight(t), "gradient": poison_gradient(t),
              "state": poison_state(t, monkeypatch)}[fault]
    at_fault_step(monkeypatch, action)
    with pytest.raises(FloatingPointError, match=match) as err:
        t.fit()
    assert "intact" in str(err.value) and "train.nonfinite=skip" in str(err.value)
    last = t.run_dir / "ckpt" / "last"
    assert json.loads((last / "train.json").read_text())["meta"]["step"] == FAULT_AT - 1
    weights = read_tensors(last / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    if fault == "gradient":  # the faulty step changed no weight: the model is still the checkpoint's
        assert all(torch.equal(weights[k], v) for k, v in t.model.state_dict().items())


def test_a_fault_before_the_first_checkpoint_says_there_is_none(tmp_path, monkeypatch):
    """The stop once said 'The last good checkpoint is intact' when none had been written."""
    t = trainer(tmp_path, ckpt_every=0)  # the first checkpoint would be at step 6
    at_fault_step(monkeypatch, poison_gradient(t))
    with pytest.raises(FloatingPointError, match=rf"non-finite gradient at step {FAULT_AT}") as err:
        t.fit()
    assert "intact" not in str(err.value) and "No checkpoint was written before it" in str(err.value)
    assert not (t.run_dir / "ckpt").exists()
    monkeypatch.undo()
    assert trainer(tmp_path, ckpt_every=0).fit()["steps"] == 6  # and the run starts afresh, as it says


def test_skip_goes_on_without_the_faulty_step(tmp_path, monkeypatch):
    t = trainer(tmp_path, nonfinite="skip", ckpt_every=0)
    before, after = {}, {}

    def snapshot(into):
        return lambda: into.update({k: v.clone() for k, v in t.model.state_dict().items()})

    at_fault_step(monkeypatch, lambda: (snapshot(before)(), poison_gradient(t, once=True)()), snapshot(after))
    res = t.fit()
    assert res["steps"] == 6
    skipped = [r.get("skipped", 0) for r in read_metrics(t.run_dir) if r["split"] == "train"]
    assert skipped == [0] * (FAULT_AT - 1) + [1, 1]  # cumulative: step 5 only
    assert all(torch.equal(before[k], after[k]) for k in before), "the skipped step changed a weight"
    final = t.model.state_dict()
    assert any(not torch.equal(after[k], final[k]) for k in after), "step 6 did not train"
    assert all(torch.isfinite(v).all() for v in final.values())


def test_forward_refuses_a_state_with_nan_or_inf_naming_the_layer():
    model = tiny_model(torch.float32)
    x = tokens(2, 8)
    state = model(x).state
    for bad in (float("nan"), float("inf")):
        slots = state.slots.detach().clone()
        slots[1, 0, 2, 3] = bad
        with pytest.raises(ValueError, match=r"state holds NaN/inf in layer\(s\) \[1\]"):
            model(x, replace(state, slots=slots))
    usage = state.usage.detach().clone()
    usage[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer\(s\) \[0\]"):
        model(x, replace(state, usage=usage))
    # the flag turns the check off, and what it guards against then happens
    unchecked = tiny_model(torch.float32, check_finite=False)
    slots = state.slots.detach().clone()
    slots[:] = float("nan")
    out = unchecked(x, replace(state, slots=slots))
    assert not torch.isfinite(out.logits).all()


def test_an_empty_batch_is_refused_at_the_boundary():
    model = tiny_model(torch.float32)
    with pytest.raises(ValueError, match="empty batch: tokens has 0 rows"):
        model(torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="empty batch"):
        model.forward_sequence(torch.zeros(0, 16, dtype=torch.long), 8)
