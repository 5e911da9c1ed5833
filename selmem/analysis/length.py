"""``selmem length``: a comparison's checkpoints evaluated at longer inputs than they trained on.

Every run of a ``selmem compare`` folder (or the chosen models') is evaluated on its task's test
set with the input stretched to each number of segments: more noise segments between the pairs
and the queries (mqar), a longer haystack (passkey), a longer row (selective-copy, induction).
Segments are streamed one at a time with the state carried, so memory stays constant however long
the input; only the scored positions' logits are kept.

    selmem length runs/cmp-passkey --length.segments 4 8 16 32 64 128 256

The folder gets results.json, results.md (accuracy per model and length, mean ± std over seeds)
and length.png (accuracy against evaluated length).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor

from selmem.experiment import ExperimentConfig
from selmem.tasks.base import Task

# task -> the task stretched to n segments of length seg
STRETCH: dict[str, Callable[[Task, int, int], Task]] = {
    "mqar": lambda t, n, seg: replace(t, num_segments=n),
    "passkey": lambda t, n, seg: replace(t, length=n * seg),
    "selective-copy": lambda t, n, seg: replace(t, seq_len=n * seg),
    "induction": lambda t, n, seg: replace(t, seq_len=n * seg),
    "icr": lambda t, n, seg: replace(t, seq_len=n * seg),  # more pairs over the same keys
    # the same facts (moves: the latest wins) spread through a haystack filling n segments
    "babi": lambda t, n, seg: replace(t, haystack_tokens=max(0, n * seg - (t.seq_len - t.haystack_tokens))),
    # rows of n * seg bytes tiling the held-out files at least that long, from the whole stdlib
    "code-lm": lambda t, n, seg: replace(t, seq_len=n * seg, min_file_bytes=max(t.min_file_bytes, n * seg),
                                         max_bytes=max(t.max_bytes, ALL_STDLIB)),
}
ALL_STDLIB = 1 << 40  # a max_bytes above the standard library's size: every file


@dataclass
class LengthConfig:
    segments: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128, 256])
    """Numbers of segments to evaluate at."""
    models: list[str] = field(default_factory=lambda: ["selmem", "armt", "rmt", "txl"])
    """Models of the comparison to evaluate (runs of other models are skipped), or variants of an
    ablation by their run names less the seed (selmem forgetting-off)."""
    batches: int = 4
    """Test batches per length (of ``batch_size`` rows)."""
    batch_size: int = 0
    """Rows per test batch; 0 = the run's training batch size. Smaller keeps an evaluation at
    thousands of segments to minutes: the time of a length grows with its rows times its segments."""
    ckpt: str = "best"
    """Which checkpoint of each run: best or last (missing or damaged: the run's newest good one,
    named on stderr and in results.md)."""
    model_set: list[str] = field(default_factory=list)
    """Model overrides that change no weight, as key=value (e.g. age_weight=0), for selmem runs."""
    name: str = ""
    """Output folder (default: length-<comparison folder name> next to it)."""


@dataclass
class LengthArgs:
    """Evaluate a comparison's checkpoints at many input lengths; write a table and a plot."""

    folders: tyro.conf.Positional[list[str]]
    """`selmem compare` folders (runs/NAME ...) of one task, their runs pooled; FOLDER:m1,m2 takes
    only those models from that folder (the others follow --length.models)."""
    length: LengthConfig = field(default_factory=LengthConfig)


def stream_accuracy(model: torch.nn.Module, task: Task, segment_len: int, batches: int, batch_size: int) -> float:
    """Answer accuracy on ``batches`` test batches, streaming segment by segment."""
    return stream_eval(model, task, segment_len, batches, batch_size)["accuracy"]


