"""``selmem compare``: several models, one task, the same budget, side by side.

Every model is trained by the same loop on the same batches (the task's train stream) for the
same number of steps or seconds, over one or more seeds, then evaluated on the same fixed test
set. With ``match_state`` each baseline's memory knob (txl's cached tokens, rmt's memory tokens,
armt's key width) is set so that it carries as close as possible to selmem's floats of state.

The run folder holds every model's own run folder plus results.{md,csv,json} and the plots.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from selmem.baselines import state_size
from selmem.config import SelmemConfig
from selmem.experiment import ExperimentConfig

# which config field sizes each model's carried state (None: not adjustable)
STATE_KNOB = {"selmem": None, "local": None, "full": None, "lstm": None,
              "txl": "slots", "rmt": "slots", "armt": "d_mem",
              "txl-xtransformers": "slots", "rmt-lucidrains": "slots"}


@dataclass
class CompareConfig:
    """Models to compare, seeds, and where to write the comparison."""

    models: list[str] = field(default_factory=lambda: ["selmem", "local", "txl", "rmt", "armt", "full"])
    """Registered model names (selmem and baselines)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds; each model is trained once per seed."""
    match_state: bool = True
    """Resize txl/rmt/armt memory to carry about as many floats as selmem."""
    workers: int = 2
    """Runs trained at once (separate processes); threads are split between them."""
    name: str = ""
    """Comparison folder under train.out_dir; empty = compare-<task>-<timestamp>."""
    slots: list[int] = field(default_factory=list)
    """State-size sweep: train selmem once per slot count here (txl/rmt/armt matched to each
    size; models whose state does not depend on it are trained once). Empty = the config's slots."""


@dataclass
class CompareArgs:
    """Train several models on one task with one budget; write a table and plots."""

    compare: CompareConfig = field(default_factory=CompareConfig)
    exp: ExperimentConfig = field(default_factory=ExperimentConfig)
    """The shared experiment: task, training budget, model config (from --config)."""


def matched_config(name: str, cfg: SelmemConfig, target: int) -> SelmemConfig:
    """``cfg`` with model ``name``'s state knob set so its state is closest to ``target`` floats."""
    knob = STATE_KNOB.get(name)
    if knob is None or target <= 0:
        return cfg
    values = range(1, 513) if knob == "slots" else range(6, min(cfg.d_model, 512) + 1, 2)
    best, best_gap = cfg, math.inf
    for v in values:
        candidate = replace(cfg, **{knob: v})
        try:
            gap = abs(state_size(name, candidate) - target)
        except ValueError:  # e.g. an armt key width its feature map cannot take
            continue
        if gap < best_gap:
            best, best_gap = candidate, gap
    return best


def plan(base: ExperimentConfig, cc: CompareConfig, out_dir: Path) -> list[ExperimentConfig]:
    """One experiment per (model, seed), or per (model, size, seed) with a ``slots`` sweep, all
    writing under ``out_dir``. Run folders are ``<model>-s<seed>``, ``<model>-m<slots>-s<seed>``
    in a sweep."""
    base = base.resolved()
    bad = [m for m in cc.slots if m < 1]
    if bad:
        raise ValueError(f"--compare.slots must be >= 1, got {bad}")
    sweep = list(dict.fromkeys(cc.slots)) or [base.model.slots]
    exps = []
    for name in cc.models:
        sized = name == "selmem" or STATE_KNOB.get(name) is not None  # state follows the sweep
        for m in sweep if sized else sweep[:1]:
            size_cfg = replace(base.model, slots=m) if sized else base.model
            target = state_size("selmem", size_cfg)
            model = matched_config(name, size_cfg, target) if cc.match_state else size_cfg
            tag = f"-m{m}" if sized and len(sweep) > 1 else ""
            for seed in cc.seeds:
                train = replace(base.train, seed=seed, name=f"{name}{tag}-s{seed}", out_dir=str(out_dir),
                                resume=False, progress=False)
                exps.append(replace(base, arch=name, model=model, train=train))
    return exps


