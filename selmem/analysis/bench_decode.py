"""``selmem bench --bench.decode``: token-by-token decoding, selmem's cache against GPT-2's.

    selmem bench --config configs/cpu/code-lm.yaml --exp.model.d-model 128 --exp.train.threads 1 \\
        --bench.decode --bench.page docs/BENCHMARKS.md

After a prompt of ``decode_prompt`` random tokens, each model decodes ``decode_tokens`` more
greedily, each in a fresh process, with random weights (speed does not depend on them):

- selmem through ``generate.sample``, the loop ``selmem generate`` runs (decode.py's cache:
  the memory plus one open segment);
- selmem through transformers' ``generate`` (selmem.hf), which adds that loop's own per-token work;
- GPT-2 (transformers' GPT2LMHeadModel, its KV cache, ``generate``) of selmem's width and heads,
  with the number of layers that brings its parameters, its position table left out, nearest to
  selmem's (the table is a lookup of one row a token, and its size is set by the context length
  alone: 4K positions of width 128 are 0.5M parameters).

A model's decoding rate is (decode_tokens - 1) / (time of the last new token - time of the
first), so the prompt's prefill is not in it; the prompt's time is the first token's. Medians
over ``repeats`` runs after one warm-up. The operators one selmem token dispatches (aten ops, by
a TorchDispatchMode) are counted too: a count no machine's load moves.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

from selmem.experiment import ExperimentConfig

ROWS = {"selmem": "selmem (`selmem generate`'s loop)", "selmem-hf": "selmem (transformers' `generate`)",
        "gpt2": "GPT-2 (transformers' `generate`, KV cache)"}


def _setup(exp_dict: dict[str, Any]):
    import torch

    from selmem.train.loop import resolve_device

    exp = ExperimentConfig.from_dict(exp_dict)
    if exp.train.threads > 0:
        torch.set_num_threads(exp.train.threads)
    torch.manual_seed(exp.train.seed)
    return exp, resolve_device(exp.train.device)


def gpt2_config(cfg: Any, positions: int, target_params: int):
    """transformers' GPT2Config of selmem's width, heads and vocabulary with ``positions``
    positions and the number of layers whose parameters without the position table come nearest
    to ``target_params``."""
    from transformers import GPT2Config

    d, V = cfg.d_model, cfg.vocab_size
    per_layer = 12 * d * d + 13 * d  # attention (4 d x d and biases), MLP (8 d x d and biases), 2 norms
    layers = max(1, round((target_params - V * d - 2 * d) / per_layer))
    return GPT2Config(vocab_size=V, n_embd=d, n_head=cfg.n_heads, n_layer=layers, n_positions=positions,
                      bos_token_id=0, eos_token_id=None, pad_token_id=0)


def decode_one(name: str, exp_dict: dict[str, Any], prompt_len: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    """Worker: time model ``name`` (a key of ROWS) decoding ``new_tokens`` greedily after a random
    prompt of ``prompt_len`` tokens -> params, prompt seconds, decoding tokens/s (medians)."""
    import torch

    from selmem.baselines import params
    from selmem.model import SelectiveMemoryTransformer

    exp, device = _setup(exp_dict)
    cfg, seg = exp.model, exp.segment_len()
    selmem = SelectiveMemoryTransformer(cfg).to(device).eval()
    gen = torch.Generator().manual_seed(exp.train.seed)
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len), generator=gen).to(device)
    row: dict[str, Any] = {"model": name, "device": str(device), "prompt": prompt_len, "tokens": new_tokens}
    if name == "selmem":
        run, row["params"] = _selmem_run(selmem, prompt, new_tokens, seg), params(selmem)
    else:
        model, row["params"], row["position_params"] = _hf_model(name, selmem, cfg, seg, prompt_len + new_tokens)
        run = _hf_run(model.to(device).eval(), prompt, new_tokens)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run(sync)  # warm-up
    times = [run(sync) for _ in range(repeats)]
    row["prompt_s"] = statistics.median(t[0] for t in times)
    row["tokens_per_s"] = statistics.median((new_tokens - 1) / t[1] for t in times)
    if name == "selmem":
        row["ops_per_token"] = count_ops_per_token(selmem, prompt, seg)
    return row


def _selmem_run(model, prompt, new_tokens: int, seg: int):
    from selmem.generate import sample

    def run(sync) -> tuple[float, float]:  # (prompt and first token, the rest) in seconds
        t0 = time.perf_counter()
        for i, _ in enumerate(sample(model, prompt, new_tokens, temperature=0, segment_len=seg)):
            if i == 0:
                sync()
                t1 = time.perf_counter()
        sync()
        return t1 - t0, time.perf_counter() - t1
    return run


def _hf_model(name: str, selmem, cfg, seg: int, positions: int):
    """(transformers model, its parameters without a position table, the table's) for a row."""
    if name == "selmem-hf":
        from selmem.hf import SelmemForCausalLM, SelmemHFConfig

        model = SelmemForCausalLM(SelmemHFConfig.from_selmem(cfg, segment_len=seg))
        model.model.load_state_dict(selmem.state_dict())
        return model, sum(p.numel() for n, p in model.named_parameters() if ".probe." not in n), 0
    from transformers import GPT2LMHeadModel

    from selmem.baselines import params

    model = GPT2LMHeadModel(gpt2_config(cfg, positions, params(selmem)))
    table = model.transformer.wpe.weight.numel()
    return model, sum(p.numel() for p in model.parameters()) - table, table


def _hf_run(model, prompt, new_tokens: int):
    """transformers' greedy generate, timed by a streamer: it is handed the prompt, then each token."""
    import torch

    class Clock:
        def put(self, value) -> None:
            self.stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    def run(sync) -> tuple[float, float]:
        clock = Clock()
        clock.stamps = []
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, streamer=clock)
        sync()
        first, last = clock.stamps[1], clock.stamps[-1]  # [0] is the prompt
        return first - t0, last - first
    return run


