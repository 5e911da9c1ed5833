"""The Hugging Face causal LM (selmem.hf): generate() with the cache equals recomputing from the
start, decoding after an awkward prefill equals forward, save/load round trips the config that
runs, the flat config sizes the model, and training through labels= is selmem train's objective
(Trainer trains head B and its teacher)."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from selmem import SelectiveMemoryTransformer, SelmemConfig  # noqa: E402
from selmem.files import BadFile  # noqa: E402
from selmem.hf import SelmemForCausalLM, SelmemHFConfig  # noqa: E402
from selmem.tasks import MQARTask  # noqa: E402
from selmem.tasks.base import Batch  # noqa: E402
from selmem.train.loop import forward_kwargs, host_checks, task_loss  # noqa: E402
from tests.helpers import assert_close, tiny_cfg, tokens  # noqa: E402


def hf_model(**overrides) -> SelmemForCausalLM:
    cfg = tiny_cfg(**overrides)
    return SelmemForCausalLM(SelmemHFConfig.from_selmem(cfg, segment_len=8)).double().eval()


def test_greedy_generate_with_cache_equals_recomputing_every_step():
    prompt = tokens(2, 11)  # drawn first: the seed's prompt whatever the model draws (its probe)
    model = hf_model()
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


# --- training through labels= (issue 27, item 1): the HF loss is selmem train's objective -------

RECALL = MQARTask(num_pairs=2, num_keys=4, num_values=4, segment_len=8, num_segments=3, noise_vocab=2,
                  placement="random", noise="shared", marked=True)  # vocab 13, rows of 24, 2 answers each


def hf_labels(batch: Batch) -> torch.Tensor:
    """A task batch's scored targets as HF labels: logits at t predict labels[t + 1]."""
    assert not batch.loss_mask[:, -1].any()  # the last position has no label to its right
    labels = torch.full_like(batch.tokens, -100)
    labels[:, 1:] = batch.targets[:, :-1].masked_fill(~batch.loss_mask[:, :-1], -100)
    return labels


def selmem_train_objective(model: SelectiveMemoryTransformer, batch: Batch, segment_len: int) -> torch.Tensor:
    """What `selmem train` minimises on ``batch`` (train/loop.py: task loss + out.losses["aux"])."""
    n = host_checks(model, batch)
    out = model.forward_sequence(batch.tokens, segment_len, **forward_kwargs(model, batch, n))
    return task_loss(out.logits, batch, n)[0] + out.losses["aux"]


@pytest.mark.parametrize("credit", ["probe", "read", "none"])
def test_training_loss_with_labels_is_the_selmem_train_objective(credit):
    model = hf_model(credit=credit, lambda_score=0.1, score_margin=0.1).train()  # every auxiliary term nonzero
    batch = RECALL.batch("train", 0, 4)
    out = model(batch.tokens, labels=hf_labels(batch))
    # to float32 precision: selmem train's task loss is computed in float32 (train/loop.py)
    assert_close("loss", selmem_train_objective(model.model, batch, 8), out.loss, atol=1e-6)
    assert_close("parts", out.loss, out.ce + out.aux, atol=1e-12)
    assert float(out.aux.detach()) > 0
    model.eval()  # eval losses stay the plain cross-entropy, comparable with any HF model's
    with torch.no_grad():
        plain = model(batch.tokens, labels=hf_labels(batch))
    assert_close("eval loss", out.ce, plain.loss, atol=1e-12)
    assert plain.aux is None and plain.ce is None


def test_training_with_labels_refuses_the_decoding_cache():
    model = hf_model().train()
    x = tokens(2, 12)
    with pytest.raises(ValueError, match="without cache/use_cache"):
        model(x, labels=x, use_cache=True)


