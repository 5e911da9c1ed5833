"""``selmem report``: gather result folders into one markdown page (docs/RESULTS.md).

The page holds only what the folders hold. It opens with one table of every task (from the
comparisons' results.json), then each folder's results.md (written by ``selmem compare``,
``selmem ablate`` or ``selmem length``, with the command that produced it) and its plots, copied
next to the page, and it ends with "What held and what did not": each claim of the design with the
figure that decides it, computed from the ablation and length folders by ``verdicts``. No number
on the page is typed by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from selmem.analysis.compare import METRICS, fmt_metric, metric_keys
from selmem.analysis.length import metric as length_metric
from selmem.analysis.length import summarise as summarise_lengths
from selmem.baselines import MODELS  # the overview's columns, in the registry's order
from selmem.tasks.base import LOWER_IS_BETTER, PERCENT_METRICS

# claim -> the ablation run (its folder label) that tests it at the longest evaluated length
LONG_STREAM_CLAIMS = {"forgetting keeps the memory useful over long streams": "forgetting-off"}
PLOTS = ("curves.png", "state.png", "position.png", "ablation.png", "length.png")

# claim -> the ablation variant whose removal tests it (see ``verdicts``)
CLAIMS = {
    "selection helps": "select: all",
    "attention-addressed writes beat a ring buffer": "address: fifo",
    "forgetting keeps the memory useful": "forgetting: off",
    "the cross-layer cache transform helps": "cache_transform: none",
    "reading the memory is what answers": "read: off",
}


def _load(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def overview(folders: list[Path]) -> str:
    """One row per comparison (task): each model's headline test metric, mean ± std over seeds."""
    lines = []
    for folder in folders:
        data = _load(folder)
        if data.get("kind", "compare") != "compare" or not data.get("rows"):
            continue
        rows = {r["model"]: r for r in data["rows"]}
        if len(rows) < len(data["rows"]):  # a state-size sweep: its own section has every size
            continue
        chance = data["rows"][0]["chance"]
        seeds = max(r["seeds"] for r in data["rows"])
        for i, key in enumerate(metric_keys(data["rows"])):  # the headline first; molecules add MAE, R²
            cells = [fmt_metric(rows[m], key) if m in rows else "" for m in MODELS]
            metric = METRICS[key].replace("test ", "")
            if i == 0 and chance is not None:
                metric += f" (chance {chance:.1%})"
            elif key in LOWER_IS_BETTER:
                metric += " (lower is better)"
            task = data["runs"][0]["task"]
            lines.append(f"| {folder.name} | {task} | {metric} | " + " | ".join(cells) + f" | {seeds} |")
    if not lines:
        return ""
    head = "| comparison | task | metric | " + " | ".join(MODELS) + " | seeds |"
    return "\n".join([head, "|---|---|---|" + "---|" * (len(MODELS) + 1), *lines])


def _verdict(delta: float, se: float, seeds: int) -> str:
    """How a difference (variant − selmem; negative = the part helps) decides its claim."""
    if seeds < 2:
        return "not decided (one seed)"
    margin = max(2 * se, 0.01)
    if delta < -margin:
        return "held"
    if delta > margin:
        return "did not hold (better without it)"
    return "did not hold (no difference beyond 2 standard errors)"


