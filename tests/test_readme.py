"""The README's usage block runs as written (x-transformers' test_readme), and its Quickstart
commands are the ones CI and the demo use."""

from __future__ import annotations

import re
from pathlib import Path

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
