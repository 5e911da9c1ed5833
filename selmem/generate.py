"""Sampling for a person: stream tokens from a trained model at constant memory.

The prompt is fed through ``model.decode`` (checked once) and each sampled token after it through
``decode.step`` (the model's own tokens need no check); the cache holds the memory and one open
segment's buffers (decode.py), and nothing here keeps the tokens, so any ``max_new_tokens`` runs
in the same memory. Byte-level models (vocab 256, code-lm) read and print
text; others read and print token ids.
"""

from __future__ import annotations

import codecs
import resource
import sys
import time
from collections.abc import Iterator
from typing import TextIO

import torch
from torch import Tensor

from selmem import decode as decoding


def pick(logits: Tensor, temperature: float, top_k: int, generator: torch.Generator | None) -> Tensor:
    """logits (B, V) -> next tokens (B, 1): argmax at temperature 0, else a sample from
    softmax(logits / temperature) over the top_k most likely (0 = all)."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.inference_mode()  # nothing made here outlives the loop: no autograd bookkeeping per operator
def sample(model, prompt: Tensor, max_new_tokens: int, temperature: float = 0.8, top_k: int = 0,
           seed: int = 0, segment_len: int | None = None) -> Iterator[tuple[int, object]]:
    """prompt (1, P) long -> yields (token id, cache after it) for each of max_new_tokens new tokens.
    The first token is yielded once the prompt is in the cache (``cache.seen`` is then P + 1)."""
    gen = torch.Generator(device=prompt.device).manual_seed(seed)
    logits, cache = model.decode(prompt, segment_len=segment_len)
    for _ in range(max_new_tokens):
        token = pick(logits[:, -1], temperature, top_k, gen)  # (1, 1)
        logits = decoding.step(model, token, cache)
        yield int(token), cache


def encode_prompt(text: str, vocab_size: int) -> list[int]:
    """Bytes for a byte-level model (vocab 256), else whitespace-separated token ids."""
    if vocab_size == 256:
        return list(text.encode("utf-8"))
    return [int(t) for t in text.split()]


def stream(model, prompt: list[int], max_new_tokens: int, temperature: float, top_k: int, seed: int,
           segment_len: int | None, out: TextIO = sys.stdout, stats: TextIO | None = None) -> int:
    """Write the sample to ``out`` as it comes (text for byte-level models, ids otherwise); with
    ``stats``, a line once the prompt is in (its seconds, with the first new token's), then at 10,
    100, 1000, ... tokens and at the end: tokens/s of the tokens after the first (so a long prompt
    does not dilute the decoding rate), floats in the cache, and the process's peak resident
    memory. Returns the tokens made."""
    vocab = model.cfg.vocab_size
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token (--prompt TEXT)")
    if min(prompt) < 0 or max(prompt) >= vocab:
        raise ValueError(f"prompt token ids must lie in [0, {vocab})")
    device = next(model.parameters()).device
    text = codecs.getincrementaldecoder("utf-8")(errors="replace") if vocab == 256 else None
    start, mark, n = time.perf_counter(), 10, 0
    for n, (token, cache) in enumerate(sample(model, torch.tensor([prompt], device=device), max_new_tokens,
                                              temperature, top_k, seed, segment_len), start=1):
        out.write(text.decode(bytes([token])) if text is not None else f"{token} ")
        if n % 64 == 0:
            out.flush()
        if stats is None:
            continue
        now = time.perf_counter()
        if n == 1:
            first = now
            stats.write(f"\n[prompt of {len(prompt):,} tokens and the first new one: {now - start:.3f} s]\n")
        if n == mark or n == max_new_tokens:
            rate = (n - 1) / (now - first) if n > 1 else 1 / (now - start)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            stats.write(f"\n[{n} tokens: {rate:.0f} tokens/s, cache {cache.num_floats():,} floats, "
                        f"peak RSS {rss:.0f} MiB]\n")
            stats.flush()
            mark *= 10
    out.write("\n")
    out.flush()
    return n
