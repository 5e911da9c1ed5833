"""selmem in the Hugging Face ecosystem: a PretrainedConfig, a PreTrainedModel with generate().

    pip install 'selmem[hf]'
    import selmem.hf                       # registers model_type "selmem" with the Auto classes
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generate(input_ids, max_new_tokens=100)

``SelmemForCausalLM`` wraps a ``SelectiveMemoryTransformer`` (``model.model``). Its cache is a
``selmem.DecodeCache``: the memory state and the open segment's keys, values and features
(decode.py); the memory is written whenever a segment fills, exactly as in ``forward``. Like
Mamba's, the model is stateful: greedy and sampled search work, beam search and assisted
decoding (which reorder or rewind a cache) do not. Padded prompts (a left-padded batch,
``pipeline`` on several) are generated row by row, each as it is alone (``generate``).

Fine-tuning: in training mode, ``forward(input_ids, labels=labels)`` returns as ``loss`` what
``selmem train`` optimises, the cross-entropy at the labelled positions plus the model's
auxiliary losses and head B's teacher (``credit``, the train-time probe), so ``Trainer`` trains
selection. The config is flat as HF configs are: ``AutoConfig.for_model("selmem",
vocab_size=1000, hidden_size=64, slots=32)`` takes HF's standard names and every SelmemConfig
field, and what config.json says (``credit`` included) is what the model runs.

The usual model utilities work: ``resize_token_embeddings`` (the embedding, the head, the
probe's and ``vocab_size`` together), ``tie_word_embeddings=True`` (the head is the embedding),
``output_hidden_states``, ``inputs_embeds`` (not with the decoding cache, nor for head B's probe
teacher in training: both embed the ids themselves) and ``gradient_checkpointing_enable()``.

``selmem export RUN OUT`` converts a ``selmem train`` checkpoint to this format.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from transformers import (AutoConfig, AutoModelForCausalLM, GenerationConfig, GenerationMixin, PreTrainedConfig,
                              PreTrainedModel)
    from transformers.utils import ModelOutput
except ImportError as e:  # pragma: no cover - the hf extra is installed for the tests
    raise ImportError("selmem.hf needs transformers: pip install 'selmem[hf]'") from e

import torch
import torch.nn.functional as F
from torch import Tensor

from selmem.config import OBJECTIVE_FIELDS, SelmemConfig, flatten_objective
from selmem.decode import DecodeCache
from selmem.model import SelectiveMemoryTransformer
from selmem.memory.objective import Objective
from selmem.train.checkpoint import TRAIN_ONLY


# HF's standard names for the four sizes every config has, and the SelmemConfig fields they are
FLAT = {"vocab_size": "vocab_size", "hidden_size": "d_model", "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads"}
# the flat names of every SelmemConfig field, the objective's among them (config.json is flat, as HF's are)
SELMEM_FIELDS = frozenset(f.name for f in dataclasses.fields(SelmemConfig) if f.name != "objective") | OBJECTIVE_FIELDS


@functools.cache
def hf_standard_kwargs() -> frozenset[str]:
    """The keyword arguments PreTrainedConfig itself takes or writes into config.json: its fields,
    what its __post_init__ consumes, the generation parameters it drops, the Auto classes'
    bookkeeping."""
    base = {f.name for f in dataclasses.fields(PreTrainedConfig)} | set(PreTrainedConfig().to_dict())
    consumed = {"torch_dtype", "num_labels", "name_or_path", "_name_or_path", "_commit_hash", "output_attentions",
                "attn_implementation", "experts_implementation", "per_layer_config", "rope_scaling", "rope_theta",
                "_attn_implementation_internal", "_experts_implementation_internal", "_from_auto", "_from_pipeline",
                "pad_token_id", "bos_token_id", "eos_token_id"}
    return frozenset(base | consumed | set(GenerationConfig._get_default_generation_params()))


class SelmemHFConfig(PreTrainedConfig):
    """A SelmemConfig (``selmem``, its fields as a dict) and the segment length to stream with.

    Flat, as HF configs are: every SelmemConfig field is also a keyword argument and an attribute
    (``config.slots``, ``config.credit``), and so are HF's standard names ``vocab_size``,
    ``hidden_size`` (d_model), ``num_hidden_layers`` (n_layers) and ``num_attention_heads``
    (n_heads). Keyword arguments override the ``selmem`` dict; any other keyword that is not one
    of PreTrainedConfig's own is refused by name. After construction ``selmem`` holds every field,
    validated, so config.json records exactly the model that runs (the probe included:
    ``credit='probe'`` builds it, and Trainer trains it, see SelmemForCausalLM)."""

    model_type = "selmem"
    selmem: dict | None = None
    """The SelmemConfig fields (defaults for the missing ones)."""
    segment_len: int = 0
    """Segment length T for forward and decoding; 0 = max_segment_len."""
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        fields = flatten_objective(self.selmem or {})  # the objective nested too, as SelmemConfig.to_dict(nested=True) gives
        given: dict[str, tuple[str, Any]] = {}  # selmem field -> (the name it came as, value)
        for name in [k for k in kwargs if k in FLAT or k in SELMEM_FIELDS]:
            field, value = FLAT.get(name, name), kwargs.pop(name)
            if field in given and given[field][1] != value:
                raise ValueError(f"SelmemHFConfig got {given[field][0]}={given[field][1]!r} and {name}={value!r}, "
                                 f"two names for SelmemConfig.{field}; pass one")
            given[field] = (name, value)
        unknown = sorted(k for k in kwargs if k not in hf_standard_kwargs())
        if unknown:
            raise ValueError(f"SelmemHFConfig got unknown argument(s) {unknown}: pass SelmemConfig fields, "
                             f"{sorted(FLAT)} or PreTrainedConfig's own arguments")
        fields.update({field: value for field, (_, value) in given.items()})
        self.selmem = SelmemConfig.from_dict(fields).to_dict()  # raises naming a bad field or value
        super().__post_init__(**kwargs)

    def __getattr__(self, name: str) -> Any:  # only for names not found otherwise: the flat fields
        field = FLAT.get(name, name)
        fields = self.__dict__.get("selmem")
        if field in SELMEM_FIELDS and fields is not None and field in fields:
            return fields[field]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        field = FLAT.get(name, name)
        if field in SELMEM_FIELDS and self.__dict__.get("selmem") is not None:
            # checked when the model is built (selmem_config): several fields may change in turn
            self.__dict__["selmem"] = {**self.__dict__["selmem"], field: value}
            return
        super().__setattr__(name, value)

    @classmethod
    def from_selmem(cls, cfg: SelmemConfig, segment_len: int = 0, **kwargs: Any) -> SelmemHFConfig:
        return cls(selmem=cfg.to_dict(), segment_len=segment_len, **kwargs)

    def selmem_config(self) -> SelmemConfig:
        """The model's SelmemConfig, exactly as config.json records it."""
        return SelmemConfig.from_dict(self.selmem or {}).validate()


