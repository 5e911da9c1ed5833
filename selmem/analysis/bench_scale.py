"""The parts of ``selmem bench`` beyond the per-model table: streaming at growing lengths, a
breakdown of a selmem training step, and docs/BENCHMARKS.md; and the step that the table and the
breakdown both time (``training_batch``, ``step_loss``), so bench.py imports this file and not
the other way round.

    selmem bench --config configs/cpu.yaml --bench.page docs/BENCHMARKS.md

Streaming: one sequence of N tokens (1K .. 1M) fed segment by segment with no gradient, keeping
only the carried state (what a deployed stream does), each (model, N) in a fresh process so that
its peak memory is its own. A model that runs out of memory, or would pass ``stream_budget_s``,
gets a row that says so: full attention's cache and cost grow with N, that is the point.

Breakdown: wall time of each part of one selmem training step's forward, by wrappers of the
parts' calls (the per-layer modules, and with model.writes='batched' the stacked stand-ins that
run all layers' select/compress/address at once) and of the update function, synchronised on a
GPU; the backward and the optimiser step are one line each. Hooks cost a little, so the parts' sum is what to compare,
not the step time of the training table.
"""

from __future__ import annotations

import platform
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from selmem.experiment import ExperimentConfig

PARTS = ["blocks (attention incl. the read, MLP)", "read (prefix)", "select", "compress", "address",
         "update", "cache transform", "teacher (head B's probe, forward)", "rest of forward (embed, head, losses)",
         "backward (the teacher's included)", "optimiser step"]


def training_batch(exp: ExperimentConfig, batch_size: int, seq_len: int):
    """What a training step of the benchmark eats: the task's own training batch at its length
    (so selmem's teacher sees the task's answers, as in ``selmem train``), or at another length
    random tokens with every position scored (language modelling: every position is an answer)."""
    import torch

    from selmem.tasks.base import Batch

    if seq_len == exp.task.seq_len:
        return exp.task.batch("train", 0, batch_size)
    gen = torch.Generator().manual_seed(exp.train.seed)
    x = torch.randint(0, exp.model.vocab_size, (batch_size, seq_len + 1), generator=gen)
    return Batch(x[:, :-1], x[:, 1:], torch.ones(batch_size, seq_len, dtype=torch.bool))


def step_loss(model: Any, host: Any, batch: Any, segment_len: int, teacher: bool = True) -> Any:
    """The loss a trainer's step (Trainer._step) backpropagates, minus its fault checks: the task
    loss plus the auxiliary ones, selmem's teacher included unless ``teacher`` is False. host:
    the batch on the host (its checks read values there), batch: the same on the device."""
    from selmem.memory.objective import Objective
    from selmem.train.loop import forward_kwargs, host_checks, reset_kwargs, task_loss

    n = host_checks(model, host)
    kwargs = forward_kwargs(model, batch, n) if teacher else reset_kwargs(model, batch)
    out = model.forward_sequence(batch.tokens, segment_len, **kwargs)
    return Objective.total(task_loss(out.logits, batch, n)[0], out.losses)