@torch.no_grad()
def stream_eval(model: torch.nn.Module, task: Task, segment_len: int, batches: int,
                batch_size: int) -> dict[str, float]:
    """The test metrics of ``batches`` test batches, streamed one segment at a time with the state
    carried (constant memory at any length; only each segment's scored cross-entropies are kept).

    Always "accuracy" and "bits_per_token" over the scored positions and "exact_match", the rows
    with a scored position whose every scored position is right (whole answers, as ``evaluate``).
    For language modelling (``task.metric`` bits per token) also "bits_first_half" / "bits_second_half": the bits on the rows
    scored to their end (a file at least as long as the row), split at the row's middle, so that
    the two halves are the same files (does the memory keep helping along a file?) and "rows_full"
    their number; with ``repeat_of`` (code-lm) "bits_recall" / "bits_rest", the distant recall
    positions (``train.loop.distant_recall``) and the others. A language-modelling test split
    smaller than ``batches * batch_size`` rows is taken once, not cycled."""
    from selmem.train.loop import distant_recall

    lm = task.metric == "bits_per_token"
    if lm and hasattr(task, "num_test_chunks"):
        total = task.num_test_chunks()
        batches = min(batches, -(-total // batch_size))
    else:
        total = batches * batch_size
    sums: dict[str, list[float]] = {}  # name -> [nats, positions]

    def add(name: str, ce: Tensor, where: Tensor) -> None:
        acc = sums.setdefault(name, [0.0, 0])
        acc[0] += float(ce[where].double().sum())
        acc[1] += int(where.sum())

    right = rows_full = exact = rows = 0
    for i in range(batches):
        batch = task.batch("test", i, min(batch_size, total - i * batch_size))
        N = batch.tokens.shape[1]
        full = batch.loss_mask.all(1, keepdim=True)  # (B, 1) rows scored to their end
        rows_full += int(full.sum())
        recall = distant_recall(batch, segment_len)  # (B, N) or None
        wrong = torch.zeros(batch.tokens.shape[0], dtype=torch.bool)  # (B,) a scored position missed
        state = None
        for start in range(0, N, segment_len):
            part = slice(start, start + segment_len)
            out = model(batch.tokens[:, part], state)
            state = out.state
            mask = batch.loss_mask[:, part]
            if not mask.any():
                continue
            ce = F.cross_entropy(out.logits.float().transpose(1, 2), batch.targets[:, part], reduction="none")
            hit = out.logits.argmax(-1) == batch.targets[:, part]
            right += int((hit & mask).sum())
            wrong |= (~hit & mask).any(1)
            add("all", ce, mask)
            if lm:
                first = torch.arange(start, start + mask.shape[1]) < N // 2  # (T,)
                add("first_half", ce, mask & full & first)
                add("second_half", ce, mask & full & ~first)
            if recall is not None:
                add("recall", ce, recall[:, part])
                add("rest", ce, mask & ~recall[:, part])
        scored = batch.loss_mask.any(1)
        exact, rows = exact + int((scored & ~wrong).sum()), rows + int(scored.sum())
    nats, count = sums["all"]
    out = {"accuracy": right / count, "bits_per_token": nats / count / math.log(2), "exact_match": exact / rows}
    out.update({f"bits_{k}": v[0] / v[1] / math.log(2) for k, v in sums.items() if k != "all" and v[1]})
    if lm:
        out["rows_full"] = rows_full
    return out


def wanted(label: str, arch: str, models: list[str]) -> bool:
    """Is the run ``label`` (its folder name less the seed) of ``arch`` one of ``models``? A name
    is a model (with every size of a sweep: selmem-m16) or an ablation variant (forgetting-off);
    an ablation's variants are all selmem, so "selmem" there means the unchanged model only."""
    return label in models or (arch in models and re.fullmatch(re.escape(arch) + r"-m\d+", label) is not None)


def evaluate_lengths(folder: Path, lc: LengthConfig) -> list[dict[str, Any]]:
    """Every wanted run of ``folder`` at each length. A run's missing or damaged ckpt/<lc.ckpt>
    falls back to its newest good checkpoint (``runs.load_run_checkpoint``), recorded in each
    point's "checkpoint"; a run with no checkpoint at all is skipped, saying so."""
    from selmem.runs import load_run_checkpoint
    from selmem.train.run import has_checkpoint

    runs = sorted(p for p in folder.iterdir() if (p / "config.yaml").is_file() and has_checkpoint(p / "ckpt"))
    if not runs:
        raise FileNotFoundError(f"{folder} has no run folders with a checkpoint")
    out = []
    for run_dir in sorted(p for p in folder.iterdir() if (p / "config.yaml").is_file()):
        exp = ExperimentConfig.from_yaml(run_dir / "config.yaml")
        label = re.sub(r"-s\d+$", "", run_dir.name)  # selmem-s0 -> selmem; select-all-s1 -> select-all
        if not wanted(label, exp.arch, lc.models):
            continue
        if run_dir not in runs:
            print(f"  {run_dir}: no checkpoint, skipped", file=sys.stderr, flush=True)
            continue
        exp, model, task, used = load_run_checkpoint(run_dir, lc.ckpt,
                                                     model_set=lc.model_set if exp.arch == "selmem" else None)
        if task.name not in STRETCH:
            raise ValueError(f"task {task.name} has no length to stretch; length works on {sorted(STRETCH)}")
        seg = exp.segment_len()
        rows = lc.batch_size or exp.train.batch_size
        for n in lc.segments:
            t0 = time.time()
            got = stream_eval(model, STRETCH[task.name](task, n, seg), seg, lc.batches, rows)
            if lc.model_set and exp.arch == "selmem":
                label += f" ({', '.join(lc.model_set)})"
            out.append({"task": task.name, "metric": task.metric, "model": label, "seed": exp.train.seed,
                        "segments": n, **got,
                        "trained_segments": task.seq_len // seg, "chance": task.chance,
                        "checkpoint": str(used), "rows": lc.batches * rows})
            print(f"  {run_dir.name:<12} {n:>4} segments: {task.metric} {got[task.metric]:.3f} ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    return out


def metric(points: list[dict[str, Any]]) -> str:
    """The points' headline figure, their task's ``metric`` (bits per token for language modelling,
    exact match for babi, else accuracy; results written before points named it: accuracy, or
    bits where there is no chance level)."""
    return points[0].get("metric") or ("bits_per_token" if points[0]["chance"] is None else "accuracy")


def summarise(points: list[dict[str, Any]], key: str = "accuracy") -> dict[str, dict[int, tuple[float, float, int]]]:
    """model -> segments -> (mean, std, seeds) of the figure ``key`` (points without it are left out)."""
    table: dict[str, dict[int, tuple[float, float, int]]] = {}
    for model in dict.fromkeys(p["model"] for p in points):
        for n in sorted({p["segments"] for p in points if p["model"] == model and key in p}):
            accs = [p[key] for p in points if p["model"] == model and p["segments"] == n and key in p]
            table.setdefault(model, {})[n] = (statistics.mean(accs), statistics.pstdev(accs), len(accs))
    return table


def markdown_table(points: list[dict[str, Any]]) -> str:
    """A table per figure: accuracy (recall) or, for language modelling, bits per token overall, on
    each half of the fully scored rows, and on the distant recall positions and the rest."""
    lm = metric(points) == "bits_per_token"
    keys = ([("bits_per_token", "bits per token"), ("bits_first_half", "first half of the row"),
             ("bits_second_half", "second half of the row"), ("bits_recall", "distant recall positions"),
             ("bits_rest", "the other positions")] if lm else [(metric(points), "")])
    lengths = sorted({p["segments"] for p in points})
    lines: list[str] = []
    for key, title in keys:
        table = summarise(points, key)
        if not table:
            continue
        if title:
            lines += [""] * bool(lines) + [f"**{title}**", ""]
        lines += ["| model | " + " | ".join(f"{n} seg" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for model, by_n in table.items():
            cells = [(f"{by_n[n][0]:.3f} ± {by_n[n][1]:.3f}" if lm else f"{by_n[n][0]:.1%} ± {by_n[n][1]:.1%}")
                     if n in by_n else "" for n in lengths]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    seeds = max(s for by_n in summarise(points, keys[0][0]).values() for _, _, s in by_n.values())
    if lm:
        full = {n: min(p["rows_full"] for p in points if p["segments"] == n) for n in lengths}
        level = ("lower is better; the halves are the rows scored to their end (files at least as long as "
                 "the row): " + ", ".join(f"{full[n]} at {n}" for n in lengths))
    else:
        level = f"chance = {points[0]['chance']:.1%}"
    lines.append(f"\ntrained at {points[0]['trained_segments']} segments; {level}; mean ± std over {seeds} seed(s).")
    return "\n".join(lines)


def plot(out_dir: Path, points: list[dict[str, Any]], task: str) -> Path:
    from selmem.analysis.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    key = metric(points)
    for model, by_n in summarise(points, key).items():
        ns = sorted(by_n)
        ax.errorbar(ns, [by_n[n][0] for n in ns], yerr=[by_n[n][1] for n in ns], marker="o", ms=4,
                    capsize=3, label=model)
    ax.axvline(points[0]["trained_segments"], color="grey", ls="--", lw=1, label="trained length")
    if points[0]["chance"] is not None:
        ax.axhline(points[0]["chance"], color="grey", ls=":", label="chance")
    ax.set(xscale="log", xlabel="evaluated length (segments)",
           ylabel={"exact_match": "test exact match", "bits_per_token": "test bits per token (lower is better)"}.get(
               key, "test accuracy"),
           title=f"length generalisation on {task}")
    ax.set_xticks(sorted({p["segments"] for p in points}), [str(n) for n in sorted({p["segments"] for p in points})])
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "length.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def length(folders: str | Path | list[str | Path], lc: LengthConfig) -> tuple[Path, str]:
    if lc.batches < 1:
        raise ValueError(f"--length.batches must be >= 1, got {lc.batches}")
    if lc.batch_size < 0:
        raise ValueError(f"--length.batch-size must be >= 0 (0 = the run's batch size), got {lc.batch_size}")
    if not lc.segments or min(lc.segments) < 1:
        raise ValueError(f"--length.segments must be numbers >= 1, got {lc.segments}")
    specs = []
    for spec in folders if isinstance(folders, list) else [folders]:
        path, _, only = str(spec).partition(":")
        specs.append((Path(path), replace(lc, models=only.split(",")) if only else lc))
    for folder, _ in specs:
        if not folder.is_dir():
            raise FileNotFoundError(f"no comparison folder {folder}")
    first = specs[0][0]
    out_dir = Path(lc.name) if lc.name else first.parent / f"length-{first.name}"
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists; pick another --length.name")
    points = [p for folder, spec_lc in specs for p in evaluate_lengths(folder, spec_lc)]
    if not points:
        raise ValueError(f"no run of {lc.models} in {', '.join(str(f) for f, _ in specs)}")
    if len({p["task"] for p in points}) > 1 or len({p["trained_segments"] for p in points}) > 1:
        raise ValueError("the folders hold runs of different tasks or trained lengths: pass one task's comparisons")
    out_dir.mkdir(parents=True, exist_ok=True)
    task = points[0]["task"]
    table = markdown_table(points)
    sources = [str(s) for s in (folders if isinstance(folders, list) else [folders])]
    (out_dir / "results.json").write_text(json.dumps({"kind": "length", "task": task, "sources": sources,
                                                      "config": asdict(lc), "points": points}, indent=1))
    fell = sorted({p["checkpoint"] for p in points if Path(p["checkpoint"]).name != lc.ckpt})
    fell_note = (f"\n\nNot ckpt/{lc.ckpt} (missing or damaged there), the newest good checkpoint: "
                 + ", ".join(fell) + "." if fell else "")
    (out_dir / "results.md").write_text(
        f"# length generalisation on {task}\n\nCommand: `{' '.join(['selmem', *sys.argv[1:]])}`\n\n{table}{fell_note}\n")
    try:
        plot(out_dir, points, task)
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'selmem[plot]')", file=sys.stderr)
    return out_dir, table
