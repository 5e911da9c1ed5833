"""The training loop on tiny runs: it learns, writes the run folder, is deterministic, resumes
exactly, honours the time budget and rejects bad configs before training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from statistics import mean

import pytest
import torch
from safetensors.torch import load_file

from selmem.experiment import ExperimentConfig
from selmem.tasks import MQARTask
from selmem.train.loop import train
from selmem.train.run import read_metrics

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
TIMING = {"elapsed", "tokens_per_s"}  # the only logged numbers that may differ between equal runs
RESULT_KEYS = {
    "arch",
    "task",
    "steps",
    "wall_s",
    "params",
    "train_only_params",
    "state_floats",
    "chance",
    "metric",
    "train_tokens_per_s",
    "peak_mem_mb",
    "test",
    "curve",
    "run_dir",
}


def smoke(tmp_path: Path, **train_overrides) -> ExperimentConfig:
    """configs/smoke.yaml (1 layer, 2-pair recall over 2 segments), writing under ``tmp_path``."""
    exp = ExperimentConfig.from_yaml(SMOKE)
    return replace(exp, train=replace(exp.train, out_dir=str(tmp_path), **train_overrides))


def metrics(run_dir: str | Path, split: str | None = None) -> list[dict]:
    """metrics.jsonl records without the wall-clock fields (optionally one split only)."""
    return [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in read_metrics(run_dir)
        if split is None or r["split"] == split
    ]


def test_loss_goes_down(tmp_path):
    # 30 steps are enough to learn that the answers are value tokens: ln(11) -> about ln(4) nats
    res = train(smoke(tmp_path, name="learn", steps=30, lr=1e-2, warmup=5, eval_every=30))
    losses = [r["loss"] for r in metrics(res["run_dir"], "train")]
    assert len(losses) == 30
    first, last = mean(losses[:5]), mean(losses[-5:])
    assert last < 0.85 * first, (
        f"train loss did not fall: first 5 steps {first:.3f}, last 5 {last:.3f}"
    )


def test_run_folder_is_the_record(tmp_path):
    exp = smoke(tmp_path, name="record", steps=4, eval_every=2)
    res = train(exp)
    run = Path(res["run_dir"])
    assert run == tmp_path / "record"
    for name in ["command.txt", "config.yaml", "env.json", "metrics.jsonl", "results.json"]:
        assert (run / name).is_file(), f"run folder lacks {name}"
    for tag in ["last", "best"]:
        assert {p.name for p in (run / "ckpt" / tag).iterdir()} >= {
            "model.safetensors",
            "train.json",
        }
    assert (run / "command.txt").read_text().strip()
    assert {"git", "torch", "device"} <= set(json.loads((run / "env.json").read_text()))

    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [(r["step"], r["split"]) for r in records] == [
        (1, "train"),
        (2, "train"),
        (2, "test"),
        (3, "train"),
        (4, "train"),
        (4, "test"),
    ]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0 for r in records)

    saved = json.loads((run / "results.json").read_text())
    assert set(saved) == RESULT_KEYS - {"run_dir"}
    tested = [(r["step"], r["accuracy"]) for r in records if r["split"] == "test"]
    assert [tuple(p) for p in saved["curve"]] == tested  # plots need no metrics.jsonl
    assert set(res) == RESULT_KEYS
    assert saved["steps"] == 4 and saved["arch"] == "selmem" and saved["task"] == "mqar"
    assert saved["chance"] == exp.task.chance
    assert saved["test"] == {
        k: v for k, v in records[-1].items() if k not in {"step", "split", "elapsed"}
    }

    assert ExperimentConfig.from_yaml(run / "config.yaml") == exp.resolved()


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    runs = {
        name: train(smoke(tmp_path, name=name, seed=seed))["run_dir"]
        for name, seed in [("a", 0), ("b", 0), ("c", 1)]
    }
    a, b, c = (metrics(runs[n]) for n in "abc")
    assert a == b
    assert [r["loss"] for r in a] != [r["loss"] for r in c]


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C in the middle of a run."""


