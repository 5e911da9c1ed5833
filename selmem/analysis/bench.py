"""selmem bench: speed and memory of every model at one size, on the task's training batches.

    selmem bench --config configs/cpu.yaml [--bench.models selmem full armt] [--bench.seq-len 1024]

Per model, each in a fresh process (so that peak memory is its own): parameters, carried state
(floats per sequence at the benchmark's length), training throughput (the trainer's step:
forward over the whole sequence streamed in segments, backward, AdamW step, on the task's training
batch; selmem's with its train-time teacher, and once more without it), streaming inference throughput (no
gradient), and peak memory: the CUDA allocator's peak on a GPU, the process's peak resident set
on a CPU (which includes Python and torch themselves, about 300 MB). Throughputs are medians
over ``repeats`` timed steps after ``warmup`` untimed ones. txl/rmt/armt are sized to selmem's
state as in ``selmem compare``. Targets for speed and memory live here, not in the tests.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from selmem.analysis import bench_scale as scale
from selmem.analysis.bench_scale import step_loss, training_batch
from selmem.baselines import ARCHS, MODELS
from selmem.experiment import ExperimentConfig


@dataclass
class BenchConfig:
    """What to time, and how long."""

    models: list[str] = field(default_factory=lambda: list(MODELS))
    """Registered model names (default: every model of baselines.MODELS)."""
    batch_size: int = 0
    """Sequences per step; 0 = the experiment's train.batch_size (what its trainer steps on)."""
    seq_len: int = 0
    """Tokens per sequence, streamed in the task's segments; 0 = the task's sequence length."""
    warmup: int = 2
    """Untimed steps before timing (allocator and thread-pool warm-up)."""
    repeats: int = 5
    """Timed steps; the median is reported."""
    match_state: bool = True
    """Size txl/rmt/armt to selmem's carried state, as compare does."""
    out: str = ""
    """Also write the table to this markdown file."""
    page: str = ""
    """Write the full record here (docs/BENCHMARKS.md): this table with each model's training
    speed as a ratio to local, streaming at stream_lengths, a selmem step's breakdown, a PNG and
    the machine. Run it on idle cores: timings on a loaded machine mean nothing."""
    stream_models: list[str] = field(default_factory=lambda: ["selmem", "txl", "full"])
    """Models streamed at growing lengths (with --bench.page or --bench.stream-lengths)."""
    stream_lengths: list[int] = field(default_factory=list)
    """Tokens streamed per model (batch 1, no gradient); empty = none, or 1K 16K 256K 1M with --bench.page."""
    stream_budget_s: float = 600.0
    """Give up on a (model, length) after this many seconds (full attention is quadratic); 0 = never."""
    decode: bool = False
    """Time token-by-token decoding instead: selmem against a GPT-2 of its size after the same
    prompt (analysis/bench_decode.py); with --bench.page, write the page's decoding section only."""
    decode_prompt: int = 4096
    """Prompt tokens before the decoded ones (--bench.decode and --bench.gpu)."""
    decode_tokens: int = 1000
    """Tokens decoded greedily after the prompt (--bench.decode and --bench.gpu)."""
    gpu: bool = False
    """The GPU record instead (analysis/bench_gpu.py): --bench.models trained and streamed on CUDA
    in bf16 with torch.compile, and decoding; with --bench.page, write the page's GPU section only.
    Needs a CUDA device (scripts/gpu-bench.sh runs it)."""
    budget_s: float = 0.0
    """With --bench.gpu: time no further model once this many seconds have passed (the first is
    always timed); 0 = no limit."""


@dataclass
class BenchArgs:
    """Time every model's training and streaming steps at one size."""

    bench: BenchConfig = field(default_factory=BenchConfig)
    exp: ExperimentConfig = field(default_factory=ExperimentConfig)
    """Model size, task (vocabulary, segment length), device and threads (--config)."""


