"""The Hugging Face causal LM (selmem.hf): generate() with the cache equals recomputing from the
start, decoding after an awkward prefill equals forward, and save/load round trips."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from selmem.hf import SelmemForCausalLM, SelmemHFConfig  # noqa: E402
from tests.helpers import assert_close, tiny_cfg, tokens  # noqa: E402


def hf_model(**overrides) -> SelmemForCausalLM:
    cfg = tiny_cfg(**overrides)
    return SelmemForCausalLM(SelmemHFConfig.from_selmem(cfg, segment_len=8)).double().eval()


def test_greedy_generate_with_cache_equals_recomputing_every_step():
    model = hf_model()
    prompt = tokens(2, 11)
    seen = []  # tokens embedded per call: the prompt (in chunks that end at segment boundaries), then one a step
    hook = model.model.embed.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=21, do_sample=False)
    hook.remove()
    assert seen == [8, 3] + [1] * 20  # segment_len 8
    with torch.no_grad():
        ref = prompt
        for _ in range(21):  # no cache: the whole sequence again at every step
            nxt = model(ref).logits[:, -1].argmax(-1, keepdim=True)
            ref = torch.cat([ref, nxt], dim=1)
    assert out.shape == (2, 32)
    assert torch.equal(out, ref)
    assert len(set(out[0, 11:].tolist())) > 1  # not a degenerate constant continuation


@pytest.mark.parametrize("prefill", [7, 33], ids=lambda n: f"prefill{n}")
def test_token_by_token_after_prefill_equals_forward(prefill):
    model = hf_model(select="topk", compress="avgpool")
    x = tokens(2, 41)
    with torch.no_grad():
        whole = model(x).logits
        out = model(x[:, :prefill], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(prefill, x.shape[1]):
            out = model(x[:, t : t + 1], cache=cache)
            steps.append(out.logits)
            cache = out.cache
    assert_close("logits", whole, torch.cat(steps, 1), atol=1e-10)
    assert cache.seen == 41


def test_save_pretrained_then_from_pretrained_and_auto_class(tmp_path):
    model = hf_model(slot_decay=True, meta_cache=True)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    x = tokens(2, 19)
    loaded = SelmemForCausalLM.from_pretrained(tmp_path).double().eval()
    auto = AutoModelForCausalLM.from_pretrained(tmp_path).double().eval()
    assert type(auto) is SelmemForCausalLM
    assert AutoConfig.from_pretrained(tmp_path).model_type == "selmem"
    with torch.no_grad():
        want = model(x).logits
        assert torch.equal(want, loaded(x).logits)
        assert torch.equal(want, auto(x).logits)
    assert loaded.model.cfg == model.model.cfg


def test_labels_give_the_shifted_cross_entropy():
    model = hf_model()
    x = tokens(2, 12)
    out = model(x, labels=x)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    assert_close("loss", want, out.loss, atol=1e-12)
    out.loss.backward()
    assert model.model.embed.weight.grad.abs().sum() > 0


def test_padded_batch_through_hf_forward_and_decode_refuses_it():
    model = hf_model()
    x = tokens(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    with torch.no_grad():
        padded = model(x, attention_mask=mask).logits
        alone = model(x[1:, 4:]).logits
    assert_close("row 1", alone[0], padded[1, 4:], atol=1e-12)
    with pytest.raises(ValueError, match="unpadded rows"):
        model(x, attention_mask=mask, use_cache=True)