def verdicts(folders: list[Path]) -> list[str]:
    """One line per claim and task, with the figure that decides it."""
    lines = []
    loaded = [(f, _load(f)) for f in folders]
    ablations = [(f, data) for f, data in loaded if data.get("kind") == "ablate"]
    for claim, variant in CLAIMS.items():
        for folder, data in ablations:
            rows = {r["model"]: r for r in data["rows"]}
            if variant not in rows:
                continue
            r, key = rows[variant], metric_keys(data["rows"])[0]
            ref = rows["selmem"]
            fig = (f"{r['delta']:+.1%} ± {r['delta_se']:.1%}" if key in PERCENT_METRICS
                   else f"{r['delta']:+.3f} ± {r['delta_se']:.3f} bits")
            lines.append(f"- **{claim}** ({data['runs'][0]['task']}, `{folder.name}`): "
                         f"{_verdict(r['delta'], r['delta_se'], min(r['seeds'], ref['seeds']))}. "
                         f"Without it ({variant}): {fmt_metric(r, key)} against selmem's {fmt_metric(ref, key)}, "
                         f"Δ {fig}.")
    for folder, data in ablations:  # compression: the same answers from less state
        rows = {r["model"]: r for r in data["rows"]}
        if "compress: none" not in rows:
            continue
        r, ref, key = rows["compress: none"], rows["selmem"], metric_keys(data["rows"])[0]
        seeds = min(r["seeds"], ref["seeds"])
        margin = max(2 * r["delta_se"], 0.01)
        held = "not decided (one seed)" if seeds < 2 else (
            "held" if r["delta"] <= margin and r["state_floats"] > ref["state_floats"] else "did not hold")
        lines.append(f"- **compression saves state** ({data['runs'][0]['task']}, `{folder.name}`): {held}. "
                     f"selmem {fmt_metric(ref, key)} with {ref['state_floats']:,} floats; raw features "
                     f"(compress: none) {fmt_metric(r, key)} with {r['state_floats']:,} floats.")
    for folder, data in loaded:
        if data.get("kind") != "length":
            continue
        if length_metric(data["points"]) == "bits_per_token":  # language modelling: bits, along the file
            lines += lm_length_verdict(folder, data)
            continue
        table = summarise_lengths(data["points"], length_metric(data["points"]))
        longest = max(p["segments"] for p in data["points"])
        trained = data["points"][0]["trained_segments"]
        if "selmem" not in table or longest not in table["selmem"]:
            continue
        at = {m: by_n[longest][0] for m, by_n in table.items() if longest in by_n}
        base = table["selmem"].get(trained, (float("nan"),))[0]
        others = {m: a for m, a in at.items() if m != "selmem" and m in MODELS}  # baselines, not ablations
        best = max(others.items(), key=lambda kv: kv[1]) if others else None
        kept = at["selmem"] >= base - 0.05
        ahead = best is None or at["selmem"] > best[1] + 0.05
        seeds = table["selmem"][longest][2]
        held = "not decided (one seed)" if seeds < 2 else ("held" if kept and ahead else "did not hold")
        rival = f"; best other model {best[0]} {best[1]:.1%}" if best else ""
        holds = [n for n in sorted(table["selmem"]) if n >= trained]
        upto = trained
        for n in holds:  # the longest length up to which selmem stays within 5 points
            if table["selmem"][n][0] < base - 0.05:
                break
            upto = n
        lines.append(f"- **the memory generalises to longer inputs** ({data['task']}, `{folder.name}`): {held}. "
                     f"Trained at {trained} segments, selmem {base:.1%} there, within 5 points of it up to "
                     f"{upto} segments, and {at['selmem']:.1%} at {longest}{rival}.")
        lines += long_stream_verdicts(folder, data, table, longest)
    return lines


def lm_length_verdict(folder: Path, data: dict[str, Any]) -> list[str]:
    """Language modelling evaluated on longer rows (``selmem length`` on a code-lm comparison): does
    the memory keep helping along a file? At the longest length, selmem's bits per token on the
    second half of the rows must be no worse than on their first half (the same files) and, where
    ``local`` (the same blocks without a memory) was evaluated too, its lead over local on the
    second half no smaller than on the first: later parts of a file can be easier for every model,
    so the halves alone would credit the memory with the content's change."""
    points = [p for p in data["points"] if "bits_second_half" in p]
    longest = max((p["segments"] for p in points), default=None)
    halves = {h: summarise_lengths(points, f"bits_{h}_half") for h in ("first", "second")}
    first, second = (halves[h].get("selmem", {}).get(longest) for h in ("first", "second"))
    if longest is None or first is None or second is None:
        return []
    ok = second[0] <= first[0]
    ref = [halves[h].get("local", {}).get(longest) for h in ("first", "second")]
    against = ""
    if all(ref):
        lead = (ref[0][0] - first[0], ref[1][0] - second[0])  # local minus selmem: > 0 where the memory helps
        ok = ok and lead[1] >= lead[0]
        against = f"; local, without a memory, has {ref[0][0]:.3f} and {ref[1][0]:.3f}, so selmem's lead over it goes " \
                  f"from {lead[0]:+.3f} to {lead[1]:+.3f} bits"
    held = "not decided (one seed)" if second[2] < 2 else ("held" if ok else "did not hold")
    return [f"- **the memory keeps helping along a file** ({data['task']}, `{folder.name}`): {held}. At {longest} "
            f"segments selmem has {first[0]:.3f} bits per token on the first half of the rows and {second[0]:.3f} "
            f"on the second{against}."]