def _time(fn, warmup: int, repeats: int, sync) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_one(name: str, exp_dict: dict[str, Any], bc_dict: dict[str, Any]) -> dict[str, Any]:
    """Worker: build model ``name`` from the experiment and time it."""
    import torch

    from selmem.analysis.compare import matched_config
    from selmem.baselines import build_model, params, state_size
    from selmem.train.loop import forward_kwargs, resolve_device

    exp, bc = ExperimentConfig.from_dict(exp_dict), BenchConfig(**bc_dict)
    if exp.train.threads > 0:
        torch.set_num_threads(exp.train.threads)
    torch.manual_seed(exp.train.seed)
    device = resolve_device(exp.train.device)
    cfg = exp.model
    if bc.match_state:
        cfg = matched_config(name, cfg, state_size("selmem", cfg))
    model = build_model(name, cfg).to(device)
    if exp.train.compile:  # as the trainer does: the per-segment forward runs compiled
        model.compile()
    N, seg, B = bc.seq_len or exp.task.seq_len, exp.segment_len(), bc.batch_size
    host = training_batch(exp, B, N)
    batch = host.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # train.autocast as the trainer applies it: the forward pass in bfloat16, the rest in float32
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if exp.train.autocast == "bf16" \
        else contextlib.nullcontext

    def train_step(teacher: bool = True) -> None:
        with amp():
            loss = step_loss(model, host, batch, seg, teacher)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step() -> None:
        with torch.no_grad(), amp():
            model.forward_sequence(batch.tokens, seg)

    model.train()
    t_train = _time(train_step, bc.warmup, bc.repeats, sync)
    # selmem's train-time teacher (memory/credit.py's probe) is part of its training step; the
    # model's own cost, without it, is what the memory adds at inference and is timed too
    taught = "answer_mask" in forward_kwargs(model, batch, 0) and cfg.objective.lambda_credit != 0
    t_alone = _time(lambda: train_step(teacher=False), bc.warmup, bc.repeats, sync) if taught else None
    model.eval()
    t_infer = _time(infer_step, bc.warmup, bc.repeats, sync)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"model": name, "params": params(model), "state_floats": state_size(name, cfg, seq_len=N),
            "seq_len": N, "batch_size": B, "device": str(device),
            "train_tokens_per_s": B * N / t_train,
            "train_tokens_per_s_no_teacher": B * N / t_alone if t_alone else None,
            "infer_tokens_per_s": B * N / t_infer, "peak_mem_mb": peak}


