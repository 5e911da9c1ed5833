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

from selmem.baselines import ARCHS, STATE_KNOB, state_size
from selmem.config import SelmemConfig
from selmem.experiment import ExperimentConfig
from selmem.files import read_json
from selmem.tasks.base import PERCENT_METRICS, headline_metric

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
    threads: int = 0
    """Threads per run (0 = the machine's cores split between the workers)."""
    name: str = ""
    """Comparison folder under train.out_dir; empty = compare-<task>-<timestamp>."""
    slots: list[int] = field(default_factory=list)
    """State-size sweep: train selmem once per slot count here (txl/rmt/armt matched to each
    size; models whose state does not depend on it are trained once). Empty = the config's slots."""
    extend: bool = False
    """Add to the existing folder ``name`` (more seeds or models, same base config): a run whose
    folder already holds results.json for the same experiment is read back, not trained again,
    and the report covers the folder's earlier models and seeds with this call's."""


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


def finished(exp: ExperimentConfig) -> dict[str, Any] | None:
    """The results of ``exp``'s run folder when it finished this very experiment (its config.yaml,
    read with today's defaults for fields added since, equals ``exp``), else None."""
    run_dir = Path(exp.train.out_dir) / exp.train.name
    if not (run_dir / "results.json").is_file() or not (run_dir / "config.yaml").is_file():
        return None
    if ExperimentConfig.from_yaml(run_dir / "config.yaml").to_dict() != exp.resolved().to_dict():
        raise ValueError(f"{run_dir} holds a different experiment than the one planned (compare its "
                         f"config.yaml); extend a folder only with its own base config")
    return read_json(run_dir / "results.json")


def _train_one(exp_dict: dict[str, Any], threads: int) -> dict[str, Any]:
    """Worker: train one experiment (a dict, so it pickles plainly) and return its results; a run
    that ``finished`` already is read back."""
    import torch

    from selmem.train.loop import train

    exp = ExperimentConfig.from_dict(exp_dict)
    done = finished(exp)
    if done is not None:
        print(f"  {exp.train.name:<12}: finished already, read back", file=sys.stderr, flush=True)
        return done
    torch.set_num_threads(threads)
    t0 = time.time()
    res = train(exp)
    metric = headline_metric(res)
    print(f"  {exp.train.name:<12}: test {metric} {res['test'][metric]:.3f} "
          f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return res


# test metrics a table can show, with their labels; a row carries those its task reports
METRICS = {"accuracy": "test accuracy", "exact_match": "test exact match", "bits_per_token": "test bits/token",
           "mae": "test MAE", "r2": "test R²", "bits_per_token_recall": "bits/token on distant recall",
           "bits_per_token_rest": "bits/token on the rest"}
# language modelling's slices (train/loop.py ``distant_recall``): where a task reports them
SLICES = ("bits_per_token_recall", "bits_per_token_rest")


def metric_keys(rows_or_runs: list[dict[str, Any]]) -> list[str]:
    """The metrics a table shows: the task's headline metric first (accuracy for classification,
    whole-answer exact match for babi, bits per token for language modelling), then per-token
    accuracy beside an exact match, MAE and R² where the task predicts a number (molecules), and
    the bits on distant recall positions and on the rest where a language model reports them."""
    first = rows_or_runs[0]
    test = first.get("test", first)
    keys = [headline_metric(first)]
    keys += ["accuracy"] if keys[0] == "exact_match" else []
    return keys + [k for k in ("mae", "r2", *SLICES) if k in test]


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model (its ``label`` where a run has one, else its arch) and state size: mean
    and std over seeds of the test metrics, and the run facts."""
    rows = []
    label = [r.get("label", r["arch"]) for r in results]
    for name, floats in dict.fromkeys(zip(label, (r["state_floats"] for r in results), strict=True)):
        runs = [r for r, n in zip(results, label, strict=True) if n == name and r["state_floats"] == floats]
        row: dict[str, Any] = {"model": name, "seeds": len(runs), "metric": headline_metric(runs[0])}
        # results written before a metric existed lack it (a folder extended later mixes both)
        optional = [k for k in ("exact_match", "mae", "r2", *SLICES) if all(k in r["test"] for r in runs)]
        for key in ["accuracy", "bits_per_token"] + optional:
            values = [r["test"][key] for r in runs]
            std_key = "bits_std" if key == "bits_per_token" else f"{key}_std"
            row.update({key: statistics.mean(values), std_key: statistics.pstdev(values)})
        row.update({
            "params": runs[0]["params"], "state_floats": runs[0]["state_floats"],
            "steps": statistics.mean(r["steps"] for r in runs),
            "train_tokens_per_s": statistics.mean(r["train_tokens_per_s"] for r in runs),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in runs),
            "wall_s": statistics.mean(r["wall_s"] for r in runs), "chance": runs[0]["chance"],
        })
        rows.append(row)
    return rows


def fmt_metric(row: dict[str, Any], key: str) -> str:
    """``mean ± std`` of a row's metric, as a percentage for accuracy and exact match."""
    std = row["bits_std" if key == "bits_per_token" else f"{key}_std"]
    if key in PERCENT_METRICS:
        return f"{row[key]:.1%} ± {std:.1%}"
    return f"{row[key]:.3f} ± {std:.3f}" if key != "mae" else f"{row[key]:.2f} ± {std:.2f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keys = metric_keys(rows) if rows else ["accuracy"]
    head = " | ".join(METRICS[k] for k in keys)
    lines = [f"| model | {head} | params | state floats | steps | train tok/s | peak MB | wall s |",
             "|---|" + "---|" * len(keys) + "---|---|---|---|---|---|"]
    for r in rows:
        m = " | ".join(fmt_metric(r, k) for k in keys)
        lines.append(f"| {r['model']} | {m} | {r['params']:,} | {r['state_floats']:,} | {r['steps']:.0f} | "
                     f"{r['train_tokens_per_s']:,.0f} | {r['peak_mem_mb']:.0f} | {r['wall_s']:.0f} |")
    if rows and rows[0]["chance"] is not None:
        lines.append(f"\nchance = {rows[0]['chance']:.1%}; mean ± std over {rows[0]['seeds']} seed(s).")
    elif rows:
        lines.append(f"\nmean ± std over {rows[0]['seeds']} seed(s); lower bits are better.")
    return "\n".join(lines)


def write_report(out_dir: Path, results: list[dict[str, Any]], base: ExperimentConfig) -> str:
    rows = summarise(results)
    table = markdown_table(rows)
    (out_dir / "results.json").write_text(json.dumps({"rows": rows, "runs": results}, indent=1))
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "results.md").write_text(
        f"# {base.task.name}: {', '.join(r['model'] for r in rows)}\n\n"
        f"{command_lines(out_dir)}\n\n{table}\n")
    try:
        from selmem.analysis.plots import plot_compare

        plot_compare(out_dir, results)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'selmem[plot]')", file=sys.stderr)
    return table


