"""The README's usage block runs as written (x-transformers' test_readme), and its Quickstart
commands are the ones CI and the demo use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_block_runs_and_streaming_matches_whole_sequence():
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README has no python usage block"
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)  # noqa: S102
    out, model = scope["out"], scope["model"]
    assert out.logits.shape == (2, 64, 256)
    assert torch.isfinite(scope["logits"]).all()
    # the block's claim "same numbers": streaming segments == forward_sequence on one input
    model.eval()
    tokens = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model.forward_sequence(tokens, segment_len=64).logits
        state, parts = model.init_state(2), []
        for seg in tokens.split(64, dim=1):
            o = model(seg, state)
            state = o.state
            parts.append(o.logits)
    torch.testing.assert_close(torch.cat(parts, 1), whole)


def test_quickstart_is_two_commands_that_exist():
    text = README.read_text()
    quick = re.search(r"## Quickstart\n\n```bash\n(.*?)```", text, re.S)
    assert quick is not None
    commands = [line.split("#")[0].strip() for line in quick.group(1).strip().splitlines()]
    assert commands == ["./dev demo", "./dev test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "./dev test" in ci
    assert (README.parent / "configs" / "recall.yaml").is_file()


def _block(marker: str) -> str:
    """The README python block that contains ``marker``."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if marker in b]
    assert len(blocks) == 1, f"README should have exactly one python block with {marker!r}"
    return blocks[0]


def test_readme_memory_in_gpt2_block_runs_and_the_memory_is_read():
    pytest.importorskip("transformers")
    scope: dict = {}
    exec(compile(_block("GPT2LMHeadModel"), "README.md", "exec"), scope)  # noqa: S102
    gpt, memory, run = scope["gpt"], scope["memory"], scope["run"]
    assert scope["logits"].shape == (2, 64, 256)
    assert run["state"].position.tolist() == [256, 256]  # four segments went through both layers
    assert run[0]["gate"].shape == (2, 64)
    gpt.eval()
    x = torch.randint(0, 256, (2, 64))
    fresh = memory.init_state(2)

    def logits_with(state):
        run["state"], run["hints"] = state, memory.hints(state)
        with torch.no_grad():
            return gpt(x).logits

    # the read starts at zero: with hooks on, GPT-2 is unchanged, whatever the memory holds
    with_memory = logits_with(run["state"].detach())
    for h in scope["hooks"]:
        h.remove()
    with torch.no_grad():
        plain = gpt(x).logits
    assert torch.equal(with_memory, plain)
    # once the read is nonzero, what the memory holds changes GPT-2's predictions
    hooks = [b.register_forward_hook(scope["after"](l)) for l, b in enumerate(gpt.transformer.h)]
    for m in memory:
        torch.nn.init.normal_(m.cross.out.weight, std=0.1)
    written = run["state"].detach()
    assert not torch.allclose(logits_with(written), logits_with(fresh))
    for h in hooks:
        h.remove()


def test_readme_hugging_face_block_round_trips(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # the block saves to runs/hf-demo
    scope: dict = {}
    exec(compile(_block("save_pretrained"), "README.md", "exec"), scope)  # noqa: S102
    assert (tmp_path / "runs" / "hf-demo" / "model.safetensors").is_file()
    out, lm, prompt = scope["out"], scope["lm"], scope["prompt"]
    assert out.shape == (1, 150) and torch.equal(out[:, :100], prompt)
    with torch.no_grad():  # greedy: each new token is the argmax of the model on all before it
        logits = lm(out[:, :-1]).logits
    assert torch.equal(logits[:, 99:].argmax(-1), out[:, 100:])