def test_a_trainer_step_trains_head_b_and_its_teacher_by_the_selmem_objective(tmp_path):
    pytest.importorskip("accelerate")  # Trainer needs it
    from transformers import Trainer, TrainingArguments

    model = SelmemForCausalLM(SelmemHFConfig.from_selmem(tiny_cfg(vocab_size=RECALL.vocab_size), segment_len=8))
    batch = RECALL.batch("train", 0, 4)
    rows = [{"input_ids": x, "labels": y} for x, y in zip(batch.tokens, hf_labels(batch), strict=True)]
    # the step plain SGD takes on the selmem train objective, by hand on a copy
    ref = copy.deepcopy(model.model).train()
    selmem_train_objective(ref, batch, 8).backward()
    lr = 0.5
    want = {k: p.detach() - lr * p.grad for k, p in ref.named_parameters() if p.grad is not None}
    before = {k: p.detach().clone() for k, p in model.model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=lr,
                             optim="sgd", lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
                             report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no",
                             disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=rows).train()
    after = dict(model.model.named_parameters())
    score = "select.0.score.0.weight"  # head B of layer 0
    assert not torch.equal(after[score], before[score])
    assert_close(score, want[score], after[score], atol=1e-6)
    assert_close("probe.q.weight", want["probe.q.weight"], after["probe.q.weight"], atol=1e-6)
    assert not torch.equal(after["probe.q.weight"], before["probe.q.weight"])  # the teacher learns too
    for k, p in after.items():  # every parameter took exactly that step (order of rows aside)
        assert_close(k, want.get(k, before[k]), p, atol=1e-5)


# --- the flat config (issue 27, item 2) -------------------------------------------------------


def test_flat_config_kwargs_size_the_model_and_unknown_ones_are_refused():
    config = AutoConfig.for_model("selmem", vocab_size=1000, hidden_size=64, num_hidden_layers=3,
                                  num_attention_heads=8, slots=8)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        1000, 64, 3, 8)
    assert config.slots == 8 and config.selmem["d_model"] == 64
    model = AutoModelForCausalLM.from_config(config)
    cfg = model.model.cfg
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.slots) == (1000, 64, 3, 8, 8)
    assert model.model.embed.weight.shape == (1000, 64) and len(model.model.blocks) == 3
    assert AutoConfig.for_model("selmem").vocab_size == SelmemConfig().vocab_size  # defaults read as well
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['vocab_sz'\]"):
        AutoConfig.for_model("selmem", vocab_sz=1000)
    with pytest.raises(ValueError, match="hidden_size=64 and d_model=32"):
        SelmemHFConfig(hidden_size=64, d_model=32)
    with pytest.raises(ValueError, match="credit must be one of"):
        SelmemHFConfig(credit="teacher")
    SelmemHFConfig(pad_token_id=0, dtype="float32", output_attentions=False)  # HF's own arguments pass


def test_save_pretrained_records_the_config_that_runs(tmp_path):
    model = hf_model(credit="probe", slots=6)
    assert model.model.cfg.credit == "probe" and model.model.probe is not None  # it was set to 'none'
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["selmem"] == model.model.cfg.to_dict()  # every field, as it runs
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).double()
    assert loaded.model.cfg == model.model.cfg
    assert loaded.config.hidden_size == model.model.cfg.d_model
    want = model.state_dict()
    assert any(k.startswith("model.probe.") for k in want)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in want.items())  # the probe's weights too


def test_config_json_keeps_the_objective_flat_and_reads_it_nested_too(tmp_path):
    """config.json spells the objective's fields flat, as every export before ObjectiveConfig did
    (``"credit": "probe"``), so those load; a ``selmem`` dict with them nested loads the same."""
    model = hf_model(credit="read", lambda_read=0.0, slots=6)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["selmem"]["credit"] == "read" and "objective" not in saved["selmem"]
    saved["selmem"] = model.model.cfg.to_dict(nested=True)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, lambda_score=0.5)  # a flat kwarg still overrides
    assert loaded.model.cfg == replace(model.model.cfg, lambda_score=0.5)
    assert loaded.config.credit == "read" and loaded.config.lambda_score == 0.5
    loaded.config.lambda_credit = 0.25  # the flat attributes set the objective's fields too
    assert loaded.config.selmem_config().objective.lambda_credit == 0.25