def run_all(exps: list[ExperimentConfig], workers: int, out_dir: Path, threads: int = 0) -> list[dict[str, Any]]:
    """Train every experiment, ``workers`` at a time in separate processes with ``threads`` each
    (0 = the cores split between them); results in the order of ``exps``."""
    workers = max(1, min(workers, len(exps)))
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    print(f"training {len(exps)} runs, {workers} at a time, {threads} thread(s) each -> {out_dir}",
          file=sys.stderr, flush=True)
    if workers == 1:
        return [_train_one(e.to_dict(), threads) for e in exps]
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_train_one, [e.to_dict() for e in exps], [threads] * len(exps)))


def new_folder(base: ExperimentConfig, name: str, kind: str, extend: bool = False) -> Path:
    """``train.out_dir/name`` (default ``<kind>-<task>-<timestamp>``), created empty; an existing
    non-empty folder is never overwritten. ``extend``: the existing folder ``name``, when it was
    made from the same base config (its finished runs are then read back, see ``finished``)."""
    out_dir = Path(base.train.out_dir) / (name or f"{kind}-{base.task.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if extend:
        old = out_dir / "base_config.yaml"
        if not name or not old.is_file():
            raise FileNotFoundError(f"--{kind}.extend needs an existing --{kind}.name folder; {old} is missing")
        if ExperimentConfig.from_yaml(old).to_dict() != base.resolved().to_dict():
            raise ValueError(f"{old} differs from this command's base config: extend a folder with "
                             f"the options it was made with")
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists; pick another --{kind}.name (or --{kind}.extend to add runs)")
    out_dir.mkdir(parents=True)
    return out_dir


def extended(out_dir: Path, cfg: Any, plan_file: str, lists: tuple[str, ...], same: tuple[str, ...] = ()) -> Any:
    """``cfg`` with each field of ``lists`` joined to the folder's earlier plan (``plan_file``,
    written by the calls before), so that an extended folder's report covers every run it holds,
    not only the runs this call asked for; a field of ``same`` must equal the earlier plan's.
    Without ``cfg.extend`` or an earlier plan: ``cfg``."""
    old_file = out_dir / plan_file
    if not cfg.extend or not old_file.is_file():
        return cfg
    old, kind = json.loads(old_file.read_text()), plan_file.split(".")[0]
    for k in same:
        if getattr(cfg, k) != old.get(k, getattr(cfg, k)):
            raise ValueError(f"--{kind}.extend keeps the folder's --{kind}.{k} sweep {old[k]}; give the same")
    return replace(cfg, **{k: list(dict.fromkeys([*old.get(k, []), *getattr(cfg, k)])) for k in lists})


def commands(out_dir: Path) -> list[str]:
    """Every command that wrote into ``out_dir``, this one last (kept in ``commands.txt``)."""
    path = out_dir / "commands.txt"
    done = path.read_text().splitlines() if path.is_file() else []
    this = " ".join(["selmem", *sys.argv[1:]])
    if not done or done[-1] != this:
        path.write_text("\n".join([*done, this]) + "\n")
        done.append(this)
    return done


def command_lines(out_dir: Path) -> str:
    """The report's line(s) naming the command(s) that made the folder."""
    done = commands(out_dir)
    if len(done) == 1:
        return f"Command: `{done[0]}`"
    return "Commands (the folder was extended):\n\n" + "\n".join(f"- `{c}`" for c in done)


def compare(base: ExperimentConfig, cc: CompareConfig) -> tuple[Path, str]:
    """Train every (model, seed) of ``cc`` on ``base``'s task and budget; write the report."""
    unknown = [m for m in cc.models if m not in ARCHS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(ARCHS)}")
    if not cc.seeds:
        raise ValueError("compare needs at least one seed")
    out_dir = new_folder(base, cc.name, "compare", cc.extend)
    cc = extended(out_dir, cc, "compare.json", ("models", "seeds"), same=("slots",))
    exps = plan(base, cc, out_dir)
    base.resolved().to_yaml(out_dir / "base_config.yaml")
    (out_dir / "compare.json").write_text(json.dumps(asdict(cc), indent=1))
    results = run_all(exps, cc.workers, out_dir, cc.threads)
    return out_dir, write_report(out_dir, results, base)
