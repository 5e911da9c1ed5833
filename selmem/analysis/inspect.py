"""``selmem inspect``: pictures of what a trained model's memory selects, holds and reads.

Legend: B examples, N sequence length, S segments, T segment length, L layers, M slots per layer.

The model runs (eval mode, no grad) on the first ``examples`` sequences of its task's test batch 0;
for every layer l the output folder (default ``RUN/inspect``) gets

  strip_L{l}.png   tokens coloured by head B's gate; relevant tokens boxed, answers marked
  write_L{l}.png   write mass per slot and segment          (slots x segments, per example)
  age_L{l}.png     slot age after each segment              (slots x segments, per example)
  read_L{l}.png    read attention of answer tokens on the layer's slots, with slot provenance

plus ``metrics.png`` (curves over training from metrics.jsonl) and ``index.html``: one page with
every picture embedded (base64, no server or network needed), a caption saying how to read it,
and a table of ``memory_metrics`` on these examples.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selmem.analysis.plots import pyplot
from selmem.metrics import memory_metrics, segments
from selmem.tasks.base import Batch
from selmem.train.run import read_metrics

WRAP = 64  #: positions per line of a token strip; longer inputs wrap onto further lines
MAX_POSITIONS = 512  #: positions shown per example in a strip (the first ones)
MAX_ANSWERS = 16  #: answer rows per example in a read picture
MEMORY_CURVES = ("write_rate", "slot_entropy", "retention", "precision", "recall", "read_hit_rate",
                 "read_hit_rate_best")


def find_run(path: str | Path) -> tuple[Path, str | None]:
    """(run folder, checkpoint tag or None) of ``runs/NAME`` or ``runs/NAME/ckpt/TAG``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass a run folder (runs/NAME) or a "
                                "checkpoint folder inside one (runs/NAME/ckpt/best)")
    if (path / "config.yaml").is_file():
        return path, None
    run = path.parent.parent
    if path.parent.name == "ckpt" and (run / "config.yaml").is_file():
        return run, path.name
    raise FileNotFoundError(f"{path} is neither a run folder (no config.yaml) nor a checkpoint "
                            "folder runs/NAME/ckpt/TAG of one")


def inspect_run(path: str | Path, ckpt: str | None = None, examples: int = 4,
                out: str | Path | None = None) -> Path:
    """Write the pictures and ``index.html`` for a run (or one of its checkpoints); returns the
    page's path. ``ckpt`` (best/last) defaults to the checkpoint named by ``path``, else best; a
    missing or damaged best or last falls back to the newest good checkpoint, and the page names
    the one shown (``runs.load_run_checkpoint``). Raises ValueError for a model without memory
    stats (a baseline), after writing metrics.png."""
    from selmem.runs import load_run_checkpoint

    if examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}")
    run, tag = find_run(path)
    ckpt = ckpt or tag or "best"
    if ckpt not in ("best", "last") and not (run / "ckpt" / ckpt).is_dir():  # a typo is not a fallback
        have = sorted(p.name for p in (run / "ckpt").glob("*") if p.is_dir())
        raise FileNotFoundError(f"{run} has no checkpoint {ckpt!r} (it has: {', '.join(have) or 'none'})")
    exp, model, task, used = load_run_checkpoint(run, ckpt)
    out = Path(out) if out else run / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    has_curves = plot_metrics(plt, read_metrics(run), out / "metrics.png", task.chance)
    batch = task.batch("test", 0, examples)
    with torch.no_grad():
        res = model.eval().forward_sequence(batch.tokens, exp.segment_len())
    if not segments(res.stats):
        wrote = f"; its training curves are in {out / 'metrics.png'}" if has_curves else ""
        raise ValueError(f"{run}: arch {exp.arch!r} has no memory to inspect (its forward returns no "
                         f"memory stats){wrote}")
    seg = exp.segment_len()
    pred = res.logits.argmax(-1)  # (B, N)
    sections = []
    for l in range(len(segments(res.stats)[0]["layers"])):
        lay = layer_arrays(res.stats, l, batch.tokens.shape[1])
        sections.append((l, [plot_strip(plt, batch, lay["gate"], seg, out / f"strip_L{l}.png", l),
                             plot_slots(plt, lay["write"], "write", out / f"write_L{l}.png", l),
                             plot_slots(plt, lay["age"], "age", out / f"age_L{l}.png", l),
                             plot_read(plt, res.stats, l, batch, pred, out / f"read_L{l}.png")]))
    metrics = memory_metrics(res.stats, batch)
    acc = _accuracy(pred, batch)
    page = out / "index.html"
    page.write_text(render_html(run, used.name, exp, examples, acc, metrics, sections,
                                out / "metrics.png" if has_curves else None, asked=ckpt), encoding="utf-8")
    return page