def long_stream_verdicts(folder: Path, data: dict[str, Any], table: dict, longest: int) -> list[str]:
    """An ablation's checkpoints evaluated at longer inputs (``selmem length`` on an ablate folder):
    the claims about long streams, decided at the longest length."""
    lines = []
    for claim, variant in LONG_STREAM_CLAIMS.items():
        if longest not in table.get(variant, {}):
            continue
        (a, sa, na), (b, sb, nb) = table[variant][longest], table["selmem"][longest]
        se = (sa**2 / na + sb**2 / nb) ** 0.5
        lines.append(f"- **{claim}** ({data['task']}, `{folder.name}`): {_verdict(a - b, se, min(na, nb))}. "
                     f"At {longest} segments selmem {b:.1%}, without it ({variant}) {a:.1%}, "
                     f"Δ {a - b:+.1%} ± {se:.1%}.")
    return lines


def stability(folder: Path, drop: float = 0.02) -> str:
    """Each run's final test accuracy against its best evaluation, for the runs of ``folder`` that
    kept their evaluations (``evals.jsonl``, written by ``./dev archive``): a markdown table, and
    the runs whose final accuracy is more than ``drop`` below their best named under it. Empty
    where no run kept them, or where the runs report no accuracy."""
    rows, fell = [], []
    for evals in sorted(folder.glob("*/evals.jsonl")):
        points = [(r["step"], r["accuracy"]) for r in map(json.loads, evals.read_text().splitlines())
                  if "accuracy" in r]
        if not points:
            continue
        step, best = max(points, key=lambda p: (p[1], -p[0]))
        final = points[-1][1]
        run = evals.parent.name
        rows.append(f"| {run} | {final:.1%} | {best:.1%} (step {step}) | {final - best:+.1%} |")
        if final < best - drop:
            fell.append(run)
    if not rows:
        return ""
    head = ("Final against best evaluation (each run's `evals.jsonl`):\n\n"
            "| run | final | best evaluation | final − best |\n|---|---|---|---|\n")
    verdict = (f"Runs more than {drop:.0%} below their best at the end: {', '.join(fell)}." if fell
               else f"Every run ends within {drop:.0%} of its best evaluation.")
    return head + "\n".join(rows) + f"\n\n{verdict}\n"


def report(folders: list[str | Path], out: str | Path, title: str = "Results") -> Path:
    """Write ``out`` (markdown) from result ``folders``; plots go to ``<out dir>/img/``."""
    out = Path(out)
    folders = [Path(f) for f in folders]
    img = out.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n",
             "Generated by `selmem report " + " ".join(str(f) for f in folders) + f" --out {out}"
             + ("" if title == "Results" else f" --title '{title}'") + "` "
             "from result folders written by `selmem compare`, `selmem ablate` and `selmem length`; "
             "every table below is that folder's results.md, verbatim, and the overview and the "
             "verdicts at the end are computed from their results.json.\n"]
    for folder in folders:
        if not (folder / "results.md").is_file():
            raise FileNotFoundError(f"{folder} has no results.md: is it a `selmem compare` folder?")
    table = overview(folders)
    if table:
        parts.append(f"## Every task\n\n{table}\n")
    for folder in folders:
        text = (folder / "results.md").read_text().strip()
        body = text.split("\n", 1)[1] if text.startswith("#") else text
        parts.append(f"## {folder.name}\n\n{body.strip()}\n")
        kept = stability(folder)
        if kept:
            parts.append(kept)
        env = next(folder.glob("*/env.json"), None)
        if env is not None:
            e = json.loads(env.read_text())
            parts.append(f"Machine: {e.get('platform')}, {e.get('cpu_count')} CPUs, torch {e.get('torch')}, "
                         f"device {e.get('device')}, git {e.get('git', '')[:10]}.\n")
        for png in PLOTS:
            if (folder / png).is_file():
                dest = img / f"{folder.name}-{png}"
                shutil.copyfile(folder / png, dest)
                parts.append(f"![{png}](img/{dest.name})\n")
    claims = verdicts(folders)
    if claims:
        parts.append("## What held and what did not\n\nA claim holds where removing the part costs more "
                     "than two standard errors of the difference over seeds (and at least one point); "
                     "computed by `selmem.analysis.report.verdicts`.\n\n" + "\n".join(claims) + "\n")
    out.write_text("\n".join(parts))
    return out
