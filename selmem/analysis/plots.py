"""Plots of run folders. matplotlib is an optional extra, imported here only."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from selmem.tasks.base import headline_metric
from selmem.train.run import read_metrics


def pyplot():
    """matplotlib.pyplot on the Agg backend (files, no window); ImportError without the plot extra."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_compare(out_dir: Path, results: list[dict[str, Any]]) -> list[Path]:
    """``curves.png``: test metric vs step per model and state size (seeds averaged at shared
    steps); ``state.png``: final test metric vs carried state floats, a line per model."""
    plt = pyplot()
    key = headline_metric(results[0])
    lm = key == "bits_per_token"
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    sizes_of: dict[str, set[int]] = defaultdict(set)
    for r in results:
        sizes_of[r.get("label", r["arch"])].add(r["state_floats"])
    for r in results:  # a model swept over several sizes gets a curve per size
        name = r.get("label", r["arch"])
        label = name if len(sizes_of[name]) == 1 else f"{name} ({r['state_floats']:,} floats)"
        points = r.get("curve") or [[rec["step"], rec[key]] for rec in read_metrics(r["run_dir"])
                                    if rec.get("split") == "test"]
        for step, value in points:
            curves[label][step].append(value)
    fig, ax = plt.subplots(figsize=(6, 4))
    for arch, by_step in curves.items():
        steps = sorted(by_step)
        ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], marker="o", ms=3, label=arch)
    if not lm:
        ax.axhline(results[0]["chance"], color="grey", ls=":", label="chance")
    ax.set(xlabel="training step", ylabel=f"test {key.replace('_', ' ')}", title=results[0]["task"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [out_dir / "curves.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    final: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in results:
        final[r.get("label", r["arch"])].append((r["state_floats"], r["test"][key]))
    for arch, pts in final.items():
        by_size: dict[int, list[float]] = defaultdict(list)
        for size, v in pts:
            by_size[size].append(v)
        sizes = sorted(by_size)
        ax.plot(sizes, [sum(by_size[s]) / len(by_size[s]) for s in sizes], marker="o", label=arch)
    ax.set(xscale="symlog", xlabel="carried state (floats per sequence)", ylabel=f"test {key.replace('_', ' ')}",
           title="metric vs. state size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "state.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    if all("bits_per_token_by_segment" in r["test"] for r in results):
        paths.append(plot_position(out_dir, results))
    return paths


def plot_position(out_dir: Path, results: list[dict[str, Any]]) -> Path:
    """``position.png``: test bits per token in each segment of the evaluated rows (language
    modelling: ``bits_per_token_by_segment``), a line per model, seeds averaged."""
    plt = pyplot()
    per: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        for i, bits in enumerate(r["test"]["bits_per_token_by_segment"]):
            if bits is not None:
                per[r.get("label", r["arch"])][i].append(bits)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_seg in per.items():
        segs = sorted(by_seg)
        ax.plot(segs, [sum(by_seg[i]) / len(by_seg[i]) for i in segs], marker="o", ms=3, label=name)
    ax.set(xlabel="segment of the row", ylabel="test bits per token", title=f"{results[0]['task']}: bits by position")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "position.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