def stream_one(name: str, exp_dict: dict[str, Any], n_tokens: int, budget_s: float) -> dict[str, Any]:
    """Worker: stream ``n_tokens`` through model ``name`` (batch 1) -> tokens/s and peak memory."""
    import torch

    from selmem.analysis.compare import matched_config
    from selmem.baselines import build_model, state_size
    from selmem.train.loop import resolve_device

    exp = ExperimentConfig.from_dict(exp_dict)
    if exp.train.threads > 0:
        torch.set_num_threads(exp.train.threads)
    torch.manual_seed(exp.train.seed)
    device = resolve_device(exp.train.device)
    cfg = matched_config(name, exp.model, state_size("selmem", exp.model))
    model = build_model(name, cfg).to(device).eval()
    seg = exp.segment_len()
    gen = torch.Generator(device).manual_seed(exp.train.seed)

    def segment(t: int):  # drawn as needed: nothing of size n_tokens is ever held
        return torch.randint(0, cfg.vocab_size, (1, t), device=device, generator=gen)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    row = {"model": name, "tokens": n_tokens, "device": str(device)}
    state, done = None, 0
    try:
        with torch.no_grad():
            model(segment(seg), None)  # warm-up segment, untimed
            sync()
            t0 = time.perf_counter()
            for start in range(0, n_tokens, seg):
                state = model(segment(min(seg, n_tokens - start)), state).state
                done = start + seg
                if budget_s and time.perf_counter() - t0 > budget_s:
                    raise TimeoutError
            sync()
    except (torch.OutOfMemoryError, MemoryError):
        return {**row, "error": "out of memory"}
    except TimeoutError:
        return {**row, "error": f"over {budget_s:.0f} s (at {done:,} tokens)"}
    wall = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {**row, "tokens_per_s": n_tokens / wall, "peak_mem_mb": peak}


