"""selmem generate and selmem export on a smoke run: the greedy sample is the model's argmax
chain, and the exported Hugging Face folder gives the run's logits."""

from __future__ import annotations

import re

import pytest
import torch

from selmem.cli import main
from selmem.runs import load_run
from selmem.generate import pick
from tests.test_cli import train_args


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(train_args(out, "run", "--train.steps", "2", "--train.eval-every", "2")) == 0
    return out / "run"


def test_greedy_generate_prints_the_argmax_chain(run, capsys):
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "1 2 3", "--max-new-tokens", "6", "--temperature", "0"]) == 0
    printed = [int(t) for t in capsys.readouterr().out.split()]
    exp, model, _ = load_run(run)
    seq = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        for _ in range(6):  # recompute from the start at every step
            nxt = model.forward_sequence(seq, exp.segment_len()).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert printed == seq[0].tolist()


def test_generate_refuses_an_empty_prompt(run, capsys):
    assert main(["generate", str(run), "--prompt", ""]) == 2
    assert "prompt is empty" in capsys.readouterr().err


def test_export_gives_the_runs_logits(run, tmp_path, capsys):
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    import selmem.hf  # noqa: F401  (registers the Auto classes)

    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    exp, model, task = load_run(run)
    assert model.probe is not None  # the run trained with its credit probe; the export drops it
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = task.batch("test", 0, 2).tokens
    with torch.no_grad():
        assert torch.equal(model.forward_sequence(x, exp.segment_len()).logits, hf(x).logits)
    assert not any(k.startswith("model.probe.") for k in hf.state_dict())


@pytest.mark.parametrize("argv, match", [
    pytest.param(["--temperature", "-1"], r"--temperature must be a finite number >= 0", id="negative-temperature"),
    pytest.param(["--temperature", "nan"], r"--temperature must be a finite number >= 0", id="nan-temperature"),
    pytest.param(["--top-k", "-5"], r"--top-k must be >= 0", id="negative-top-k"),
    pytest.param(["--device", "cuda"], r"--device='cuda' but CUDA is not available", id="no-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_generate_refuses_bad_options_by_flag(run, capsys, argv, match):
    """--temperature -1 and --top-k -5 were accepted silently; --device cuda without CUDA was an
    'internal error (AssertionError ...)' from inside torch."""
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "1 2", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert captured.err.startswith("selmem generate: error: ") and re.search(match, captured.err), captured.err


def files(folder):
    """path -> bytes of every file under ``folder``."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
@pytest.mark.parametrize("dest", ["ckpt/last", "ckpt/best", "ckpt/best/hf", "ckpt", "."],
                         ids=["ckpt-last", "ckpt-best", "inside-ckpt-best", "ckpt", "the-run"])
def test_export_never_writes_into_a_run_folder_or_its_checkpoints(run, capsys, dest, force):
    """`export runs/X runs/X/ckpt/last` replaced the checkpoint's model.safetensors, and
    `export RUN RUN` wrote Hugging Face files into the run's record; --force does not allow it."""
    pytest.importorskip("transformers")
    before = files(run)
    capsys.readouterr()
    assert main(["export", str(run), str(run / dest), *force]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(run / dest) in err and ("run folder" in err or "ckpt" in err), err
    assert files(run) == before


def test_export_refuses_a_folder_that_is_not_empty_unless_forced(run, tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("someone's")
    capsys.readouterr()
    assert main(["export", str(run), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out} already exists and is not empty" in err and "--force" in err, err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["export", str(run), str(out), "--force"]) == 0
    assert {"config.json", "model.safetensors", "notes.txt"} <= {p.name for p in out.iterdir()}
    (tmp_path / "empty").mkdir()
    assert main(["export", str(run), str(tmp_path / "empty")]) == 0  # an empty folder needs no --force


def test_pick():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, -1.0]])
    assert pick(logits, 0.0, 0, None).flatten().tolist() == [1, 0]
    assert pick(logits, 1.0, 1, torch.Generator().manual_seed(0)).flatten().tolist() == [1, 0]  # top-1 = argmax
