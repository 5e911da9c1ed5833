"""selmem inspect: every picture is a PNG, the page is self-contained, errors are clear."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from selmem.analysis.inspect import find_run, inspect_run
from selmem.cli import main
from selmem.config import SelmemConfig, TrainConfig
from selmem.experiment import ExperimentConfig
from selmem.tasks import MQARTask
from selmem.train.loop import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KINDS = ("strip", "write", "age", "read")


def _train(out: Path, arch: str = "selmem") -> Path:
    exp = ExperimentConfig(
        arch=arch,
        model=SelmemConfig(d_model=32, n_layers=2, slots=4, d_mem=16, max_segment_len=8),
        task=MQARTask(num_pairs=2, num_keys=4, num_values=4, segment_len=8, num_segments=2,
                      noise_vocab=2),
        train=TrainConfig(steps=4, batch_size=4, eval_every=2, eval_batches=1, out_dir=str(out),
                          name="r", progress=False),
    )
    return Path(train(exp)["run_dir"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("runs"))


def _check_page(page: Path) -> str:
    """Every src=/href= that is not a data: URI names a file next to the page; no network."""
    text = page.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert refs, "the page references no pictures"
    for ref in refs:
        if not ref.startswith("data:"):
            assert (page.parent / ref).is_file(), f"index.html references missing file {ref}"
    assert "http://" not in text and "https://" not in text
    return text


def test_inspect_writes_every_picture_and_one_page(run_dir: Path) -> None:
    page = inspect_run(run_dir, examples=2)
    out = run_dir / "inspect"
    assert page == out / "index.html"
    pngs = ["metrics.png"] + [f"{k}_L{l}.png" for l in range(2) for k in KINDS]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, f"{name} is not a PNG"
    text = _check_page(page)
    assert text.count('src="data:image/png;base64,') == len(pngs)  # all embedded: self-contained
    assert '<table class="metrics">' in text
    for name in ("write_rate", "slot_entropy", "precision", "recall", "read_hit_rate"):
        assert f"<td>{name}</td>" in text


def test_cli_inspect_on_a_checkpoint_folder(run_dir: Path, tmp_path: Path) -> None:
    ckpt = str(run_dir / "ckpt" / "last")
    assert main(["inspect", ckpt, "--examples", "1", "--out", str(tmp_path)]) == 0
    text = _check_page(tmp_path / "index.html")
    assert "checkpoint <b>last</b>" in text  # the checkpoint the path named, not best
    assert (tmp_path / "read_L1.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("how", ["missing", "damaged"])
def test_a_missing_or_damaged_best_falls_back_and_the_page_names_the_checkpoint_shown(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str) -> None:
    """inspect refused a run without ckpt/best although ckpt/last was good, and after falling back
    from a damaged best its page still said 'checkpoint best' (issue 28)."""
    run = tmp_path / "r"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("inspect"))
    best = run / "ckpt" / "best"
    if how == "missing":
        shutil.rmtree(best)
    else:
        weights = best / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    text = _check_page(inspect_run(run, examples=1, out=tmp_path / "out"))
    assert "checkpoint <b>last</b> (ckpt/best is missing or damaged: the newest good checkpoint instead)" in text
    note = [line for line in capsys.readouterr().err.splitlines() if str(best) in line]
    assert len(note) == 1 and f"using {run / 'ckpt' / 'last'} (step 4) instead" in note[0], note


def test_find_run_accepts_run_and_checkpoint_folders(run_dir: Path) -> None:
    assert find_run(run_dir) == (run_dir, None)
    assert find_run(run_dir / "ckpt" / "best") == (run_dir, "best")


def test_bad_path_gives_a_clear_error(run_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inspect_run(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="neither a run folder"):
        inspect_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint 'nope'"):
        inspect_run(run_dir, ckpt="nope")
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_baseline_has_no_memory_to_inspect(tmp_path: Path) -> None:
    run = _train(tmp_path, arch="local")
    with pytest.raises(ValueError, match="no memory to inspect"):
        inspect_run(run)
    assert (run / "inspect" / "metrics.png").read_bytes()[:8] == PNG_MAGIC  # the curves still are