def test_resume_continues_exactly(tmp_path, monkeypatch, capsys):
    full = train(smoke(tmp_path, name="full", steps=6, eval_every=2))

    batch = MQARTask.batch

    def crash_at_3(self, split, index, batch_size):
        if split == "train" and index == 3:
            raise Interrupted
        return batch(self, split, index, batch_size)

    monkeypatch.setattr(MQARTask, "batch", crash_at_3)
    with pytest.raises(Interrupted):
        train(smoke(tmp_path, name="cut", steps=6, eval_every=2))
    monkeypatch.undo()
    cut = tmp_path / "cut"
    assert json.loads((cut / "ckpt" / "last" / "train.json").read_text())["meta"]["step"] == 2
    assert metrics(cut)[-1]["step"] == 3  # logged past the checkpoint, then lost

    capsys.readouterr()
    resumed = train(smoke(tmp_path, name="cut", steps=6, eval_every=2, resume=True))
    assert f"resuming {cut} from step 2 of 6" in capsys.readouterr().err
    assert resumed["steps"] == 6
    for tag, file in [
        ("last", "model.safetensors"),
        ("last", "train.safetensors"),
        ("best", "model.safetensors"),
    ]:
        ref = load_file(str(Path(full["run_dir"]) / "ckpt" / tag / file))
        out = load_file(str(cut / "ckpt" / tag / file))
        assert ref.keys() == out.keys()
        different = [k for k in ref if not torch.equal(ref[k], out[k])]
        assert not different, (
            f"ckpt/{tag}/{file} differs from the uninterrupted run's at {different[:5]}"
        )
    assert metrics(cut) == metrics(full["run_dir"])  # one record per step, as if never stopped
    assert resumed["test"] == full["test"]
    assert len((cut / "command.txt").read_text().splitlines()) == 2  # started, resumed


def test_resume_rejects_another_model_and_finished_runs(tmp_path):
    train(smoke(tmp_path, name="done", steps=2, eval_every=2))
    config = (tmp_path / "done" / "config.yaml").read_text()
    other = smoke(tmp_path, name="done", steps=4, resume=True)
    other = replace(other, model=replace(other.model, slots=6))
    with pytest.raises(ValueError, match=r"cannot resume .*model\.slots: 4 -> 6"):
        train(other)
    assert (tmp_path / "done" / "config.yaml").read_text() == config  # the record is untouched
    with pytest.raises(ValueError, match=r"already finished 2 of train\.steps=2"):
        train(smoke(tmp_path, name="done", steps=2, resume=True))
    assert (tmp_path / "done" / "command.txt").read_text().count("\n") == 1  # not resumed