@dataclass
class SelmemCausalLMOutput(ModelOutput):
    """loss (), logits (B, t, V), and the cache after the tokens when decoding (else None).
    hidden_states: with ``output_hidden_states``, L+1 tensors (B, t, d), HF's convention: the
    embeddings, the outputs of blocks 0..L-2, the last block's after the final norm.

    In training mode with ``labels``, ``loss = ce + aux`` and both parts are set (log them with
    ``.item()``): ce () the cross-entropy at the labelled positions, aux () the weighted auxiliary
    losses with head B's teacher (``Output.losses["aux"]``). Else they are None and ``loss`` is
    the plain cross-entropy."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: DecodeCache | None = None
    ce: Tensor | None = None
    aux: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


class SelmemPreTrainedModel(PreTrainedModel):
    config_class = SelmemHFConfig
    config: SelmemHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True  # the cache cannot be cropped or reordered (no beam search, no assisted decoding)
    # the loss is a per-batch mean (as selmem train's): Trainer then divides it by the gradient
    # accumulation steps itself and passes no num_items_in_batch (which forward would ignore)
    accepts_loss_kwargs = False
    # the blocks are recomputed in the backward pass (SelectiveMemoryTransformer._block)
    supports_gradient_checkpointing = True

    def _init_weights(self, module: torch.nn.Module) -> None:
        """selmem initialises its own parameters (model.py); nothing to add."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``; a damaged weights file (truncated, not safetensors) is a
        BadFile naming it, where transformers raised safetensors' SafetensorError naming no file
        ("incomplete metadata, file not fully covered"; issue 28)."""
        from safetensors import SafetensorError

        from selmem.files import BadFile, one_line

        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as e:
            folder = Path(pretrained_model_name_or_path)
            files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
            where = files[0] if len(files) == 1 else f"a weights file of {folder}"
            raise BadFile(f"{where}: not a readable safetensors file ({one_line(e)}; was it cut short?)") from None

    @torch.no_grad()
    def _initialize_missing_keys(self, is_quantized: bool) -> None:
        """from_pretrained's step for the parameters a checkpoint lacks (an export loaded with
        ``credit="probe"``: a new probe), which it allocated uninitialised: they get the values of a
        freshly built model; the loaded ones (flagged ``_is_hf_initialized``) stay."""
        params = dict(self.named_parameters())
        missing = [k for k, v in params.items() if not getattr(v, "_is_hf_initialized", False)]
        if missing:
            with torch.device("cpu"):
                fresh = {f"{self.base_model_prefix}.{k}": v
                         for k, v in SelectiveMemoryTransformer(self.config.selmem_config()).named_parameters()}
            for k in missing:
                params[k].copy_(fresh[k])
                params[k]._is_hf_initialized = True
        super()._initialize_missing_keys(is_quantized)


class SelmemForCausalLM(SelmemPreTrainedModel, GenerationMixin):
    """A selective-memory Transformer language model with Hugging Face save/load and generate().

    Trainer trains head B through ``labels=``: in training mode (``model.train()``, as Trainer
    sets it) the loss is ``selmem train``'s objective on the batch, the cross-entropy at the
    labelled positions plus ``out.losses["aux"]`` of ``forward_sequence`` (sparsity,
    reconstruction, InfoNCE, score bound and, with ``credit='probe'``, the probe's own loss and
    head B's credit from it). Its scored positions are where the shifted labels are not -100:
    logits at t predict labels[t+1], so position t is an answer with target labels[t+1]
    (``answer_kwargs``). The parts are ``out.ce`` and ``out.aux``. In eval mode the loss is the
    plain cross-entropy, so HF eval losses compare with other models'. The probe
    (``model.model.probe``) is part of the model and of its checkpoint; ``forward`` and
    ``generate`` never use it."""

    # tie_word_embeddings=True: the head's weight is the embedding's (HF ties, saves one, re-ties on load)
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}

    def __init__(self, config: SelmemHFConfig) -> None:
        super().__init__(config)
        self.model = SelectiveMemoryTransformer(config.selmem_config())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our cache is a DecodeCache, made by forward on the first call

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.head

    def set_output_embeddings(self, value: torch.nn.Module) -> None:
        self.model.head = value

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> torch.nn.Embedding:
        """HF's resize of the embedding and the head (rows added at the end, or cut from it), and
        with them what else holds the vocabulary: the config's ``vocab_size``, the model's
        SelmemConfig (its token-range check) and the probe's embedding and output."""
        embed = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        V = embed.num_embeddings
        self.model.cfg = dataclasses.replace(self.model.cfg, vocab_size=V)
        self.config.vocab_size = V
        probe = self.model.probe
        if probe is not None and probe.embed.num_embeddings != V:
            probe.embed = self._get_resized_embeddings(probe.embed, V, mean_resizing=mean_resizing)
            probe.out = self._get_resized_lm_head(probe.out, V, mean_resizing=mean_resizing)
        return embed

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                cache: DecodeCache | None = None, use_cache: bool | None = None, labels: Tensor | None = None,
                reset: Tensor | None = None, doc_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                output_hidden_states: bool | None = None, **kwargs: Any) -> SelmemCausalLMOutput:
        """input_ids (B, t). With ``cache`` or ``use_cache`` the tokens continue the cache's stream
        (token-by-token decoding; a new cache when None); else the whole input is streamed in
        segments, with ``attention_mask`` (B, t) padding anywhere and ``reset`` (B, t) bool or
        ``doc_ids`` (B, t) memory resets at document starts (packed rows). ``labels`` (B, t) are
        shifted inside (HF convention); -100 is ignored. With labels in training mode the loss
        adds the auxiliary losses and head B's teacher (see the class docstring).

        inputs_embeds (B, t, d) instead of input_ids, on the whole-input path only: the decoding
        cache embeds its tokens itself, and so does head B's probe teacher (training with labels
        and ``credit='probe'``), so those need input_ids. output_hidden_states (default: the
        config's): ``hidden_states``, also on the whole-input path only."""
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        seg = self.config.segment_len or None
        train = labels is not None and self.training
        hidden = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if cache is not None or use_cache:
            if attention_mask is not None and not bool(attention_mask.bool().all()):
                raise ValueError("decoding with a cache needs unpadded rows (attention_mask all 1); "
                                 "call forward without use_cache for padded batches")
            if train:
                raise ValueError("training with labels= streams the whole input for the auxiliary losses and "
                                 "head B's teacher; call forward without cache/use_cache (or in eval mode)")
            if inputs_embeds is not None or hidden:
                raise ValueError("decoding with a cache takes input_ids and returns no hidden states (it embeds the "
                                 "tokens itself); call forward without cache/use_cache for inputs_embeds= or "
                                 "output_hidden_states=True")
            logits, cache = self.model.decode(input_ids, cache, seg)
            states = None
        else:
            if train and inputs_embeds is not None and self.model.probe is not None:
                raise ValueError("training with labels= and credit='probe' needs input_ids: head B's probe teacher "
                                 "embeds the token ids itself (or use credit='read'/'none' with inputs_embeds)")
            mask = attention_mask.bool() if attention_mask is not None else None
            answers = answer_kwargs(labels) if train else {}
            out = self.model.forward_sequence(input_ids, seg, attention_mask=mask, reset=reset, doc_ids=doc_ids,
                                              inputs_embeds=inputs_embeds, output_hidden_states=bool(hidden),
                                              **answers)
            logits = out.logits
            states = tuple(out.hidden_states) if hidden else None
        if labels is None:
            return SelmemCausalLMOutput(logits=logits, cache=cache, hidden_states=states)
        pred = logits[:, :-1].flatten(0, 1)
        pred = pred if pred.dtype == torch.float64 else pred.float()  # half precision: upcast the loss
        ce = F.cross_entropy(pred, labels[:, 1:].flatten(), ignore_index=-100)
        if not train:
            return SelmemCausalLMOutput(loss=ce, logits=logits, cache=cache, hidden_states=states)
        aux = out.losses["aux"]  # the objective selmem train optimises (memory/objective.py, train/loop.py)
        return SelmemCausalLMOutput(loss=Objective.total(ce, out.losses), logits=logits, cache=cache, ce=ce, aux=aux, hidden_states=states)

    def generate(self, inputs: Tensor | None = None, generation_config: GenerationConfig | None = None,
                 **kwargs: Any) -> Tensor:
        """HF's generate. A batch with padded rows (``attention_mask`` not all 1, as a tokenizer's
        left padding and ``pipeline`` on several prompts make) is generated row by row, each from its
        real tokens alone, since the decoding cache's segments are shared by the rows (decode.py): so
        each row gets exactly the continuation its prompt gets alone, but the rows run one after the
        other, not batched. Returns the input, its padding kept, then each row's new tokens
        (right-padded with pad_token_id where a row stopped early); ``max_length`` counts the padded
        input, as in a batch. Not with ``return_dict_in_generate`` or a streamer."""
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        if ids is None or mask is None or ids.dim() != 2 or bool(mask.bool().all()):
            return super().generate(inputs, generation_config, **kwargs)
        gen = generation_config or self.generation_config
        if kwargs.get("return_dict_in_generate", gen.return_dict_in_generate) or kwargs.get("streamer") is not None:
            raise ValueError("generate on padded rows runs each row alone and returns only the token ids: pass no "
                             "return_dict_in_generate or streamer, or generate unpadded rows")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")}
        if kwargs.get("max_new_tokens", gen.max_new_tokens) is None:  # max_length counts the padded input
            kwargs["max_new_tokens"] = kwargs.pop("max_length", gen.max_length) - ids.shape[1]
        rows = []
        for x, m in zip(ids, mask.bool(), strict=True):
            real = x[m][None]  # (1, n) the row's prompt without its padding
            out = super().generate(real, generation_config, attention_mask=torch.ones_like(real), **kwargs)
            rows.append(out[0, real.shape[1] :])
        pad = kwargs.get("pad_token_id", gen.pad_token_id)
        eos = kwargs.get("eos_token_id", gen.eos_token_id)
        if pad is None:  # as HF does without a pad token: the end-of-sequence token, else 0
            pad = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
        n = max(len(r) for r in rows)
        new = torch.stack([F.pad(r, (0, n - len(r)), value=int(pad)) for r in rows])  # (B, n)
        return torch.cat([ids, new.to(ids.device)], dim=1)

    def prepare_inputs_for_generation(self, input_ids: Tensor, cache: DecodeCache | None = None,
                                      attention_mask: Tensor | None = None, use_cache: bool | None = True,
                                      **kwargs: Any) -> dict[str, Any]:
        """Only the tokens the cache has not seen: the whole prompt first, then one at a time."""
        cache = cache if cache is not None else kwargs.get("past_key_values")
        if cache is not None:
            input_ids = input_ids[:, cache.seen :]
        return {"input_ids": input_ids, "cache": cache, "use_cache": use_cache, "attention_mask": attention_mask}

    def _update_model_kwargs_for_generation(self, outputs: ModelOutput, model_kwargs: dict[str, Any],
                                            *args: Any, **kwargs: Any) -> dict[str, Any]:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["cache"] = outputs.cache
        return model_kwargs