def profile_step(exp_dict: dict[str, Any], batch_size: int, seq_len: int, repeats: int) -> dict[str, float]:
    """Worker: seconds per part of a selmem training step (forward parts by hooks), mean of
    ``repeats`` steps after one warm-up step."""
    import torch

    import selmem.memory.layer as layer_mod
    from selmem.memory.address import Address
    from selmem.memory.compress import Compress
    from selmem.memory.select import Select
    from selmem.model import SelectiveMemoryTransformer
    from selmem.train.loop import resolve_device

    exp = ExperimentConfig.from_dict(exp_dict)
    if exp.train.threads > 0:
        torch.set_num_threads(exp.train.threads)
    torch.manual_seed(exp.train.seed)
    device = resolve_device(exp.train.device)
    model = SelectiveMemoryTransformer(exp.model).to(device).train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    spent: dict[str, float] = defaultdict(float)

    def clock(part: str, fn):
        def timed(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            spent[part] += time.perf_counter() - t0
            return out
        return timed

    groups = {PARTS[0]: model.blocks, PARTS[1]: model.read, PARTS[6]: [model.cache_transform],
              PARTS[7]: [model.probe] if model.probe is not None else []}
    for part, mods in groups.items():
        for m in mods:
            m.forward = clock(part, m.forward)
    # select, compress and address by their classes' forward, which the per-layer modules and the
    # batched write's stand-ins (memory/stacked.py) both run; this worker only
    for part, cls in ((PARTS[2], Select), (PARTS[3], Compress), (PARTS[4], Address)):
        cls.forward = clock(part, cls.forward)
    layer_mod.update = clock("update", layer_mod.update)
    N, seg = seq_len or exp.task.seq_len, exp.segment_len()
    host = training_batch(exp, batch_size, N)
    batch = host.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    total: dict[str, float] = defaultdict(float)
    for i in range(repeats + 1):
        spent.clear()
        sync()
        t0 = time.perf_counter()
        loss = step_loss(model, host, batch, seg)
        sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        spent[PARTS[8]] = (t1 - t0) - sum(v for k, v in spent.items())
        spent[PARTS[9]], spent[PARTS[10]] = t2 - t1, t3 - t2
        if i:  # the first step warms up
            for k, v in spent.items():
                total[k] += v / repeats
    return {p: total.get(p, 0.0) for p in PARTS}


def count_ops(exp_dict: dict[str, Any], models: list[str], batch_size: int, seq_len: int) -> list[dict[str, Any]]:
    """Worker: aten operators one training step dispatches per model (forward with the losses,
    then backward; selmem once more without its teacher), counted by a TorchDispatchMode. At the
    cpu preset's size every operator works on a few thousand floats, so a step's time follows how
    many it dispatches more than how many FLOPs they do: a count that no machine's noise moves."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from selmem.analysis.compare import matched_config
    from selmem.baselines import build_model, state_size
    from selmem.train.loop import forward_kwargs

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    exp = ExperimentConfig.from_dict(exp_dict)
    host = training_batch(exp, batch_size, seq_len or exp.task.seq_len)
    rows = []
    for name in models:
        torch.manual_seed(exp.train.seed)
        model = build_model(name, matched_config(name, exp.model, state_size("selmem", exp.model))).train()
        taught = "answer_mask" in forward_kwargs(model, host, 0) and exp.model.objective.lambda_credit != 0
        for teacher in (True, False) if taught else (True,):
            step_loss(model, host, host, exp.segment_len(), teacher).backward()  # warm-up: lazy caches fill
            with Count() as fwd:
                loss = step_loss(model, host, host, exp.segment_len(), teacher)
            with Count() as bwd:
                loss.backward()
            rows.append({"model": name if teacher else untaught(name),
                         "forward": fwd.n, "backward": bwd.n})
    return rows


def untaught(name: str) -> str:
    """The row name of a model timed or counted without its train-time teacher."""
    return f"{name} without its teacher"


def train_speeds(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Training tokens/s by row name: each model, and selmem once more without its teacher."""
    out = {}
    for r in rows:
        out[r["model"]] = r["train_tokens_per_s"]
        if r.get("train_tokens_per_s_no_teacher"):
            out[untaught(r["model"])] = r["train_tokens_per_s_no_teacher"]
    return out


def machine(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    import os

    import torch

    m = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
         "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        m["gpu"] = torch.cuda.get_device_name(0)
    try:  # a loaded machine gives meaningless timings: record how loaded it was
        m["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return m


def bars(train_rows: list[dict[str, Any]], stream_rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each as met / not met / not measured, from the rows."""
    out = []
    local = {r["model"]: r for r in train_rows}
    if "selmem" in local and "local" in local:
        base, sel = local["local"]["train_tokens_per_s"], local["selmem"]
        ratio = sel["train_tokens_per_s"] / base
        out.append(f"selmem training at {ratio:.2f}x local: target >= 0.75x "
                   f"{'met' if ratio >= 0.75 else 'NOT met (see the operator counts and the breakdown)'}")
        if sel.get("train_tokens_per_s_no_teacher"):
            alone = sel["train_tokens_per_s_no_teacher"] / base
            out.append(f"selmem without its train-time teacher at {alone:.2f}x local "
                       f"({'at or above' if alone >= 0.75 else 'below'} the 0.75x target): the teacher's share "
                       f"of a training step is {1 - ratio / alone:.0%}")
    ok = {r["tokens"]: r for r in stream_rows if r["model"] == "selmem" and "error" not in r}
    if 2**14 in ok and 2**20 in ok:
        a, b = ok[2**14], ok[2**20]
        mem, speed = b["peak_mem_mb"] / a["peak_mem_mb"] - 1, b["tokens_per_s"] / a["tokens_per_s"] - 1
        met = abs(mem) <= 0.05 and abs(speed) <= 0.10
        out.append(f"selmem streaming 1M vs 16K tokens: peak memory {mem:+.1%}, tokens/s {speed:+.1%}; "
                   f"target within 5% / 10% {'met' if met else 'NOT met'}")
    return out or ["(not measured: run with local in --bench.models and 16K and 1M in --bench.stream-lengths)"]


def plot(stream_rows: list[dict[str, Any]], path: Path) -> Path | None:
    """tokens/s and peak memory against streamed length, one line per model (None without
    matplotlib, an optional extra, or nothing streamed)."""
    if not stream_rows:
        return None
    from selmem.analysis.plots import pyplot

    try:
        plt = pyplot()
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name in dict.fromkeys(r["model"] for r in stream_rows):
        rows = [r for r in stream_rows if r["model"] == name and "error" not in r]
        n = [r["tokens"] for r in rows]
        ax1.plot(n, [r["tokens_per_s"] for r in rows], marker="o", label=name)
        ax2.plot(n, [r["peak_mem_mb"] for r in rows], marker="o", label=name)
    for ax, title in ((ax1, "streaming tokens/s"), (ax2, "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens streamed")
        ax.set_title(title)
    ax1.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def page(command: str, table: str, stream_rows: list[dict[str, Any]], profile: dict[str, float] | None,
         train_rows: list[dict[str, Any]], mach: dict[str, Any], png: str | None,
         ops: list[dict[str, Any]] | None = None) -> str:
    """docs/BENCHMARKS.md's text: every number from the rows passed in."""
    lines = ["# Benchmarks", "", f"Generated by `{command}`; do not edit by hand.", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in mach.items()) + ".", "", "## Targets", ""]
    lines += [f"- {b}" for b in bars(train_rows, stream_rows)]
    lines += ["", "## Training and streaming throughput per model", "", table, "", "## Streaming length", "",
              "| model | tokens | tokens/s | peak MB |", "|---|---|---|---|"]
    for r in stream_rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['tokens']:,} | {r['error']} | |")
        else:
            lines.append(f"| {r['model']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | {r['peak_mem_mb']:.0f} |")
    if png:
        lines += ["", f"![streaming tokens/s and peak memory]({png})"]
    if ops:
        base = next((r["forward"] + r["backward"] for r in ops if r["model"] == "local"), None)
        speed = train_speeds(train_rows)
        lines += ["", "## Operators per training step", "",
                  "aten operators dispatched by one training step (forward with the losses, then backward), "
                  "counted by `count_ops` in selmem/analysis/bench_scale.py; the count is exact and does not "
                  "depend on the machine's load. At this size most operators touch a few thousand floats and "
                  "cost their eager dispatch more than their arithmetic; the measured time beside the count "
                  "shows where operators are large instead (lstm's, the teacher's attention over the whole "
                  "window).", "",
                  "| model | forward | backward | step x local | step time x local |", "|---|---|---|---|---|"]
        for r in ops:
            n = f"{(r['forward'] + r['backward']) / base:.2f}" if base else "-"
            t = f"{speed['local'] / speed[r['model']]:.2f}" if "local" in speed and r["model"] in speed else "-"
            lines.append(f"| {r['model']} | {r['forward']:,} | {r['backward']:,} | {n} | {t} |")
    if profile:
        step = sum(profile.values())
        lines += ["", "## Where a selmem training step goes", "", "| part | ms | share |", "|---|---|---|"]
        lines += [f"| {k} | {v * 1e3:.1f} | {v / step:.0%} |" for k, v in profile.items()]
    return "\n".join(lines) + "\n"


#: sections of the page that commands of their own write (each names its command), which the
#: full record keeps when it rewrites the rest: decoding (``--bench.decode``), the GPU record (``--bench.gpu``)
OWN_SECTIONS = ("Decoding", "GPU")


def split_sections(text: str) -> tuple[str, dict[str, str]]:
    """A page -> (what precedes its first ``## `` heading, {title: body}) in page order."""
    head, *parts = text.split("\n## ")
    sections = {}
    for part in parts:
        title, _, body = part.partition("\n")
        sections[title.strip()] = body.strip("\n")
    return head, sections


def join_sections(head: str, sections: dict[str, str]) -> str:
    return head.rstrip("\n") + "\n" + "".join(f"\n## {t}\n\n{b}\n" for t, b in sections.items())


def write_section(path: str | Path, title: str, body: str) -> None:
    """Put ``body`` under ``## title`` in the page at ``path``: that section replaced, or added at
    the end; the rest of the page kept as it is (a new page gets a heading of its own)."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head, sections = split_sections(text)
    sections[title] = body.strip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(join_sections(head, sections))


def keep_own_sections(old: str, new: str) -> str:
    """The page ``new`` (the full record) with the OWN_SECTIONS of ``old`` after its own: the
    record's command does not write them, so rewriting the page must not drop them."""
    _, kept = split_sections(old)
    head, sections = split_sections(new)
    sections.update({t: kept[t] for t in OWN_SECTIONS if t in kept and t not in sections})
    return join_sections(head, sections)