# ---------------------------------------------------------------------------------------------
# arrays
def layer_arrays(stats: dict[str, Any], l: int, N: int) -> dict[str, np.ndarray]:
    """Layer l as numpy: gate (B, N) at absolute positions (NaN where no segment covered one),
    write (B, S, M) = sum over candidates of ``write``, age (B, S, M) after each segment."""
    segs = segments(stats)
    first = segs[0]["layers"][l]
    B = first["gate"].shape[0]
    gate = np.full((B, N), np.nan)
    for s in segs:
        g = s["layers"][l]["gate"].double().cpu().numpy()  # (B, T)
        for b in range(B):
            lo = int(s["start"][b])
            hi = min(lo + g.shape[1], N)
            gate[b, lo:hi] = g[b, : hi - lo]
    write = np.stack([s["layers"][l]["write"].double().sum(1).cpu().numpy() for s in segs], 1)
    age = np.stack([s["layers"][l]["age"].double().cpu().numpy() for s in segs], 1)
    return {"gate": gate, "write": write, "age": age}


def _accuracy(pred: torch.Tensor, batch: Batch) -> float | None:
    mask = batch.loss_mask.bool()
    return float((pred[mask] == batch.targets[mask]).float().mean()) if mask.any() else None


# ---------------------------------------------------------------------------------------------
# pictures
def plot_strip(plt: Any, batch: Batch, gate: np.ndarray, seg: int, path: Path, l: int) -> Path:
    """Token strip: one block of lines per example, each cell a token coloured by its gate."""
    B, N = gate.shape
    n = min(N, MAX_POSITIONS)
    width = min(n, (WRAP // seg) * seg or WRAP)  # a multiple of the segment length if it fits
    lines = math.ceil(n / width)
    rows = B * (lines + 1) - 1  # a blank line between examples
    grid = np.full((rows, width), np.nan)
    tokens = batch.tokens.cpu().numpy()
    relevant = batch.relevant.cpu().numpy() if batch.relevant is not None else np.zeros((B, N), bool)
    answer = batch.loss_mask.cpu().numpy()
    fig, ax = plt.subplots(figsize=(min(max(6.0, 1.6 + 0.24 * width), 20), 1.0 + 0.3 * rows))
    cmap = plt.get_cmap("YlOrRd").with_extremes(bad="white")  # NaN: past the input's end
    yticks, ylabels = [], []

    def cell(b: int, p: int) -> tuple[int, int]:
        return b * (lines + 1) + p // width, p % width

    for b in range(B):
        for p in range(n):
            r, c = cell(b, p)
            grid[r, c] = gate[b, p]
        for k in range(lines):
            yticks.append(b * (lines + 1) + k)
            ylabels.append(f"ex {b}  [{k * width}, {min((k + 1) * width, n)})")
    im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    font = 6 if width <= 40 else 4.5
    for b in range(B):
        for p in range(n):
            r, c = cell(b, p)
            if width <= WRAP:  # token ids as text where there is room
                dark = not np.isnan(gate[b, p]) and gate[b, p] > 0.6
                ax.text(c, r, str(tokens[b, p]), ha="center", va="center", fontsize=font,
                        color="white" if dark else "black")
            if relevant[b, p]:
                ax.add_patch(plt.Rectangle((c - 0.45, r - 0.45), 0.9, 0.9, fill=False, ec="black", lw=1.4))
            if answer[b, p]:
                ax.plot(c, r + 0.38, marker="^", ms=3.5, color="tab:blue", mec="none")
            if p and p % seg == 0:  # segment boundary before position p
                ax.plot([c - 0.5, c - 0.5], [r - 0.5, r + 0.5], color="tab:blue", lw=1.5)
    ax.set_yticks(yticks, ylabels, fontsize=7)
    step = max(1, width // 16)
    ax.set_xticks(range(0, width, step), [str(x) for x in range(0, width, step)], fontsize=7)
    ax.set_xlabel("position within the line (line start in the row label)", fontsize=8)
    shown = f"first {n} of {N} positions" if n < N else f"all {N} positions"
    ax.set_title(f"layer {l}: head B gate per token ({shown}; segment length {seg})\n"
                 "black box = relevant (needed later), blue ▲ = answer position, "
                 "blue line = segment boundary",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01).set_label("gate (write strength)", fontsize=8)
    return _save(plt, fig, path)


def plot_slots(plt: Any, values: np.ndarray, kind: str, path: Path, l: int) -> Path:
    """Slots x segments heatmap per example: ``kind`` 'write' (mass) or 'age' (segments)."""
    B, S, M = values.shape
    fig, axes = plt.subplots(1, B, figsize=(1.2 + B * (0.9 + 0.45 * S), 1.4 + 0.24 * M),
                             squeeze=False, sharey=True)
    vmax = max(float(np.nanmax(values)), 1e-6)
    cmap = "Greens" if kind == "write" else "Purples"
    for b, ax in enumerate(axes[0]):
        im = ax.imshow(values[b].T, cmap=cmap, vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        if S * M <= 400:  # values as text where there is room
            for s in range(S):
                for j in range(M):
                    v = values[b, s, j]
                    ax.text(s, j, f"{v:.1f}" if kind == "age" else f"{v:.2f}", ha="center", va="center",
                            fontsize=5.5, color="white" if v > 0.6 * vmax else "black")
        step = max(1, S // 12)
        ax.set_xticks(range(0, S, step), [str(s) for s in range(0, S, step)], fontsize=7)
        ax.set_yticks(range(M), [str(j) for j in range(M)], fontsize=6)
        ax.set_xlabel("segment", fontsize=8)
        ax.set_title(f"example {b}", fontsize=8)
    axes[0][0].set_ylabel("slot", fontsize=8)
    what = ("write mass: sum over candidates of g·w per slot" if kind == "write"
            else "slot age after the segment (segments since written)")
    fig.suptitle(f"layer {l}: {what}", fontsize=9)
    label = "write mass" if kind == "write" else "age (segments)"
    fig.colorbar(im, ax=list(axes[0]), fraction=0.04, pad=0.02).set_label(label, fontsize=8)
    return _save(plt, fig, path, tight=False)


def plot_read(plt: Any, stats: dict[str, Any], l: int, batch: Batch, pred: torch.Tensor,
              path: Path) -> Path | None:
    """Answers x slots: the read attention of each answer token on the layer's own M slots, in the
    last segment holding an answer of that example. Slot labels give the input position (token)
    each slot held when read; boxed cells hold the answer's needed source span. None if no read."""
    segs = segments(stats)
    if segs[0]["layers"][l].get("read") is None:
        return None
    tokens, mask = batch.tokens.cpu(), batch.loss_mask.cpu().bool()
    src = batch.source.cpu() if batch.source is not None else None
    panels = []  # (b, rows (read vectors), row labels, boxes, slot labels)
    for b in range(tokens.shape[0]):
        for s in reversed(segs):
            start, T = int(s["start"][b]), s["layers"][l]["gate"].shape[1]
            pos = [p for p in range(start, min(start + T, tokens.shape[1])) if mask[b, p]]
            if pos:
                break
        if not pos:
            continue
        if len(pos) > MAX_ANSWERS:  # evenly spaced, so a page of answers still spans the segment
            pos = [pos[int(i)] for i in np.linspace(0, len(pos) - 1, MAX_ANSWERS)]
        lay = s["layers"][l]
        prov = lay["provenance_read"][b].cpu()  # (M,)
        M = prov.shape[0]
        rows, labels, boxes = [], [], []
        for i, p in enumerate(pos):
            rows.append(lay["read"][b, p - start, :M].double().cpu().numpy())
            ok = "✓" if int(pred[b, p]) == int(batch.targets[b, p]) else "✗"
            label = f"pos {p} tok {int(tokens[b, p])} → {int(pred[b, p])} {ok}"
            if src is not None and int(src[b, p, 0]) >= 0:
                lo, hi = int(src[b, p, 0]), int(src[b, p, 1])
                label += f"  needs [{lo},{hi})"
                boxes += [(i, j) for j in range(M) if lo <= int(prov[j]) < hi]
            labels.append(label)
        slots = [f"{j}: @{int(q)} ({int(tokens[b, int(q)])})" if 0 <= int(q) < tokens.shape[1]
                 else f"{j}: init" for j, q in enumerate(prov)]  # -1: still mostly its initial content
        panels.append((b, np.stack(rows), labels, boxes, slots))
    if not panels:
        return None
    M = panels[0][1].shape[1]
    heights = [len(p[2]) + 2.5 for p in panels]
    size = (3.2 + 0.42 * M, 1.0 + 0.28 * sum(heights) + 0.9 * len(panels))  # inches
    fig, axes = plt.subplots(len(panels), 1, figsize=size, squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": heights})
    vmax = max(float(max(p[1].max() for p in panels)), 1e-6)
    for ax, (b, rows, labels, boxes, slots) in zip(axes[:, 0], panels, strict=True):
        im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
        for i, j in boxes:
            ax.add_patch(plt.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, ec="red", lw=1.6))
        for i in range(rows.shape[0]):  # the most-read slot of each answer (read_hit_rate's j*)
            ax.plot(int(rows[i].argmax()), i, marker="o", ms=2.5, color="orange", mec="none")
        ax.set_yticks(range(len(labels)), labels, fontsize=6.5)
        ax.set_xticks(range(M), slots, rotation=60, ha="right", fontsize=6)
        ax.set_title(f"example {b}", fontsize=8)
    axes[-1, 0].set_xlabel("slot: @input position it mostly holds (token id there); init = still its "
                           "learned initial content", fontsize=8)
    fig.suptitle(f"layer {l}: read attention of answer tokens on the layer's slots\n"
                 "red box = slot holds the needed source, orange dot = most-read slot", fontsize=9)
    fig.colorbar(im, ax=list(axes[:, 0]), fraction=0.04, pad=0.02).set_label(
        "attention weight (mean over heads)", fontsize=8)
    return _save(plt, fig, path, tight=False)


def plot_metrics(plt: Any, records: list[dict[str, Any]], path: Path, chance: float | None) -> bool:
    """Curves over training: the task metric (test points, train batches faint) and the memory
    metrics logged for the test set (train batches faint, same colour). ``chance`` None means a
    language-modelling task (bits per token). Returns False, writing nothing, without test records."""
    test = [r for r in records if r.get("split") == "test"]
    train = [r for r in records if r.get("split") == "train"]
    if not test:
        return False
    key = "bits_per_token" if chance is None else "accuracy"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for recs, name, style in ((train, "train batches", dict(alpha=0.4, lw=1)),
                              (test, "test set", dict(marker="o", ms=3))):
        pts = [(r["step"], r[key]) for r in recs if key in r]
        if pts:
            ax1.plot(*zip(*pts, strict=True), label=name, **style)
    if chance is not None:
        ax1.axhline(chance, color="grey", ls=":", label="chance")
    ax1.set(xlabel="training step", ylabel=key.replace("_", " "), title=f"task {key.replace('_', ' ')}")
    ax1.legend(fontsize=8)
    drawn = 0
    for i, name in enumerate(MEMORY_CURVES):
        pts = [(r["step"], r[name]) for r in test if name in r]
        if not pts:
            continue
        color = f"C{i}"
        ax2.plot(*zip(*pts, strict=True), marker="o", ms=3, color=color, label=name.replace("_", " "))
        faint = [(r["step"], r[name]) for r in train if name in r]
        if faint:
            ax2.plot(*zip(*faint, strict=True), color=color, alpha=0.25, lw=1)
        drawn += 1
    if drawn:
        ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax2.set_ylim(-0.03, 1.03)
    else:
        ax2.text(0.5, 0.5, "no memory metrics logged\n(a model without memory)", ha="center",
                 va="center", transform=ax2.transAxes)
    ax2.set(xlabel="training step", title="memory diagnostics (mean over layers; faint: train batches)")
    ax2.title.set_fontsize(10)
    fig.tight_layout()
    _save(plt, fig, path, tight=False)
    return True


def _save(plt: Any, fig: Any, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# the page
CAPTIONS = {
    "strip": "Each row is one test example, read left to right (long inputs wrap onto further lines). "
             "A cell is one input token, its id printed inside; the colour is head B's gate, how strongly "
             "the layer wants to write that token into memory (white/yellow 0, dark red 1). "
             "Black boxes mark the task's relevant tokens (the ones needed later: ideally the dark ones), "
             "blue triangles the answer positions, blue vertical lines the segment boundaries.",
    "write": "Write mass per slot (rows) and segment (columns), one panel per example: the sum over "
             "the segment's write candidates of gate × address weight into that slot. A column shows "
             "where a segment's writes went; a dark row is a slot that keeps being written.",
    "age": "Slot age after each segment (in segments): it grows by one per segment and falls back "
           "towards 0 when the slot is overwritten. Old slots are kept content; young ones were just "
           "written or evicted.",
    "read": "At each answer position (rows; label: position, input token → predicted token, ✓/✗, "
            "and the input span the answer needs), the attention the layer pays to each of its own slots "
            "(columns), averaged over heads; the rest of the attention goes to hints and to the "
            "segment's own tokens. Column labels say which input position (and token) a slot mostly "
            "held when it was read ('init': still mostly its learned initial content). Red boxes mark "
            "slots holding the needed span; the orange dot is the most-read slot, and an orange dot on "
            "a red box is a read hit (what read_hit_rate counts). Shown per example: the answers of the "
            "last segment that has any (at most 16, evenly spaced).",
}


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<img src="data:image/png;base64,{data}" alt="{path.name}">'
            f'<div class="file"><a href="{path.name}">{path.name}</a></div>')


def metrics_table(metrics: dict[str, float]) -> str:
    """``memory_metrics`` as an HTML table: one row per metric, columns mean, L0, L1, ..."""
    names = [k for k in metrics if "/" not in k]
    layers = sorted({k.split("/")[0] for k in metrics if "/" in k}, key=lambda s: int(s[1:]))
    head = "".join(f"<th>{h}</th>" for h in ["metric", "mean", *layers])
    body = []
    for name in names:
        cells = [metrics[name], *(metrics.get(f"{lay}/{name}") for lay in layers)]
        body.append(f"<tr><td>{html.escape(name)}</td>"
                    + "".join(f"<td>{'' if v is None else f'{v:.3f}'}</td>" for v in cells) + "</tr>")
    return f'<table class="metrics"><tr>{head}</tr>{"".join(body)}</table>'


def render_html(run: Path, ckpt: str, exp: Any, examples: int, acc: float | None,
                metrics: dict[str, float], sections: list[tuple[int, list[Path | None]]],
                curves: Path | None, asked: str | None = None) -> str:
    """The one self-contained page (images embedded as data URIs). ``ckpt``: the checkpoint the
    weights came from; ``asked``: the one asked for, when the reader fell back from it."""
    esc = html.escape
    m = exp.model
    fell = f" (ckpt/{esc(asked)} is missing or damaged: the newest good checkpoint instead)" if asked not in (
        None, ckpt) else ""
    parts = [f"<h1>selmem inspect: {esc(run.name)}</h1>",
             f"<p>Run <code>{esc(str(run))}</code>, checkpoint <b>{esc(ckpt)}</b>{fell}. Model {esc(exp.arch)}: "
             f"{m.n_layers} layers, {m.slots} slots × {m.d_mem} per layer, select={esc(m.select)}, "
             f"compress={esc(m.compress)}, address={esc(m.address)}. Task {esc(exp.task.name)}, "
             f"segment length {exp.segment_len()}. Shown: the first {examples} sequences of the test set"
             + (f"; answer accuracy on them {acc:.1%}." if acc is not None else ".") + "</p>",
             "<h2>Memory metrics on these examples</h2>",
             "<p>From <code>selmem.metrics.memory_metrics</code>: write rate = mean gate; slot entropy = "
             "how evenly writes spread over slots (0 one slot, 1 all); retention = share of a slot's "
             "content that survives one segment (low with high entropy = every write erases a little "
             "everywhere); precision/recall = gate &gt; 0.5 against the task's relevant tokens; read hit "
             "rate = share of answers whose most-read slot holds the needed token; ages in segments.</p>",
             metrics_table(metrics)]
    if curves is not None:
        parts += ["<h2>Training curves</h2>", "<p>From the run's metrics.jsonl. Left: the task metric "
                  "over training (test-set points; the faint line is the noisier train batches; dotted: "
                  "chance). Right: memory diagnostics at each test evaluation, each the mean over layers "
                  "(read hit rate best = the best layer's); faint lines in the same colour are the "
                  "train batches.</p>", _img(curves)]
    titles = {"strip": "Token strip: what head B selects", "write": "Write mass",
              "age": "Slot age", "read": "Reads at answers"}
    for l, paths in sections:
        parts.append(f"<h2>Layer {l}</h2>")
        for kind, path in zip(titles, paths, strict=True):
            parts.append(f"<h3>{titles[kind]}</h3><p>{CAPTIONS[kind]}</p>")
            parts.append(_img(path) if path is not None else
                         "<p><i>Nothing to show: this layer does not read its memory "
                         "(read off) or the examples have no answer positions.</i></p>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
             "img{max-width:100%;border:1px solid #ddd}p{max-width:60em}.file{font-size:80%;color:#777}"
             "table.metrics{border-collapse:collapse}table.metrics td,table.metrics th"
             "{border:1px solid #ccc;padding:2px 8px;text-align:right}")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>inspect {esc(run.name)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