def answer_kwargs(labels: Tensor) -> dict[str, Any]:
    """HF labels (B, N), -100 where unscored, shifted inside the loss -> forward_sequence's
    answer_mask (B, N), answer_targets (B, N) and answer_count in selmem's convention (a task's
    ``targets`` at t is what position t predicts): position t is scored with target labels[t+1],
    the last position never. No answer in the batch: {} (the teacher has nothing to retrieve)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    count = int(mask.sum())  # one host sync; the probe then needs none
    if count == 0:
        return {}
    targets = torch.zeros_like(labels)
    targets[:, :-1] = labels[:, 1:].masked_fill(~mask[:, :-1], 0)  # read only where mask
    return {"answer_mask": mask, "answer_targets": targets, "answer_count": count}


def export_run(run: str | Path, out: str | Path, ckpt: str = "best", force: bool = False) -> Path:
    """Write a ``selmem train`` run's checkpoint as a Hugging Face folder at ``out``: the model's
    weights without the train-time probe, its config, and the run's segment length. ``out`` must
    be empty or new (``force``: write over what is there), and never a run folder or a folder
    inside a run's ``ckpt/``, whose model.safetensors the export would replace.

    The config says what runs: ``credit='none'`` (no probe in the weights; gate_grad 'task', as
    a model without a teacher needs). To fine-tune it with head B's teacher, load it with
    ``from_pretrained(out, credit="probe")``: a fresh probe, trained from the first step."""
    from selmem.runs import load_selmem_run

    check_export_destination(Path(out), force)
    exp, model = load_selmem_run(str(run), ckpt)
    cfg = dataclasses.replace(model.cfg, credit="none", gate_grad="task")  # gate_grad only acts in training
    hf = SelmemForCausalLM(SelmemHFConfig.from_selmem(cfg, segment_len=exp.segment_len()))
    hf.model.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(TRAIN_ONLY)})
    hf.save_pretrained(out)
    return Path(out)


def check_export_destination(out: Path, force: bool) -> None:
    """Raise naming ``out`` when an export there would overwrite a run's record (always) or
    files that are there already (unless ``force``)."""
    full = out.resolve()
    for folder in (full, *full.parents):
        is_run = (folder / "config.yaml").is_file() and (folder / "ckpt").is_dir()
        if is_run and folder == full:
            raise FileExistsError(f"{out} is a run folder: export writes its own config.json and "
                                  "model.safetensors, so give it a folder of its own (e.g. RUN-hf)")
        if is_run and full.is_relative_to(folder / "ckpt"):
            raise FileExistsError(f"{out} is inside the run's checkpoints ({folder / 'ckpt'}), whose "
                                  "model.safetensors the export would replace: give it a folder outside ckpt/")
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; pick a new folder or pass --force "
                              "to write over it")


AutoConfig.register("selmem", SelmemHFConfig, exist_ok=True)
AutoModelForCausalLM.register(SelmemHFConfig, SelmemForCausalLM, exist_ok=True)
