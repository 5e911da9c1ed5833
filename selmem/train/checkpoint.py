"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically. No pickle.

A checkpoint is a folder ``ckpt/<tag>/`` with
  model.safetensors   the model's state dict
  train.safetensors   optimiser tensors (``optim.<param index>.<key>``) and RNG states (``rng.<name>``)
  train.json          optimiser param groups, scheduler state, step, data position, best metric
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def _atomic_dir(path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, rng: dict[str, torch.Tensor] | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint folder at ``path``; a crash midway leaves the previous one intact."""
    path = Path(path)
    tmp = _atomic_dir(path)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {"meta": meta or {}}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for idx, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"optim.{idx}.{k}"] = v.detach().contiguous().cpu() if torch.is_tensor(v) else torch.tensor(v)
        info["param_groups"] = sd["param_groups"]
    if scheduler is not None:
        info["scheduler"] = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    for k, v in (rng or {}).items():
        tensors[f"rng.{k}"] = v.contiguous().cpu()
    if tensors:
        save_file(tensors, str(tmp / "train.safetensors"))
    (tmp / "train.json").write_text(json.dumps(info, indent=1))
    old = path.with_name(path.name + ".old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


#: parameters used in training only (selmem's credit probe): inference can do without them
TRAIN_ONLY = "probe."


def load_model_weights(path: str | Path, model: nn.Module, inference: bool = False) -> None:
    """Load ``model.safetensors`` from a checkpoint folder, naming what does not fit. With
    ``inference`` the train-time-only parameters (``probe.*``) may be absent or differ: evaluating
    a model does not need the teacher it was trained with (they keep the model's own values)."""
    path = Path(path)
    file = path / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"no model.safetensors in checkpoint {path}")
    state = load_file(str(file), device=str(next(model.parameters()).device))
    own = model.state_dict()
    if inference:
        state = {k: v for k, v in state.items() if not k.startswith(TRAIN_ONLY)}
        state.update({k: v for k, v in own.items() if k.startswith(TRAIN_ONLY)})
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
               if k in state and state[k].shape != v.shape]
    if missing or unexpected or resized:
        raise ValueError(f"checkpoint {path} does not fit this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape (checkpoint vs model) {resized[:5]} "
                         "(was it trained with another config or model?)")
    model.load_state_dict(state)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore a checkpoint in place; returns (meta, rng states)."""
    path = Path(path)
    load_model_weights(path, model)
    info = json.loads((path / "train.json").read_text())
    tensors = load_file(str(path / "train.safetensors")) if (path / "train.safetensors").exists() else {}
    if optimizer is not None and "param_groups" in info:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    if scheduler is not None and "scheduler" in info:
        sd = scheduler.state_dict()
        sd.update(info["scheduler"])
        scheduler.load_state_dict(sd)
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return info["meta"], rng