def test_time_budget_stops_early(tmp_path):
    res = train(smoke(tmp_path, name="budget", steps=50, time_budget_s=1e-9))
    assert res["steps"] == 1 < 50
    assert [(r["step"], r["split"]) for r in metrics(res["run_dir"])] == [(1, "train"), (1, "test")]
    meta = json.loads((Path(res["run_dir"]) / "ckpt" / "last" / "train.json").read_text())["meta"]
    assert meta["step"] == 1


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        pytest.param(
            dict(lr=-1.0), ValueError, r"train\.lr must be > 0, got -1\.0", id="negative-lr"
        ),
        pytest.param(
            dict(lr="1e-3"), ValueError, r"train\.lr must be float.*write 1\.0e-3", id="lr-as-text"
        ),
        pytest.param(
            dict(segment_len=16),
            ValueError,
            r"train\.segment_len=16 exceeds model\.max_segment_len=8",
            id="segment>max_segment_len",
        ),
        pytest.param(
            dict(resume=True),
            ValueError,
            r"train\.resume needs train\.name",
            id="resume-without-name",
        ),
        pytest.param(
            dict(resume=True, name="nope"),
            FileNotFoundError,
            r"cannot resume: no checkpoint",
            id="resume-missing-run",
        ),
        pytest.param(
            dict(device="gpu0"),
            ValueError,
            r"train\.device='gpu0' is not a device",
            id="bad-device",
        ),
    ],
)
def test_bad_config_fails_before_training(tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        train(smoke(tmp_path / "runs", **overrides))
    assert not (tmp_path / "runs").exists(), "a run folder was created for a config that cannot run"


def test_existing_run_folder_is_never_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("someone's run")
    with pytest.raises(FileExistsError, match=r"taken already exists.*--train\.resume"):
        train(smoke(tmp_path, name="taken"))
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("arch", ["selmem", "local", "full", "txl", "rmt", "armt", "lstm"])
def test_every_model_trains_through_the_loop_and_reports_its_state(tmp_path, arch):
    from selmem.baselines import state_size

    exp = smoke(tmp_path, name=arch, steps=2, eval_every=2)
    exp = replace(exp, arch=arch, model=replace(exp.model, d_mem=16))
    res = train(exp)
    assert res["steps"] == 2 and 0.0 <= res["test"]["accuracy"] <= 1.0
    # full's cache grows with the input: it is reported at the task's sequence length
    assert res["state_floats"] == state_size(arch, exp.resolved().model, seq_len=exp.task.seq_len)


def test_packed_code_lm_batches_reach_selmem_as_resets():
    """code-lm's packed train rows carry file starts; the loop hands them to selmem (a fresh
    memory per file) and streams them whole through the baselines, which take no resets."""
    from selmem import SelectiveMemoryTransformer, SelmemConfig
    from selmem.baselines import build_model
    from selmem.tasks import CodeLMTask
    from selmem.train.loop import reset_kwargs

    batches = (CodeLMTask(seq_len=128).batch("train", i, 8) for i in range(100))
    batch = next(b for b in batches if b.reset[:, 1:].any())
    model = SelectiveMemoryTransformer(SelmemConfig(vocab_size=256, max_segment_len=32, credit="none"))
    kwargs = reset_kwargs(model, batch)
    assert torch.equal(kwargs["reset"], batch.reset)
    packed = model.forward_sequence(batch.tokens, 32, **kwargs).logits
    assert not torch.allclose(packed, model.forward_sequence(batch.tokens, 32).logits)
    assert reset_kwargs(build_model("local", model.cfg), batch) == {}


@pytest.mark.parametrize("arch", ["selmem", "selmem-no-credit", "local", "armt", "lstm"])
def test_the_loop_hands_each_model_the_inputs_it_names(arch):
    """No model kind is named in the loop: each model lists the forward_sequence inputs it takes
    (sequence_inputs), it takes them, and the loop hands it exactly those."""
    import inspect

    from selmem.baselines import build_model
    from selmem.config import SelmemConfig
    from selmem.train.loop import forward_kwargs, host_checks

    task = MQARTask(num_pairs=2, segment_len=8, num_segments=3)
    cfg = SelmemConfig(vocab_size=task.vocab_size, d_model=16, n_heads=2, slots=4, d_mem=8, max_segment_len=8,
                       credit="none" if arch.endswith("no-credit") else "probe")
    model = build_model(arch.split("-")[0], cfg)
    batch = task.batch("train", 0, 2)
    batch = replace(batch, reset=torch.zeros_like(batch.loss_mask))
    kwargs = forward_kwargs(model, batch, host_checks(model, batch))
    assert set(kwargs) == set(model.sequence_inputs) <= set(inspect.signature(model.forward_sequence).parameters)
    if arch == "selmem":
        assert {"reset", "checked", "answer_mask"} <= set(kwargs)
    model.forward_sequence(batch.tokens, 8, **kwargs)


def test_bf16_autocast_trains_and_differs_from_float32(tmp_path):
    """train.autocast='bf16' runs the forward in bfloat16 (CPU autocast here, the GPU one in
    practice): the run trains to finite losses, and they are not float32's to the bit."""
    fp32 = train(smoke(tmp_path, name="fp32", steps=2, eval_every=2))
    bf16 = train(smoke(tmp_path, name="bf16", steps=2, eval_every=2, autocast="bf16"))
    a, b = (metrics(r["run_dir"], "train") for r in (fp32, bf16))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in b)
    assert [r["loss"] for r in a] != [r["loss"] for r in b]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=0.05)


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are given: evaluate's metrics can be worked out by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward_sequence(self, tokens, segment_len):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.logits, stats={})