def count_ops_per_token(model, prompt, seg: int) -> int:
    """aten operators one decoded token dispatches, averaged over a segment's tokens (the
    memory's write and the next segment's read included)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from selmem import decode as decoding

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    with torch.inference_mode():
        logits, cache = model.decode(prompt, segment_len=seg)
        token = logits[:, -1:].argmax(-1)
        with Count() as count:
            for _ in range(seg):
                decoding.step(model, token, cache)
    return round(count.n / seg)


def check(prompt_len: int, new_tokens: int) -> None:
    """Refuse, before any timing, what ``rows`` could not finish: bad lengths, no transformers."""
    if prompt_len < 1 or new_tokens < 2:
        raise ValueError(f"--bench.decode-prompt must be >= 1 and --bench.decode-tokens >= 2, got "
                         f"{prompt_len} and {new_tokens}")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ImportError("decoding against GPT-2 needs transformers: pip install 'selmem[hf]'") from None


def rows(exp: ExperimentConfig, prompt_len: int, new_tokens: int, repeats: int, fresh) -> list[dict[str, Any]]:
    """One row per model of ROWS, each from ``decode_one`` run by ``fresh`` (a fresh process)."""
    check(prompt_len, new_tokens)
    exp = replace(exp, arch="selmem")
    return [fresh(decode_one, name, exp.to_dict(), prompt_len, new_tokens, repeats) for name in ROWS]


def bars(rows_: list[dict[str, Any]], device: str) -> list[str]:
    """The issue's decoding targets, met or not, from the rows."""
    by = {r["model"]: r for r in rows_}
    if "selmem" not in by:
        return []
    sel, out = by["selmem"]["tokens_per_s"], []
    if device == "cpu":
        out.append(f"selmem decoding at {sel:,.0f} tokens/s: target >= 1,000 tokens/s on one thread "
                   f"{'met' if sel >= 1000 else 'NOT met'}")
    if "gpt2" in by:
        ratio = sel / by["gpt2"]["tokens_per_s"]
        out.append(f"selmem decoding at {ratio:.2f}x GPT-2 of its size after the same prompt: target >= 1x "
                   f"{'met' if ratio >= 1 else 'NOT met'}")
    return out


def table(rows_: list[dict[str, Any]]) -> str:
    """The decoding table, each model's rate also as a multiple of GPT-2's."""
    base = next((r["tokens_per_s"] for r in rows_ if r["model"] == "gpt2"), None)
    lines = ["| model | params | prompt tokens | new tokens | prompt s | decoding tokens/s | x GPT-2 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows_:
        p = f"{r['params']:,}" + (f" (+{r['position_params']:,} position table)" if r.get("position_params") else "")
        x = f"{r['tokens_per_s'] / base:.2f}" if base else "-"
        lines.append(f"| {ROWS[r['model']]} | {p} | {r['prompt']:,} | {r['tokens']:,} | {r['prompt_s']:.2f} | "
                     f"{r['tokens_per_s']:,.0f} | {x} |")
    ops = next((r["ops_per_token"] for r in rows_ if r.get("ops_per_token")), None)
    if ops:
        lines.append(f"\nselmem dispatches {ops} aten operators per decoded token (mean over a segment, its write "
                     "and the next read included; counted, not timed).")
    return "\n".join(lines)


def section(command: str, rows_: list[dict[str, Any]], mach: dict[str, Any], threads: int) -> str:
    """The page's decoding section: the command, the machine, the targets, the table."""
    lines = [f"Generated by `{command}`.", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in mach.items()) + f", threads {threads or 'default'}.", ""]
    lines += [f"- {b}" for b in bars(rows_, mach.get("device", "cpu"))]
    lines += ["", table(rows_), "",
              "Greedy decoding after a random prompt, random weights; decoding tokens/s = (new tokens - 1) / "
              "(last new token's time - first's), so the prompt's prefill is not in it (prompt s is the first "
              "token's time); medians of the timed runs, each model in a fresh process. GPT-2 has selmem's width "
              "and heads and the layers that bring its parameters without the position table nearest to selmem's "
              "(selmem/analysis/bench_decode.py)."]
    return "\n".join(lines)