def bench(exp: ExperimentConfig, bc: BenchConfig) -> tuple[list[dict[str, Any]], str]:
    """Time every model of ``bc`` on ``exp``'s model size and task; return rows and a markdown table."""

    unknown = [m for m in bc.models if m not in ARCHS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {sorted(ARCHS)}")
    if bc.repeats < 1:
        raise ValueError(f"--bench.repeats must be >= 1, got {bc.repeats}")
    if bc.batch_size < 0:
        raise ValueError(f"--bench.batch-size must be >= 1 (or 0 for train.batch-size), got {bc.batch_size}")
    bc = replace(bc, batch_size=bc.batch_size or exp.train.batch_size)
    if bc.warmup < 0 or bc.seq_len < 0:
        raise ValueError("--bench.warmup and --bench.seq-len must be >= 0")
    unknown = [m for m in bc.stream_models if m not in ARCHS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown} in --bench.stream-models; known: {sorted(ARCHS)}")
    if any(n < 1 for n in bc.stream_lengths):
        raise ValueError(f"--bench.stream-lengths must be >= 1 tokens each, got {bc.stream_lengths}")
    exp = exp.resolved()
    exp = replace(exp, model=replace(exp.model, max_segment_len=max(exp.model.max_segment_len, exp.segment_len())))
    if bc.gpu:
        return gpu(exp, bc)
    if bc.decode:
        return decoding(exp, bc)
    rows = [_fresh(bench_one, name, exp.to_dict(), bc.__dict__) for name in bc.models]
    table = markdown_table(rows)
    if bc.out:
        Path(bc.out).parent.mkdir(parents=True, exist_ok=True)
        Path(bc.out).write_text(table + "\n")
    lengths = bc.stream_lengths or (STREAM_LENGTHS if bc.page else [])
    stream_rows = [row for name in bc.stream_models for row in stream(name, exp, lengths, bc.stream_budget_s)]
    if stream_rows:
        table += "\n\n" + "\n".join(f"streamed {r['tokens']:,} tokens with {r['model']}: " +
                                     (r["error"] if "error" in r else f"{r['tokens_per_s']:,.0f} tok/s, "
                                      f"peak {r['peak_mem_mb']:.0f} MB") for r in stream_rows)
    if bc.page:
        profile = _fresh(scale.profile_step, exp.to_dict(), bc.batch_size, bc.seq_len, bc.repeats)
        ops = _fresh(scale.count_ops, exp.to_dict(), bc.models, bc.batch_size, bc.seq_len)
        page = Path(bc.page)
        png = scale.plot(stream_rows, page.parent / "img" / "benchmarks.png")
        page.parent.mkdir(parents=True, exist_ok=True)
        text = scale.page(command(), markdown_table(rows), stream_rows, profile, rows,
                          scale.machine(rows[0]["device"] if rows else "cpu"),
                          str(png.relative_to(page.parent)) if png else None, ops)
        page.write_text(scale.keep_own_sections(page.read_text() if page.exists() else "", text))
    return rows, table


def command() -> str:
    """The command line that runs, as the page names it."""
    return "selmem bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "selmem bench"


def gpu(exp: ExperimentConfig, bc: BenchConfig, device: str = "cuda",
        compile: bool = True) -> tuple[list[dict[str, Any]], str]:
    """--bench.gpu (bench_gpu.py): --bench.models on ``device`` in bf16 with torch.compile until
    --bench.budget-s has passed, batch-1 streaming, decoding; and the page's GPU section. Refuses
    in one line before any work where 'cuda' has no device (tests run it with device 'cpu')."""
    from selmem.analysis import bench_decode, bench_gpu

    exp, start = bench_gpu.experiment(exp, device, compile), time.perf_counter()
    bench_decode.check(bc.decode_prompt, bc.decode_tokens)  # before minutes of training steps
    rows, skipped = [], []
    for name in bc.models:
        if rows and bc.budget_s and time.perf_counter() - start > bc.budget_s:  # the first always runs
            skipped.append(name)
        else:
            rows.append(_fresh(bench_one, name, exp.to_dict(), bc.__dict__))
    timed = [r["model"] for r in rows]
    streams = [_fresh(scale.stream_one, name, exp.to_dict(), bench_gpu.STREAM_TOKENS, bc.stream_budget_s)
               for name in bench_gpu.STREAM_MODELS if name in timed]
    decoded = bench_decode.rows(exp, bc.decode_prompt, bc.decode_tokens, bc.repeats, _fresh)
    text = bench_gpu.section(command(), markdown_table(rows), rows, streams, bench_decode.bars(decoded, device),
                             bench_decode.table(decoded), skipped, scale.machine(device), time.perf_counter() - start)
    if bc.page:
        scale.write_section(bc.page, "GPU", text)
    return rows, text


def decoding(exp: ExperimentConfig, bc: BenchConfig) -> tuple[list[dict[str, Any]], str]:
    """--bench.decode: selmem's decoding against GPT-2's (bench_decode.py), and the page's section."""
    from selmem.analysis import bench_decode

    rows = bench_decode.rows(exp, bc.decode_prompt, bc.decode_tokens, bc.repeats, _fresh)
    if bc.page:
        scale.write_section(bc.page, "Decoding", bench_decode.section(
            command(), rows, scale.machine(rows[0]["device"]), exp.train.threads))
    return rows, bench_decode.table(rows)


#: the streaming lengths of the record (the issue's 1K / 16K / 256K / 1M tokens)
STREAM_LENGTHS = [2**10, 2**14, 2**18, 2**20]


def stream(name: str, exp: ExperimentConfig, lengths: list[int], budget_s: float) -> list[dict[str, Any]]:
    """One streaming row per length (shortest first); once a length runs out of the budget or of
    memory, the longer ones are not tried (full attention's cost only grows) and say so."""
    rows: list[dict[str, Any]] = []
    for n in sorted(lengths):
        failed = next((r for r in rows if "error" in r), None)
        rows.append({"model": name, "tokens": n,
                     "error": f"not tried: {failed['tokens']:,} tokens gave '{failed['error']}'"}
                    if failed else _fresh(scale.stream_one, name, exp.to_dict(), n, budget_s))
    return rows


def _fresh(fn, *args: Any) -> Any:
    """fn(*args) in a fresh process, so that its peak memory is its own."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def markdown_table(rows: list[dict[str, Any]]) -> str:
    local = next((r["train_tokens_per_s"] for r in rows if r["model"] == "local"), None)
    lines = ["| model | params | state floats | train tok/s | train x local | stream tok/s | peak MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, speed in scale.train_speeds([r]).items():
            ratio = f"{speed / local:.2f}" if local else "-"
            lines.append(f"| {name} | {r['params']:,} | {r['state_floats']:,} | {speed:,.0f} | "
                         f"{ratio} | {r['infer_tokens_per_s']:,.0f} | {r['peak_mem_mb']:.0f} |")
    if rows:
        r = rows[0]
        lines.append(f"\nbatch {r['batch_size']} x {r['seq_len']} tokens on {r['device']}; "
                     "median of the timed steps; train = the trainer's step (forward over the whole "
                     "sequence in segments, backward, AdamW step) on the task's training batch. selmem's "
                     "includes its train-time teacher (head B's credit, memory/credit.py); the row "
                     "without it is the memory's own cost.")
    return "\n".join(lines)
