"""``selmem ablate``: selmem with one part at a time switched to its ablation value.

Each variant changes the model config of the shared experiment (same task, batches, budget and
seeds) in the fields listed in ``ABLATIONS``; the table gives every variant's test metric (mean ±
std over seeds) and its difference to the unchanged model, and ``ablation.png`` draws it.

    selmem ablate --config configs/cpu/mqar.yaml --ablate.seeds 0 1 2
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from selmem.analysis.compare import command_lines, extended, fmt_metric, metric_keys, new_folder, run_all, summarise
from selmem.experiment import ExperimentConfig
from selmem.tasks.base import PERCENT_METRICS

FULL = "selmem"
# variant -> the model fields it changes (DESIGN §2's ablation values, the auxiliary losses at 0,
# and the options of the selection work); the value "d_model" stands for the model's width
ABLATIONS: dict[str, dict[str, Any]] = {
    FULL: {},
    "select: all": {"select": "all"},
    "compress: none": {"compress": "none", "d_mem": "d_model"},  # raw features: slots as wide as the model
    "address: fifo": {"address": "fifo"},
    "address: random": {"address": "random"},
    "cache_transform: none": {"cache_transform": "none"},
    "read: off": {"read": "off"},
    "forgetting: off": {"usage_decay": 1.0, "age_weight": 0.0},
    "lambda_sparse: 0": {"lambda_sparse": 0.0},
    "lambda_rec: 0": {"lambda_rec": 0.0},
    "lambda_nce: 0": {"lambda_nce": 0.0},
    "lambda_credit: 0": {"lambda_credit": 0.0},
}


@dataclass
class AblateConfig:
    """Variants to train, seeds, and where to write the table."""

    variants: list[str] = field(default_factory=lambda: list(ABLATIONS))
    """Variants (keys of selmem.analysis.ablate.ABLATIONS); "selmem" is the unchanged model."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds; each variant is trained once per seed."""
    workers: int = 1
    """Runs trained at once (separate processes); threads are split between them."""
    threads: int = 0
    """Threads per run (0 = the machine's cores split between the workers)."""
    name: str = ""
    """Folder under train.out_dir; empty = ablate-<task>-<timestamp>."""
    extend: bool = False
    """Add to the existing folder ``name`` (more seeds or variants, same base config): finished
    runs are read back, not trained again; the table covers the folder's earlier variants and
    seeds with this call's."""


@dataclass
class AblateArgs:
    """Train selmem with each part switched to its ablation value; write a table and a plot."""

    ablate: AblateConfig = field(default_factory=AblateConfig)
    exp: ExperimentConfig = field(default_factory=ExperimentConfig)
    """The shared experiment: task, training budget, model config (from --config)."""


def slug(variant: str) -> str:
    """Run-folder name of a variant: ``select: all`` -> ``select-all``."""
    return variant.replace(": ", "-").replace("_", "-").replace(" ", "-")


