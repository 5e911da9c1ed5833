"""selmem in the Hugging Face ecosystem: a PretrainedConfig, a PreTrainedModel with generate().

    pip install 'selmem[hf]'
    import selmem.hf                       # registers model_type "selmem" with the Auto classes
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generate(input_ids, max_new_tokens=100)

``SelmemForCausalLM`` wraps a ``SelectiveMemoryTransformer`` (``model.model``). Its cache is a
``selmem.DecodeCache``: the memory state and the open segment's keys, values and features
(decode.py); the memory is written whenever a segment fills, exactly as in ``forward``. Like
Mamba's, the model is stateful: greedy and sampled search work, beam search and assisted
decoding (which reorder or rewind a cache) do not. The train-time credit probe is not part of
it (``credit`` is set to 'none'; forward never used the probe).

``selmem export RUN OUT`` converts a ``selmem train`` checkpoint to this format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
    from transformers.utils import ModelOutput
except ImportError as e:  # pragma: no cover - the hf extra is installed for the tests
    raise ImportError("selmem.hf needs transformers: pip install 'selmem[hf]'") from e

import torch
import torch.nn.functional as F
from torch import Tensor

from selmem.config import SelmemConfig
from selmem.decode import DecodeCache
from selmem.model import SelectiveMemoryTransformer
from selmem.train.checkpoint import TRAIN_ONLY


class SelmemHFConfig(PreTrainedConfig):
    """A SelmemConfig (``selmem``, its fields as a dict) and the segment length to stream with."""

    model_type = "selmem"
    selmem: dict | None = None
    """The SelmemConfig fields (defaults for the missing ones)."""
    segment_len: int = 0
    """Segment length T for forward and decoding; 0 = max_segment_len."""
    tie_word_embeddings: bool = False

    @classmethod
    def from_selmem(cls, cfg: SelmemConfig, segment_len: int = 0, **kwargs: Any) -> SelmemHFConfig:
        return cls(selmem=cfg.to_dict(), segment_len=segment_len, vocab_size=cfg.vocab_size, **kwargs)

    def selmem_config(self) -> SelmemConfig:
        """The model's SelmemConfig, without the train-time credit probe."""
        return SelmemConfig.from_dict({**(self.selmem or {}), "credit": "none"}).validate()


@dataclass
class SelmemCausalLMOutput(ModelOutput):
    """loss (), logits (B, t, V), and the cache after the tokens when decoding (else None)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: DecodeCache | None = None


class SelmemPreTrainedModel(PreTrainedModel):
    config_class = SelmemHFConfig
    config: SelmemHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True  # the cache cannot be cropped or reordered (no beam search, no assisted decoding)

    def _init_weights(self, module: torch.nn.Module) -> None:
        """selmem initialises its own parameters (model.py); nothing to add."""


class SelmemForCausalLM(SelmemPreTrainedModel, GenerationMixin):
    """A selective-memory Transformer language model with Hugging Face save/load and generate()."""

    def __init__(self, config: SelmemHFConfig) -> None:
        super().__init__(config)
        self.model = SelectiveMemoryTransformer(config.selmem_config())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our cache is a DecodeCache, made by forward on the first call

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: DecodeCache | None = None,
                use_cache: bool | None = None, labels: Tensor | None = None, reset: Tensor | None = None,
                doc_ids: Tensor | None = None, **kwargs: Any) -> SelmemCausalLMOutput:
        """input_ids (B, t). With ``cache`` or ``use_cache`` the tokens continue the cache's stream
        (token-by-token decoding; a new cache when None); else the whole input is streamed in
        segments, with ``attention_mask`` (B, t) padding anywhere and ``reset`` (B, t) bool or
        ``doc_ids`` (B, t) memory resets at document starts (packed rows). ``labels`` (B, t) are
        shifted inside (HF convention); -100 is ignored."""
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        seg = self.config.segment_len or None
        if cache is not None or use_cache:
            if attention_mask is not None and not bool(attention_mask.bool().all()):
                raise ValueError("decoding with a cache needs unpadded rows (attention_mask all 1); "
                                 "call forward without use_cache for padded batches")
            logits, cache = self.model.decode(input_ids, cache, seg)
        else:
            mask = attention_mask.bool() if attention_mask is not None else None
            logits = self.model.forward_sequence(input_ids, seg, attention_mask=mask, reset=reset,
                                                 doc_ids=doc_ids).logits
        loss = None
        if labels is not None:
            pred = logits[:, :-1].flatten(0, 1)
            pred = pred if pred.dtype == torch.float64 else pred.float()  # half precision: upcast the loss
            loss = F.cross_entropy(pred, labels[:, 1:].flatten(), ignore_index=-100)
        return SelmemCausalLMOutput(loss=loss, logits=logits, cache=cache)

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


def export_run(run: str | Path, out: str | Path, ckpt: str = "best", force: bool = False) -> Path:
    """Write a ``selmem train`` run's checkpoint as a Hugging Face folder at ``out``: the model's
    weights without the train-time probe, its config, and the run's segment length. ``out`` must
    be empty or new (``force``: write over what is there), and never a run folder or a folder
    inside a run's ``ckpt/``, whose model.safetensors the export would replace."""
    from selmem.cli import load_selmem_run

    check_export_destination(Path(out), force)
    exp, model = load_selmem_run(str(run), ckpt)
    hf = SelmemForCausalLM(SelmemHFConfig.from_selmem(model.cfg, segment_len=exp.segment_len()))
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