def _train_one(exp_dict: dict[str, Any], threads: int) -> dict[str, Any]:
    """Worker: train one experiment (a dict, so it pickles plainly) and return its results."""
    import torch

    from selmem.train.loop import train

    torch.set_num_threads(threads)
    exp = ExperimentConfig.from_dict(exp_dict)
    t0 = time.time()
    res = train(exp)
    print(f"  {exp.train.name:<12}: test accuracy {res['test']['accuracy']:.3f} "
          f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return res


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model and state size: mean and std over seeds of the test metrics, and the run
    facts."""
    rows = []
    for arch, floats in dict.fromkeys((r["arch"], r["state_floats"]) for r in results):
        runs = [r for r in results if r["arch"] == arch and r["state_floats"] == floats]
        acc = [r["test"]["accuracy"] for r in runs]
        bits = [r["test"]["bits_per_token"] for r in runs]
        rows.append({
            "model": arch, "seeds": len(runs),
            "accuracy": statistics.mean(acc), "accuracy_std": statistics.pstdev(acc),
            "bits_per_token": statistics.mean(bits), "bits_std": statistics.pstdev(bits),
            "params": runs[0]["params"], "state_floats": runs[0]["state_floats"],
            "steps": statistics.mean(r["steps"] for r in runs),
            "train_tokens_per_s": statistics.mean(r["train_tokens_per_s"] for r in runs),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in runs),
            "wall_s": statistics.mean(r["wall_s"] for r in runs), "chance": runs[0]["chance"],
        })
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lm = rows and rows[0]["chance"] is None
    metric = "test bits/token" if lm else "test accuracy"
    lines = [f"| model | {metric} | params | state floats | steps | train tok/s | peak MB | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = (f"{r['bits_per_token']:.3f} ± {r['bits_std']:.3f}" if lm
             else f"{r['accuracy']:.1%} ± {r['accuracy_std']:.1%}")
        lines.append(f"| {r['model']} | {m} | {r['params']:,} | {r['state_floats']:,} | {r['steps']:.0f} | "
                     f"{r['train_tokens_per_s']:,.0f} | {r['peak_mem_mb']:.0f} | {r['wall_s']:.0f} |")
    if not lm and rows:
        lines.append(f"\nchance = {rows[0]['chance']:.1%}; mean ± std over {rows[0]['seeds']} seed(s).")
    return "\n".join(lines)


def write_report(out_dir: Path, results: list[dict[str, Any]], base: ExperimentConfig) -> str:
    rows = summarise(results)
    table = markdown_table(rows)
    (out_dir / "results.json").write_text(json.dumps({"rows": rows, "runs": results}, indent=1))
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "results.md").write_text(
        f"# {base.task.name}: {', '.join(r['model'] for r in rows)}\n\n"
        f"Command: `{' '.join(['selmem', *sys.argv[1:]])}`\n\n{table}\n")
    try:
        from selmem.analysis.plots import plot_compare

        plot_compare(out_dir, results)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'selmem[plot]')", file=sys.stderr)
    return table


def compare(base: ExperimentConfig, cc: CompareConfig) -> tuple[Path, str]:
    """Train every (model, seed) of ``cc`` on ``base``'s task and budget; write the report."""
    unknown = [m for m in cc.models if m not in STATE_KNOB]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(STATE_KNOB)}")
    if not cc.seeds:
        raise ValueError("compare needs at least one seed")
    out_dir = Path(base.train.out_dir) / (cc.name or f"compare-{base.task.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists; pick another --compare.name")
    out_dir.mkdir(parents=True)
    exps = plan(base, cc, out_dir)
    base.resolved().to_yaml(out_dir / "base_config.yaml")
    (out_dir / "compare.json").write_text(json.dumps(asdict(cc), indent=1))
    workers = max(1, min(cc.workers, len(exps)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    print(f"training {len(exps)} runs, {workers} at a time, {threads} thread(s) each -> {out_dir}",
          file=sys.stderr, flush=True)
    if workers == 1:
        results = [_train_one(e.to_dict(), threads) for e in exps]
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_train_one, [e.to_dict() for e in exps], [threads] * len(exps)))
    return out_dir, write_report(out_dir, results, base)