def test_exact_match_counts_whole_answers():
    """Row 0 gets both answer tokens right, row 1 one of two, row 2 has nothing scored: per-token
    accuracy is 3/4, exact match 1/2 (the unscored row is not a question)."""
    from selmem.tasks.base import Batch
    from selmem.train.loop import evaluate

    targets = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 0, 0]])
    mask = torch.tensor([[False, True, True], [False, True, True], [False, False, False]])
    predicted = torch.tensor([[3, 1, 2], [3, 1, 3], [3, 3, 3]])  # position 0 is never scored
    logits = torch.nn.functional.one_hot(predicted, 4).float()
    batch = Batch(tokens=torch.zeros(3, 3, dtype=torch.long), targets=targets, loss_mask=mask)
    result = evaluate(_Fixed(logits), [batch], 3, torch.device("cpu"))
    assert result["accuracy"] == pytest.approx(3 / 4)
    assert result["exact_match"] == pytest.approx(1 / 2)


def test_evaluate_splits_the_bits_into_distant_recall_and_the_rest():
    """Segments of 4, 12 positions: position 9 completes a repeat whose first occurrence is out of
    the last two segments (distant recall), position 10 one inside them; each slice's bits are its
    own positions' cross-entropy, and the two weighted by their counts give the overall bits."""
    import math

    from selmem.tasks.base import Batch
    from selmem.train.loop import evaluate

    N = 12
    torch.manual_seed(0)
    logits = torch.randn(1, N, 5)
    targets = torch.randint(0, 5, (1, N))
    rep = torch.full((1, N), -1)
    rep[0, 9], rep[0, 10] = 2, 3
    batch = Batch(torch.zeros(1, N, dtype=torch.long), targets, torch.ones(1, N, dtype=torch.bool), repeat_of=rep)
    result = evaluate(_Fixed(logits), [batch], 4, torch.device("cpu"))
    ce = torch.nn.functional.cross_entropy(logits[0], targets[0], reduction="none") / math.log(2)
    assert result["bits_per_token_recall"] == pytest.approx(float(ce[9]))
    assert result["bits_per_token_rest"] == pytest.approx(float(torch.cat([ce[:9], ce[10:]]).mean()))
    assert result["recall_share"] == pytest.approx(1 / N)
    assert result["bits_per_token"] == pytest.approx((result["bits_per_token_recall"] + 11 * result["bits_per_token_rest"]) / N)
    assert result["bits_per_token_by_segment"] == pytest.approx([float(ce[i : i + 4].mean()) for i in (0, 4, 8)])
    assert "recall_share" not in evaluate(_Fixed(logits), [Batch(batch.tokens, targets, batch.loss_mask)], 4,
                                          torch.device("cpu"))


def test_babi_is_judged_by_exact_match():
    """babi's answer bytes after the first are mostly spelling, so its headline is the whole
    answer; the other tasks keep accuracy or bits, and old results without "metric" still read."""
    from selmem.analysis.compare import metric_keys
    from selmem.tasks import TASKS
    from selmem.tasks.base import headline_metric

    assert TASKS["babi"]().metric == "exact_match"
    assert TASKS["mqar"]().metric == "accuracy" and TASKS["code-lm"]().metric == "bits_per_token"
    assert metric_keys([{"metric": "exact_match", "chance": 1 / 6, "test": {}}]) == ["exact_match", "accuracy"]
    assert headline_metric({"chance": None}) == "bits_per_token"
    assert headline_metric({"chance": 0.1}) == "accuracy"
