"""selmem bench: a row per model with positive throughputs, its state and peak memory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from selmem.analysis.bench import BenchConfig, bench
from selmem.baselines import state_size
from selmem.cli import main
from selmem.experiment import ExperimentConfig

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def test_bench_times_every_model_and_writes_the_table(tmp_path):
    exp = ExperimentConfig.from_yaml(SMOKE)
    exp = replace(exp, train=replace(exp.train, threads=1))
    out = tmp_path / "bench.md"
    rows, table = bench(exp, BenchConfig(models=["selmem", "full"], batch_size=2, warmup=0, repeats=1,
                                         out=str(out)))
    assert [r["model"] for r in rows] == ["selmem", "full"]
    for r in rows:
        assert r["train_tokens_per_s"] > 0 and r["infer_tokens_per_s"] > 0 and r["peak_mem_mb"] > 0
        assert r["seq_len"] == exp.task.seq_len and r["batch_size"] == 2
    assert rows[0]["state_floats"] == state_size("selmem", exp.resolved().model)
    assert rows[1]["state_floats"] > rows[0]["state_floats"]  # full's cache at this length
    assert out.read_text().strip() == table and table.startswith("| model | params | state floats |")


@pytest.mark.parametrize("args, message", [
    (["--bench.models", "selmem", "gpt"], "unknown model(s) ['gpt']"),
    (["--bench.repeats", "0"], "--bench.repeats must be >= 1"),
])
def test_bad_bench_arguments_are_named(args, message, capsys):
    assert main(["bench", "--config", str(SMOKE), *args]) == 2
    assert message in capsys.readouterr().err