def test_a_checkpoint_without_the_probe_loads_with_a_fresh_initialised_one(tmp_path):
    hf_model(credit="none").save_pretrained(tmp_path)  # what selmem export writes
    model = AutoModelForCausalLM.from_pretrained(tmp_path, credit="probe")
    assert model.config.credit == "probe"
    fresh = SelectiveMemoryTransformer(model.model.cfg).probe
    for (name, p), q in zip(model.model.probe.named_parameters(), fresh.parameters(), strict=True):
        assert torch.isfinite(p).all(), name  # from_pretrained allocated it uninitialised (1e38, NaN)
        assert float(p.abs().max()) <= 2 * float(q.abs().max()) + 1e-6, name


# --- the model utilities (issue 27, item 2): resize, tie, hidden states, inputs_embeds, checkpointing ---


def test_resize_token_embeddings_resizes_the_embedding_the_head_the_probe_and_the_config(tmp_path):
    model = hf_model()  # credit='probe': the probe embeds ids and predicts them too
    x = tokens(2, 12)
    with torch.no_grad():
        before = model(x).logits
    model.resize_token_embeddings(20)
    m = model.model
    assert m.embed.weight.shape == (20, 32) and m.head.weight.shape == (20, 32)
    assert m.probe.embed.weight.shape == (20, 32) and m.probe.out.weight.shape == (20, 32)
    assert model.config.vocab_size == m.cfg.vocab_size == 20 and model.config.selmem["vocab_size"] == 20
    with torch.no_grad():
        after = model(x).logits
        wide = model(tokens(2, 12, vocab=20)).logits  # the new ids are in range now
    assert after.shape == (2, 12, 20) and wide.shape == (2, 12, 20)
    assert torch.equal(after[..., :16], before)  # the old vocabulary's rows are kept
    model.train()(x, labels=x).loss.backward()  # the probe's teacher runs on the resized vocabulary
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).double().eval()
    assert loaded.model.cfg.vocab_size == 20
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, after)
    model.resize_token_embeddings(10)  # and down
    assert model.model.head.weight.shape == (10, 32) and model.model.cfg.vocab_size == 10


def test_tied_word_embeddings_share_one_weight_through_save_load_and_resize(tmp_path):
    assert hf_model().get_output_embeddings() is not hf_model().get_input_embeddings()  # untied by default
    config = SelmemHFConfig.from_selmem(tiny_cfg(), segment_len=8, tie_word_embeddings=True)
    model = SelmemForCausalLM(config).double().eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    loaded = SelmemForCausalLM.from_pretrained(tmp_path).double().eval()
    assert loaded.model.head.weight is loaded.model.embed.weight
    assert torch.equal(loaded.model.head.weight, model.model.embed.weight)
    x = tokens(2, 12)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    loaded.resize_token_embeddings(24)
    assert loaded.model.head.weight is loaded.model.embed.weight and loaded.model.head.weight.shape == (24, 32)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_output_hidden_states_are_the_embeddings_and_every_block_output(padded):
    model = hf_model(n_layers=3)
    x = tokens(2, 20)
    mask = torch.ones_like(x)
    if padded:
        mask[1, :5] = 0
    blocks = [[] for _ in model.model.blocks]  # each block's outputs, segment by segment
    hooks = [b.register_forward_hook(lambda mod, a, out, l=l: blocks[l].append(out[0]))
             for l, b in enumerate(model.model.blocks)]
    with torch.no_grad():
        out = model(x, attention_mask=mask, output_hidden_states=True)
    for h in hooks:
        h.remove()
    hs = out.hidden_states
    assert isinstance(hs, tuple) and len(hs) == 4 and all(h.shape == (2, 20, 32) for h in hs)
    real = mask.bool()
    assert torch.equal(hs[0][real], model.model.embed(x)[real])
    assert_close("head(last)", out.logits[real], model.model.head(hs[-1])[real], atol=1e-12)
    if not padded:  # segments in order: the hooks' outputs are the sequence's
        for l in range(2):
            assert torch.equal(hs[l + 1], torch.cat(blocks[l], dim=1))
        assert torch.equal(hs[3], model.model.norm(torch.cat(blocks[2], dim=1)))
    assert model(x, attention_mask=mask).hidden_states is None  # only when asked (config default False)


