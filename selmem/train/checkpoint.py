"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically. No pickle.

A checkpoint is a folder ``ckpt/<tag>/`` with
  model.safetensors   the model's state dict
  train.safetensors   optimiser tensors (``optim.<param index>.<key>``) and RNG states (``rng.<name>``)
  train.json          optimiser param groups, scheduler state, step, data position, best metric,
                      and the SHA-256 of both tensor files (damage that safetensors cannot see)

A write goes to ``<tag>.tmp``, then ``<tag>`` moves to ``<tag>.old``, ``<tag>.tmp`` to ``<tag>``,
and ``<tag>.old`` is removed, or, for ``ckpt/last`` with train.keep_last > 1, kept as
``ckpt/step-<its step>`` (the oldest step folders beyond keep_last - 1 are removed after that, so
an old checkpoint goes only once a newer one is complete). A kill at any point leaves ``<tag>`` or
``<tag>.old`` complete; ``recover`` (resume) and ``load_newest_good`` (eval, inspect, export,
generate) find the newest good one, saying which (tests/train/test_crash.py kills the write at
each step).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from selmem.files import BadFile, fsync, read_json, read_tensors, sha256, writing

TENSOR_FILES = ("model.safetensors", "train.safetensors")


class CheckpointError(BadFile):
    """A checkpoint folder that is damaged, incomplete or does not fit the model."""


class CheckpointMismatch(CheckpointError):
    """A complete checkpoint of another model (another config): no other checkpoint of the run
    would fit either, so readers do not fall back from it."""


#: older training checkpoints beside ckpt/last: ckpt/step-000008 (train.keep_last)
STEP_PREFIX = "step-"