def check(ac: AblateConfig) -> None:
    """Raise ValueError naming an unknown variant or a missing seed."""
    unknown = [v for v in ac.variants if v not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {list(ABLATIONS)}")
    if not ac.seeds:
        raise ValueError("ablate needs at least one seed")


def plan(base: ExperimentConfig, ac: AblateConfig, out_dir: Path) -> list[tuple[str, ExperimentConfig]]:
    """(variant, experiment) for every variant and seed, selmem throughout."""
    check(ac)
    base = replace(base, arch="selmem").resolved()
    variants = list(dict.fromkeys([FULL, *ac.variants]))  # the reference is always trained
    out = []
    for v in variants:
        changes = {k: base.model.d_model if x == "d_model" else x for k, x in ABLATIONS[v].items()}
        model = replace(base.model, **changes)
        for seed in ac.seeds:
            train = replace(base.train, seed=seed, name=f"{slug(v)}-s{seed}", out_dir=str(out_dir),
                            resume=False, progress=False)
            out.append((v, replace(base, model=model, train=train).validate()))
    return out


def differences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``delta`` (its metric minus the unchanged model's; for bits, lower is better,
    so the sign still reads "worse when negative") and ``delta_se`` (the standard error of that
    difference from the two rows' spread over seeds)."""
    key = metric_keys(rows)[0]
    std_key = "bits_std" if key == "bits_per_token" else f"{key}_std"
    sign = -1.0 if key == "bits_per_token" else 1.0
    ref = next(r for r in rows if r["model"] == FULL)
    out = []
    for r in rows:
        se = math.sqrt(r[std_key] ** 2 / r["seeds"] + ref[std_key] ** 2 / ref["seeds"])
        out.append({**r, "delta": sign * (r[key] - ref[key]), "delta_se": se})
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keys = metric_keys(rows)
    head = " | ".join(f"test {k.replace('_per_token', '/token').replace('_', ' ')}" for k in keys)
    pct = keys[0] in PERCENT_METRICS
    lines = [f"| variant | changes | {head} | Δ vs selmem | state floats | params |",
             "|---|---|" + "---|" * len(keys) + "---|---|---|"]
    for r in rows:
        changes = ", ".join(f"{k}={v}" for k, v in ABLATIONS[r["model"]].items()) or "(none)"
        delta = "" if r["model"] == FULL else (
            f"{r['delta']:+.1%} ± {r['delta_se']:.1%}" if pct else f"{r['delta']:+.3f} ± {r['delta_se']:.3f}")
        lines.append(f"| {r['model']} | {changes} | " + " | ".join(fmt_metric(r, k) for k in keys)
                     + f" | {delta} | {r['state_floats']:,} | {r['params']:,} |")
    note = "chance = {:.1%}; ".format(rows[0]["chance"]) if rows[0]["chance"] is not None else ""
    lines.append(f"\n{note}mean ± std over {rows[0]['seeds']} seed(s); Δ = variant − selmem "
                 f"({'higher' if pct else 'lower bits'} is better; negative = the part helps), ± its standard error.")
    return "\n".join(lines)


def plot(out_dir: Path, rows: list[dict[str, Any]], task: str) -> Path:
    """``ablation.png``: each variant's test metric with its spread over seeds."""
    from selmem.analysis.plots import pyplot

    plt = pyplot()
    key = metric_keys(rows)[0]
    std_key = "bits_std" if key == "bits_per_token" else f"{key}_std"
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1.2))
    names = [r["model"] for r in rows][::-1]
    ax.barh(names, [r[key] for r in rows][::-1], xerr=[r[std_key] for r in rows][::-1],
            color=["tab:blue" if n == FULL else "tab:grey" for n in names], capsize=3)
    if rows[0]["chance"] is not None:
        ax.axvline(rows[0]["chance"], color="k", ls=":", label="chance")
        ax.legend(fontsize=8)
    ax.set(xlabel=f"test {key.replace('_', ' ')}", title=f"ablations on {task}")
    fig.tight_layout()
    path = out_dir / "ablation.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out_dir: Path, results: list[dict[str, Any]], base: ExperimentConfig) -> str:
    rows = differences(summarise(results))
    table = markdown_table(rows)
    (out_dir / "results.json").write_text(json.dumps({"kind": "ablate", "rows": rows, "runs": results}, indent=1))
    (out_dir / "results.md").write_text(
        f"# ablations on {base.task.name}\n\n{command_lines(out_dir)}\n\n{table}\n")
    try:
        plot(out_dir, rows, base.task.name)
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'selmem[plot]')", file=sys.stderr)
    return table


def ablate(base: ExperimentConfig, ac: AblateConfig) -> tuple[Path, str]:
    """Train every (variant, seed) of ``ac`` on ``base``'s task and budget; write the report."""
    check(ac)  # bad variants fail before any folder exists
    out_dir = new_folder(base, ac.name, "ablate", ac.extend)
    ac = extended(out_dir, ac, "ablate.json", ("variants", "seeds"))
    planned = plan(base, ac, out_dir)
    base.resolved().to_yaml(out_dir / "base_config.yaml")
    (out_dir / "ablate.json").write_text(json.dumps(asdict(ac), indent=1))
    results = run_all([e for _, e in planned], ac.workers, out_dir, ac.threads)
    for (variant, _), r in zip(planned, results, strict=True):
        r["label"] = variant
    return out_dir, write_report(out_dir, results, base)