def test_inputs_embeds_give_the_logits_and_losses_of_input_ids_where_the_model_can():
    model = hf_model(credit="read")
    x = tokens(2, 20)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    embeds = model.model.embed(x).detach()
    with torch.no_grad():
        for kw in ({}, {"attention_mask": mask}):
            assert torch.equal(model(inputs_embeds=embeds, **kw).logits, model(x, **kw).logits)
    model.train()  # training through labels= with credit='read': every loss term, InfoNCE included
    assert torch.equal(model(inputs_embeds=embeds, labels=x).loss, model(x, labels=x).loss)
    embeds.requires_grad_(True)
    model(inputs_embeds=embeds, labels=x).loss.backward()
    assert embeds.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs input_ids: head B's probe teacher"):
        hf_model().train()(inputs_embeds=embeds, labels=x)
    with pytest.raises(ValueError, match="decoding with a cache takes input_ids"):
        model.eval()(inputs_embeds=embeds, use_cache=True)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(x, inputs_embeds=embeds)


def test_gradient_checkpointing_recomputes_the_blocks_with_the_same_loss_and_gradients():
    model = hf_model(credit="probe", lambda_score=0.1).train()
    ref = copy.deepcopy(model)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and model.model.gradient_checkpointing
    calls = []
    model.model.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))  # recomputing may stop early
    batch = RECALL.batch("train", 0, 2)
    labels = hf_labels(batch)
    out, want = model(batch.tokens, labels=labels), ref(batch.tokens, labels=labels)
    assert len(calls) == 3  # three segments
    out.loss.backward()
    want.loss.backward()
    assert len(calls) == 6  # each block ran again in the backward pass
    assert torch.equal(out.loss, want.loss)
    grads = {k: p.grad for k, p in ref.named_parameters() if p.grad is not None}
    assert grads.keys() == {k for k, p in model.named_parameters() if p.grad is not None}
    for k, p in model.named_parameters():
        if p.grad is not None:
            assert_close(k, grads[k], p.grad, atol=1e-12)


# --- padded prompts (issue 27, item 3): a left-padded batch generates what each prompt generates alone ---


def test_left_padded_prompts_generate_what_each_prompt_generates_alone():
    model = hf_model()
    prompts = [tokens(1, 5), tokens(1, 11), tokens(1, 8)]  # the middle one unpadded
    ids = torch.zeros(3, 11, dtype=torch.long)
    mask = torch.zeros(3, 11, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, as a tokenizer with padding_side='left' makes
        ids[i, 11 - p.shape[1] :], mask[i, 11 - p.shape[1] :] = p[0], 1
    greedy = dict(max_new_tokens=9, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, **greedy)
        alone = [model.generate(p, attention_mask=torch.ones_like(p), **greedy) for p in prompts]
        by_length = model.generate(ids, attention_mask=mask, max_length=15, do_sample=False, pad_token_id=0)
    assert out.shape == (3, 20) and torch.equal(out[:, :11], ids)
    for i, p in enumerate(prompts):
        assert torch.equal(out[i, 11:], alone[i][0, p.shape[1] :]), f"row {i}"
    assert torch.equal(by_length, out[:, :15])  # max_length counts the padded input, as in a batch
    with pytest.raises(ValueError, match="return_dict_in_generate"):
        model.generate(ids, attention_mask=mask, return_dict_in_generate=True, **greedy)


@pytest.mark.parametrize("keep", [0, 4, 100, 0.5, -1], ids=["empty", "in-the-size", "in-the-header", "half", "last-byte"])
@pytest.mark.parametrize("loader", [SelmemForCausalLM, AutoModelForCausalLM], ids=["class", "auto"])
def test_from_pretrained_on_a_truncated_export_names_the_file(tmp_path, keep, loader):
    """transformers raised safetensors' 'incomplete metadata, file not fully covered', naming no file (issue 28)."""
    hf_model(credit="none").save_pretrained(tmp_path)  # what selmem export writes
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(BadFile, match=f"^{re.escape(str(weights))}: not a readable safetensors file") as err:
        loader.from_pretrained(tmp_path)
    assert "\n" not in str(err.value)