def step_checkpoints(ckpt: str | Path) -> list[Path]:
    """The ``ckpt/step-<N>`` folders of a run, newest (highest N) first."""
    found = [(int(p.name[len(STEP_PREFIX):]), p) for p in Path(ckpt).glob(STEP_PREFIX + "*")
             if p.name[len(STEP_PREFIX):].isdigit() and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def training_checkpoints(last: str | Path) -> list[Path]:
    """Every folder that may hold a training checkpoint, newest first: ``ckpt/last``,
    ``ckpt/last.old`` (a kill mid-write leaves it), then ``ckpt/step-<N>`` from the highest N."""
    last = Path(last)
    return [last, last.with_name(last.name + ".old"), *step_checkpoints(last.parent)]


def _reached(point: str) -> None:
    """A step of a checkpoint write is done and on disk. Does nothing; the crash tests replace it
    with a kill, so every step of ``save_checkpoint`` is a point where a run may die."""


def _write_json(path: Path, data: Any) -> None:
    with writing(path), path.open("w") as f:
        f.write(json.dumps(data, indent=1))
        f.flush()
        os.fsync(f.fileno())


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with writing(path):  # a full disk raises SafetensorError naming no file
        save_file(tensors, str(path))
        fsync(path)


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, rng: dict[str, torch.Tensor] | None = None,
                    meta: dict[str, Any] | None = None, keep: int = 1) -> Path:
    """Write a checkpoint folder at ``path``; a crash midway leaves the previous one loadable.
    ``keep`` > 1 keeps the one it replaces as ``step-<its meta.step>`` beside it, and up to
    ``keep - 1`` such folders in all (train.keep_last; the oldest go once the new one is in place).
    An OSError (a full disk) is raised naming the file or folder being written (``files.writing``)."""
    path = Path(path)
    with writing(path):
        return _save_checkpoint(path, model, optimizer, scheduler, rng, meta, keep)


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any,
                     rng: dict[str, torch.Tensor] | None, meta: dict[str, Any] | None, keep: int) -> Path:
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)  # a write that died before it was complete
    tmp.mkdir(parents=True)
    _save_tensors({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  tmp / "model.safetensors")
    _reached(f"{path.name}: wrote model.safetensors")
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
        _save_tensors(tensors, tmp / "train.safetensors")
        _reached(f"{path.name}: wrote train.safetensors")
    info["sha256"] = {name: sha256(tmp / name) for name in TENSOR_FILES if (tmp / name).exists()}
    _write_json(tmp / "train.json", info)
    with writing(tmp):
        fsync(tmp)
    _reached(f"{path.name}: wrote train.json")
    if path.exists():
        if old.exists():  # left by a crash after the last write was complete: path is newer
            _retire(path, old, keep, "stale ")
        os.replace(path, old)
        _reached(f"{path.name}: moved {path.name} to {old.name}")
    os.replace(tmp, path)
    fsync(path.parent)
    _reached(f"{path.name}: moved {tmp.name} to {path.name}")
    if old.exists():
        _retire(path, old, keep)
    return path


def _retire(path: Path, old: Path, keep: int, how: str = "") -> None:
    """``old``, a complete checkpoint older than ``path``: kept as ``step-<its step>`` while
    ``keep`` > 1, the oldest step folders beyond ``keep - 1`` then removed; else removed."""
    step = _step_of(old) if keep > 1 else None
    if step is None:
        shutil.rmtree(old)
        _reached(f"{path.name}: removed {how}{old.name}")
        return
    kept = path.with_name(f"{STEP_PREFIX}{step:06d}")
    if kept.exists():
        shutil.rmtree(kept)  # the same step written before, by a run resumed from an older checkpoint
    os.replace(old, kept)
    fsync(path.parent)
    _reached(f"{path.name}: kept {how}{old.name} as a step checkpoint")
    for oldest in step_checkpoints(path.parent)[keep - 1:]:
        shutil.rmtree(oldest)
        _reached(f"{path.name}: removed the oldest step checkpoint")


def _step_of(folder: Path) -> int | None:
    """meta.step of a checkpoint folder's train.json, None when unreadable (the folder is then
    removed, not kept: a checkpoint without its step is no checkpoint to fall back to)."""
    try:
        step = read_json(folder / "train.json")["meta"]["step"]
    except (BadFile, OSError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def resume_meta(path: str | Path) -> dict[str, Any]:
    """The training position in a ``ckpt/last`` folder (step, best, elapsed, skipped), checked:
    CheckpointError naming train.json when a field is missing or of the wrong kind."""
    meta = check_checkpoint(path)["meta"]
    where = Path(path) / "train.json"
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{where}: meta.step must be a step count, got {step!r}")
    for key, ok in [("best", lambda v: v is None or _number(v)), ("elapsed", lambda v: _number(v) and v >= 0),
                    ("skipped", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)]:
        if key in meta and not ok(meta[key]):
            raise CheckpointError(f"{where}: meta.{key} is {meta[key]!r}")
    return meta


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """train.json of a complete, undamaged checkpoint folder; CheckpointError naming the file
    that is missing, truncated or altered otherwise."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path}: no model.safetensors (an incomplete or missing checkpoint)")
    if not (path / "train.json").is_file():
        raise CheckpointError(f"{path}: no train.json (an incomplete checkpoint)")
    try:
        info = read_json(path / "train.json")
    except BadFile as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(info, dict) or not isinstance(info.get("meta"), dict):
        raise CheckpointError(f"{path / 'train.json'}: expected an object with a 'meta' object, "
                              f"got {_kind(info)}")
    hashes = info.get("sha256", {})  # absent in checkpoints written before it was recorded
    if not isinstance(hashes, dict):
        raise CheckpointError(f"{path / 'train.json'}: 'sha256' must map file names to hashes")
    for name, want in hashes.items():
        file = path / str(name)
        if name not in TENSOR_FILES:
            raise CheckpointError(f"{path / 'train.json'}: 'sha256' names an unknown file {name!r}")
        if not file.is_file():
            raise CheckpointError(f"{file}: missing (train.json records its hash)")
        if sha256(file) != want:
            raise CheckpointError(f"{file}: damaged (its SHA-256 differs from the one in train.json)")
    return info


def _kind(value: Any) -> str:
    return type(value).__name__


def _read(file: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return read_tensors(file, device)
    except BadFile as e:
        raise CheckpointError(str(e)) from None


def _check_whole(folder: Path) -> dict[str, Any]:
    """train.json of a checkpoint folder whose files are all there, unaltered and readable."""
    info = check_checkpoint(folder)
    _read(folder / "model.safetensors")
    if (folder / "train.safetensors").exists():
        _read(folder / "train.safetensors")
    return info


def recover(path: str | Path, log: Any = None) -> Path:
    """The newest good training checkpoint of ``path`` (``ckpt/last``), put in place at ``path``:
    ``path`` itself, else ``path.old`` that a crash mid-write left behind, else the newest good
    ``step-<N>`` (train.keep_last). The one found moves to ``path``; a damaged ``path`` moves to
    ``path.bad`` (and a damaged newer step folder to ``<name>.bad``), so the next write can
    neither remove the only good copy nor keep a damaged one. ``log(message)`` is told of every
    fallback, in one line. CheckpointError naming each problem if none is good."""
    path = Path(path)
    problems: list[tuple[Path, str]] = []
    for candidate in training_checkpoints(path):
        if not candidate.exists():
            problems.append((candidate, f"{candidate}: missing"))
            continue
        try:
            info = _check_whole(candidate)
        except CheckpointError as e:
            problems.append((candidate, str(e)))
            continue
        if candidate != path:
            kept = []
            for damaged, _ in problems:  # newer than the good one, and not good
                if damaged.exists():
                    bad = damaged.with_name(damaged.name + ".bad")
                    if bad.exists():
                        shutil.rmtree(bad)
                    os.replace(damaged, bad)
                    kept.append(str(bad))
            os.replace(candidate, path)
            fsync(path.parent)
            if log:  # last's problem, and every damaged one (an absent last.old is no news)
                said = [msg for c, msg in problems if c == path or not msg.endswith(": missing")]
                log("; ".join(said) + f"; resuming from the previous checkpoint {candidate.name} "
                    f"(step {info['meta'].get('step')}) instead"
                    + (f" (the damaged one is kept in {', '.join(kept)})" if kept else ""))
        return path
    best = path.with_name("best")
    hint = (f"; {best} holds the best weights but no optimizer state: `selmem eval {best}` evaluates it"
            if best.is_dir() and path.name != "best" else "")
    raise CheckpointError("no usable checkpoint: " + "; ".join(msg for _, msg in problems) + hint)


def resumable(path: str | Path) -> bool:
    """Whether ``recover`` has a checkpoint to look at (``path``, ``path.old`` or a step folder)."""
    return any(p.exists() for p in training_checkpoints(path))


def load_newest_good(path: str | Path, model: nn.Module, inference: bool = False, log: Any = None) -> Path:
    """Load the weights of checkpoint ``path`` (``ckpt/best``, ``ckpt/last``, ...) into ``model``;
    when it is damaged or missing, those of the newest good training checkpoint beside it
    (``training_checkpoints``), and ``log(message)`` names, in one line, the damaged one and the
    one used. The path loaded is returned. Read-only, for readers (eval, inspect, export,
    generate): nothing is moved, since the run may still be training. A checkpoint that does not
    fit the model is no damage: CheckpointMismatch at once. A tag other than best or last that is
    not there is a FileNotFoundError listing the run's checkpoints (a typo is not a fallback).
    CheckpointError naming each problem when no checkpoint is good."""
    path = Path(path)
    if not path.exists() and path.name not in ("best", "last"):
        have = sorted(p.name for p in path.parent.glob("*") if p.is_dir()) if path.parent.is_dir() else []
        raise FileNotFoundError(f"no checkpoint {path} (the run has: {', '.join(have) or 'none'})")
    problems: list[str] = []
    for candidate in [path, *(c for c in training_checkpoints(path.with_name("last")) if c != path)]:
        if candidate != path and not candidate.exists():
            continue
        try:
            info = load_model_weights(candidate, model, inference)
        except CheckpointMismatch:
            raise
        except (CheckpointError, FileNotFoundError) as e:
            problems.append(" ".join(str(e).split()))
            continue
        if problems and log:
            step = info.get("meta", {}).get("step")
            log("; ".join(problems) + f"; using {candidate}" + (f" (step {step})" if step is not None else "")
                + " instead")
        return candidate
    raise CheckpointError(f"no usable checkpoint in {path.parent}: " + "; ".join(problems))


#: parameters used in training only (selmem's credit probe): inference can do without them
TRAIN_ONLY = "probe."


def load_model_weights(path: str | Path, model: nn.Module, inference: bool = False) -> dict[str, Any]:
    """Load ``model.safetensors`` from a checkpoint folder, naming what does not fit; returns its
    train.json ({} for a folder without one). With ``inference`` the train-time-only parameters
    (``probe.*``) may be absent or differ: evaluating a model does not need the teacher it was
    trained with (they keep the model's own values). Every check comes before the model changes."""
    path = Path(path)
    file = path / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"no model.safetensors in checkpoint {path}")
    info = check_checkpoint(path) if (path / "train.json").is_file() else {}
    state = _read(file, device=str(next(model.parameters()).device))
    own = model.state_dict()
    if inference:
        state = {k: v for k, v in state.items() if not k.startswith(TRAIN_ONLY)}
        state.update({k: v for k, v in own.items() if k.startswith(TRAIN_ONLY)})
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
               if k in state and state[k].shape != v.shape]
    if missing or unexpected or resized:
        raise CheckpointMismatch(f"checkpoint {path} does not fit this model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape (checkpoint vs model) {resized[:5]} "
                              "(was it trained with another config or model?)")
    model.load_state_dict(state)
    return info


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore a checkpoint in place; returns (meta, rng states). CheckpointError naming the file
    when a part is damaged or does not fit (the model, optimizer and schedule may then be partly
    restored: load into fresh ones)."""
    path = Path(path)
    info = check_checkpoint(path)
    load_model_weights(path, model)
    train_file = path / "train.safetensors"
    tensors = _read(train_file) if train_file.exists() else {}
    if optimizer is not None and "param_groups" in info:
        _load_optimizer(path, optimizer, info["param_groups"], tensors)
    if scheduler is not None and "scheduler" in info:
        sd = scheduler.state_dict()
        saved = info["scheduler"]
        if not isinstance(saved, dict) or not all(k in sd and _same_kind(v, sd[k]) for k, v in saved.items()):
            raise CheckpointError(f"{path / 'train.json'}: 'scheduler' is missing fields or has mistyped ones")
        sd.update(saved)
        try:
            scheduler.load_state_dict(sd)
        except Exception as e:
            raise CheckpointError(f"{path / 'train.json'}: 'scheduler' does not fit the schedule ({e})") from None
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    for name, v in rng.items():
        want = torch.get_rng_state() if name == "torch" else None
        if want is not None and (v.dtype != want.dtype or v.shape != want.shape):
            raise CheckpointError(f"{train_file}: rng.{name} is {v.dtype} of shape {tuple(v.shape)}, "
                                  f"expected {want.dtype} of shape {tuple(want.shape)}")
    return info["meta"], rng


def _same_kind(saved: Any, own: Any) -> bool:
    """Whether a JSON value read back has the kind of the value it replaces (numbers for numbers,
    bool for bool, lists of the same length for tuples and lists, the same keys for dicts), so that
    a damaged train.json fails here, not in a later optimiser step."""
    if isinstance(own, bool) or own is None or isinstance(own, str):
        return type(saved) is type(own)
    if isinstance(own, (int, float)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool) and (
            isinstance(own, float) or isinstance(saved, int))
    if isinstance(own, (list, tuple)):
        return (isinstance(saved, list) and len(saved) == len(own)
                and all(_same_kind(a, b) for a, b in zip(saved, own, strict=True)))
    if isinstance(own, dict):
        return (isinstance(saved, dict) and set(saved) == set(own)
                and all(_same_kind(saved[k], own[k]) for k in own))
    return True  # a tensor or an object the state dict holds as is: torch checks it


def _load_optimizer(path: Path, optimizer: torch.optim.Optimizer, groups: Any,
                    tensors: dict[str, torch.Tensor]) -> None:
    """Check that the saved optimizer state fits ``optimizer`` (groups, indices, moment shapes)
    before loading it: torch would accept wrong shapes here and fail steps later."""
    where = path / "train.json"
    own = optimizer.param_groups
    if (not isinstance(groups, list) or len(groups) != len(own)
            or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                       and all(isinstance(i, int) for i in g["params"])
                       and len(g["params"]) == len(o["params"]) for g, o in zip(groups, own, strict=True))):
        raise CheckpointError(f"{where}: 'param_groups' does not fit this model's optimizer")
    for g, o in zip(groups, own, strict=True):
        # keys of only one side are left to torch (a newer torch may add options with defaults)
        bad = sorted(k for k in set(g) & set(o) if k != "params" and not _same_kind(g[k], o[k]))
        if bad:
            raise CheckpointError(f"{where}: 'param_groups' has mistyped {bad[:5]}")
    shapes = {}
    for g, o in zip(groups, own, strict=True):
        for idx, p in zip(g["params"], o["params"], strict=True):
            shapes[idx] = tuple(p.shape)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = (key.split(".", 2) + ["", ""])[:3]
            if not idx.isdigit() or int(idx) not in shapes or not name:
                raise CheckpointError(f"{path / 'train.safetensors'}: {key} names no parameter")
            want = () if name == "step" else shapes[int(idx)]  # AdamW: a step count, then moments
            if tuple(v.shape) != want or not v.is_floating_point():
                raise CheckpointError(f"{path / 'train.safetensors'}: {key} is {v.dtype} of shape "
                                      f"{tuple(v.shape)}, expected a float tensor of shape {want}")
            state.setdefault(int(idx), {})[name] = v
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except Exception as e:
        raise CheckpointError(f"{where}: optimizer state does not fit ({e})") from None
