"""MemoryState: everything a sequence carries from one segment to the next.

Legend: L layers, B batch, M slots per layer, d_mem slot width.

The cross-layer hints of DESIGN section 1 are a deterministic function of the slots (the cache
transform applied to them), so the model recomputes them at the start of each segment instead of
carrying them: carrying them would double the state without adding information.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor


class NonFiniteState(ValueError):
    """A state given to forward() holds NaN or inf (it would make every output non-finite)."""


@dataclass
class MemoryState:
    """Per-layer memory banks of a batch of streams.

    slots:      (L, B, M, d_mem) slot contents.
    usage:      (L, B, M) decayed written + read mass; allocation prefers low usage.
    age:        (L, B, M) segments since a slot's content was written, weighted by how much of it
                survived (a fully overwritten slot has age 0 after its segment).
    provenance: (L, B, M) long, absolute input position that contributed most to a slot's content
                (-1 = still the initial content). Diagnostics only; the model never reads it.
    position:   (B,) long, tokens streamed so far (absolute position of the next segment's start).
    """

    slots: Tensor
    usage: Tensor
    age: Tensor
    provenance: Tensor
    position: Tensor

    @property
    def batch_size(self) -> int:
        return self.slots.shape[1]

    @property
    def n_layers(self) -> int:
        return self.slots.shape[0]

    @classmethod
    def fresh(cls, init_slots: Tensor, batch_size: int, device: torch.device | str | None = None) -> MemoryState:
        """A new state for ``batch_size`` streams from initial slots (L, M, d_mem): zero usage and
        age, no provenance. The slots stay attached to ``init_slots``, so they receive gradients."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = device or init_slots.device
        L, M, _ = init_slots.shape
        zeros = torch.zeros(L, batch_size, M, device=device, dtype=init_slots.dtype)
        return cls(slots=init_slots.to(device).unsqueeze(1).expand(L, batch_size, *init_slots.shape[1:]),
                   usage=zeros, age=zeros.clone(),
                   provenance=torch.full((L, batch_size, M), -1, dtype=torch.long, device=device),
                   position=torch.zeros(batch_size, dtype=torch.long, device=device))

    def with_layer(self, l: int, slots: Tensor, usage: Tensor, age: Tensor, provenance: Tensor,
                   advance: int | Tensor = 0) -> MemoryState:
        """A new state with layer l's memory replaced ((B, M, d_mem), (B, M) x 3) and the position
        advanced by ``advance`` tokens; no tensor is changed in place."""
        def put(old: Tensor, new: Tensor) -> Tensor:
            return torch.cat([old[:l], new[None], old[l + 1 :]])
        return MemoryState(put(self.slots, slots), put(self.usage, usage), put(self.age, age),
                           put(self.provenance, provenance), self.position + advance)

    def where(self, rows: Tensor, other: MemoryState) -> MemoryState:
        """Row b from ``other`` where rows[b] (B,) bool, else from self: a per-row reset (other =
        a fresh state) or a per-row freeze (other = the state before a segment)."""
        def pick(a: Tensor, b: Tensor) -> Tensor:  # the batch axis is 1 for (L, B, ...), 0 for position
            r = rows if a.dim() == 1 else rows.view(1, -1, *([1] * (a.dim() - 2)))
            return torch.where(r, b, a)
        return MemoryState(**{f.name: pick(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})

    def num_floats(self) -> int:
        """Floats carried per sequence between segments (slots, usage and age; provenance and
        position are bookkeeping integers). Constant in the input length."""
        L, _, M, d_mem = self.slots.shape
        return L * M * (d_mem + 2)

    def finite(self) -> Tensor:
        """0-dim bool tensor: slots, usage and age hold no NaN/inf (no device sync until read)."""
        return torch.stack([torch.isfinite(t).all() for t in (self.slots, self.usage, self.age)]).all()

    def nonfinite_layers(self) -> list[int]:
        """Layers whose slots, usage or age hold NaN or inf."""
        bad = [~torch.isfinite(t).flatten(1).all(1) for t in (self.slots, self.usage, self.age)]  # (L,) each
        return [int(l) for l in torch.nonzero(bad[0] | bad[1] | bad[2]).flatten()]

    def detach(self) -> MemoryState:
        """The truncated-BPTT boundary: same values, no graph to earlier segments."""
        return replace(self, **{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def to(self, device: torch.device | str) -> MemoryState:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def check(self, where: str = "state") -> MemoryState:
        """Raise ValueError naming the field whose type, shape, dtype or device does not fit the
        others: slots (L, B, M, d_mem) floating, usage and age (L, B, M) of slots' dtype, provenance
        (L, B, M) and position (B,) long, all on slots' device. ``where`` starts the message (a
        file's path when loading one). Shapes, dtypes and devices only: no value is read, so no
        device sync (forward runs it on every segment)."""
        for f in fields(self):
            if not isinstance(getattr(self, f.name), Tensor):
                raise ValueError(f"{where}: {f.name} must be a torch.Tensor, got {type(getattr(self, f.name)).__name__}")
        if self.slots.dim() != 4 or not self.slots.is_floating_point():
            raise ValueError(f"{where}: slots must be a float tensor (L, B, M, d_mem), got "
                             f"{self.slots.dtype} of shape {tuple(self.slots.shape)}")
        L, B, M, _ = self.slots.shape
        want = {"usage": ((L, B, M), self.slots.dtype), "age": ((L, B, M), self.slots.dtype),
                "provenance": ((L, B, M), torch.long), "position": ((B,), torch.long)}
        for name, (shape, dtype) in want.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape or t.dtype != dtype:
                raise ValueError(f"{where}: {name} must be {dtype} of shape {shape} for slots of shape "
                                 f"{tuple(self.slots.shape)}, got {t.dtype} of shape {tuple(t.shape)}")
            if t.device != self.slots.device:
                raise ValueError(f"{where}: {name} is on {t.device} but slots are on {self.slots.device}; "
                                 "move the whole state with .to(device)")
        return self

    def save(self, path: str | Path) -> None:
        """Write the state as safetensors, atomically (a crash never leaves half a file), with the
        SHA-256 of its data in the header's metadata, as checkpoints record theirs in train.json:
        ``load`` refuses a file whose bytes changed. An OSError (a full disk) names the file."""
        from selmem.files import fsync, sha256, writing

        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tensors = {f.name: getattr(self, f.name).detach().contiguous().cpu() for f in fields(self)}
        with writing(path):
            save_file(tensors, str(tmp))  # the data's bytes do not depend on the metadata written with them
            digest = sha256(tmp, _data_start(tmp))
            save_file(tensors, str(tmp), metadata={"sha256": digest})
            if sha256(tmp, _data_start(tmp)) != digest:
                raise RuntimeError(f"{tmp}: the data moved when the checksum was added (a safetensors change?)")
            fsync(tmp)
            tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> MemoryState:
        """Read a state written by ``save``; BadFile (a ValueError) naming the file when it is
        not a readable safetensors file, its data differ from their recorded SHA-256 (files
        saved before it was recorded have none), a tensor is missing or one has the wrong shape
        or dtype (``check``)."""
        from selmem.files import BadFile, read_tensors, sha256

        path = Path(path)
        tensors = read_tensors(path, device)  # a file safetensors cannot read fails here
        meta = _header(path).get("__metadata__")
        if meta is not None:  # absent only in files saved before the checksum was recorded
            want = meta.get("sha256") if isinstance(meta, dict) else None
            if not isinstance(want, str):
                raise BadFile(f"{path}: damaged (its header's metadata holds no sha256)")
            if sha256(path, _data_start(path)) != want:
                raise BadFile(f"{path}: damaged (the SHA-256 of its data differs from the one in its header)")
        missing = [f.name for f in fields(cls) if f.name not in tensors]
        if missing:
            raise BadFile(f"{path} is not a MemoryState file: missing {missing}")
        state = cls(**{f.name: tensors[f.name] for f in fields(cls)})
        try:
            return state.check(str(path))
        except ValueError as e:
            raise BadFile(str(e)) from None


def _header(path: Path) -> dict:
    """The JSON header of a safetensors file (8 bytes of its length, little-endian, then it)."""
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


def _data_start(path: Path) -> int:
    """Where a safetensors file's tensor data begin: after the 8-byte length and the header."""
    with path.open("rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")
