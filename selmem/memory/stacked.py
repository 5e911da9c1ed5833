"""All layers' memory writes as one batched call after the stack (issue 11).

Legend: L layers, B batch, T segment length, M slots, S = M+R read prefix, d model width,
d_mem slot width.

What a layer's write (layer.py ``write``: select, compress, address, update) depends on:

    y_l            the layer's block output for this segment;
    C_l, u_l, a_l  the layer's own memory *before* the segment (reads and addressing never see
                   this segment's writes, DESIGN section 1);
    read_l         the layer's read attention on that old memory (usage counts reads).

No layer's write reads another layer's *new* memory: the cache transform, the only part that
mixes layers, runs once per segment on the memory before any write (model.py: hints for this
segment come from the state the previous segment left), so it chains segments, not layers, and
stays one call per segment outside this batch. The writes of all L layers are therefore
independent once the stack has run, and run here as one call: every per-row operation of the
write works unchanged on the layers folded into the batch axis, rows layer-major (L*B, ...),
and only the parameterised ones need the layers' weights side by side. Each part gets a
stand-in built from its L modules (``_Part``: their options, their parameters stacked per row,
their Linear and RMSNorm submodules as ``_Linear`` and ``_Norm``, which apply the per-layer
weights with one batched matmul), so the model keeps its per-layer modules (and its
checkpoints) and ``write`` and the parts' own functions stay the single statement of the math.

``write_layers(..., batched=False)`` is the diagnostic path, one ``write`` per layer; a float64
test holds the two equal (tests/memory/test_stacked.py). One difference may remain: select='hard'
in training draws its Gumbel noise for all layers in one call. On the CPU that gives the
per-layer path's numbers (one serial generator; measured equal), on a GPU it need not (same
distribution, other draws).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from selmem.config import SelmemConfig
from selmem.layers import RMSNorm
from selmem.memory.layer import Parts, Write, write


def _per_row(p: Tensor, B: int, *trailing: int) -> Tensor:
    """Per-layer values p (L, ...) -> (L*B, ..., 1, ...): layer l's value on each of its B rows,
    with ``len(trailing)`` singleton axes appended to broadcast against the data."""
    rows = p[:, None].expand(p.shape[0], B, *p.shape[1:]).reshape(-1, *p.shape[1:])
    return rows.view(*rows.shape, *trailing)


class _Linear:
    """L nn.Linear modules of one shape applied to layer-major rows (L*B, ..., in): one bmm."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.weight = torch.stack([m.weight for m in layers]).transpose(1, 2)  # (L, in, out)
        self.bias = None if layers[0].bias is None else torch.stack([m.bias for m in layers])[:, None]

    def __call__(self, x: Tensor) -> Tensor:
        L = self.weight.shape[0]
        flat = x.reshape(L, -1, x.shape[-1])  # (L, B*..., in)
        out = flat @ self.weight if self.bias is None else torch.baddbmm(self.bias, flat, self.weight)
        return out.view(*x.shape[:-1], out.shape[-1])


class _Norm:
    """L RMSNorms applied to layer-major rows: each layer's gain on its own rows."""

    def __init__(self, layers: list[RMSNorm]) -> None:
        self.weight, self.eps = torch.stack([m.weight for m in layers])[:, None], layers[0].eps  # (L, 1, d)

    def __call__(self, x: Tensor) -> Tensor:
        L = self.weight.shape[0]
        flat = x.reshape(L, -1, x.shape[-1])
        return (flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).view(x.shape)


def _sequential(layers: list[nn.Sequential]) -> Any:
    """Head B's score MLP of every layer: Linear layers stacked, parameter-free ones (GELU) shared."""
    steps = [_Linear(list(mods)) if isinstance(mods[0], nn.Linear) else mods[0] for mods in zip(*layers, strict=True)]

    def run(x: Tensor) -> Tensor:
        for step in steps:
            x = step(x)
        return x
    return run


class _Part:
    """The L modules of one part of the write (Select, Compress, Address) as one, built from the
    modules themselves: their options (the plain attributes: the gate or address function, k,
    training, ...) are the first one's, as one config made them all; each parameter is stacked
    into one value per row (L*B, ...), followed by the singleton axes that the module's
    ``row_axes`` asks for where its functions broadcast it, as is each plain attribute that
    ``row_axes`` names (the random address's layer index); each submodule (Linear, RMSNorm, the
    score MLP) is its stacked stand-in. Calling it runs the part's own ``forward`` on layer-major
    rows, so the part's math stays written once, in its own file."""

    def __init__(self, layers: list[nn.Module], B: int, device: torch.device) -> None:
        first = layers[0]
        rows: dict[str, int] = getattr(first, "row_axes", {})
        for name, value in vars(first).items():
            if not name.startswith("_"):
                setattr(self, name, value)
        tensors = [name for name, _ in (*first.named_parameters(recurse=False), *first.named_buffers(recurse=False))]
        for name in tensors:
            setattr(self, name, _per_row(torch.stack([getattr(m, name) for m in layers]), B, *[1] * rows.get(name, 0)))
        for name in [n for n in rows if n not in tensors and getattr(first, n, None) is not None]:
            # plain values that differ by layer (absent or None: the option does not use them)
            values = torch.tensor([getattr(m, name) for m in layers], device=device)  # (L,)
            setattr(self, name, _per_row(values, B, *[1] * rows[name]))
        for name, child in first.named_children():
            setattr(self, name, _stand_in([getattr(m, name) for m in layers]))
        self._forward = type(first).forward  # looked up here, so a profiler's wrapper of it is seen

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward(self, *args, **kwargs)


def _stand_in(layers: list[nn.Module]) -> Any:
    """The stacked form of one parameterised submodule of every layer."""
    if isinstance(layers[0], nn.Linear):
        return _Linear(layers)
    if isinstance(layers[0], RMSNorm):
        return _Norm(layers)
    if isinstance(layers[0], nn.Sequential):
        return _sequential(layers)
    raise TypeError(f"the batched write has no stand-in for {type(layers[0]).__name__}; add one to "
                    "memory/stacked.py or run with writes='per_layer'")


def stack_parts(parts: list[Parts], batch_size: int, device: torch.device) -> Parts:
    """The parts of every layer as one Parts whose members take layer-major rows (L*B, ...)
    (``write`` never calls the read part: it ran inside the blocks)."""
    return Parts(None, *(_Part([getattr(p, name) for p in parts], batch_size, device)
                         for name in ("select", "compress", "address")), _Linear([p.decoder for p in parts]))


def _unstack(x: Any, L: int) -> list[Any]:
    """A NamedTuple of tensors, each (L*B, ...) with B rows per layer or (L,) one value per layer
    (a Write holds no other 1-D tensor), -> per layer [(B, ...) or ()] * L."""
    if isinstance(x, tuple):
        return [type(x)(*fields) for fields in zip(*(_unstack(f, L) for f in x), strict=True)]
    per_layer = list(x.unbind(0) if x.dim() == 1 else x.unflatten(0, (L, -1)).unbind(0))
    # torch.compile's AOT autograd (torch 2.13) fails to replay these views of views when they
    # leave a compiled forward ("shape [L*B, C, 1] is invalid for input of size ..."): copies there
    return [p.clone() for p in per_layer] if torch.compiler.is_compiling() else per_layer


def write_layers(parts: list[Parts], cfg: SelmemConfig, ys: list[Tensor], slots: Tensor, usage: Tensor,
                 age: Tensor, provenance: Tensor, pos: Tensor, reads: list[Tensor | None],
                 slot_decay: Tensor | None = None, valid: Tensor | None = None,
                 batched: bool = True, stacked: Parts | None = None) -> list[Write]:
    """Every layer's write for one segment: ``write`` of layer.py per layer, or (``batched``) all
    layers in one call with the same numbers.

    ys [(B, T, d)] * L each layer's features, slots (L, B, M, d_mem), usage/age/provenance
    (L, B, M) the memory at the segment start, pos (B, T), reads [(B, T, S) or None] * L,
    slot_decay (L, M) raw learned decay or None, valid (B, T) bool or None, stacked
    ``stack_parts(parts, B, device)`` if the caller keeps one (built here when None)."""
    L = len(parts)
    if not batched or L == 1:  # one layer: nothing to batch
        return [write(parts[l], cfg, ys[l], slots[l], usage[l], age[l], provenance[l], pos, reads[l],
                      None if slot_decay is None else slot_decay[l], valid) for l in range(L)]
    B = ys[0].shape[0]
    fold = lambda x: x.flatten(0, 1)  # noqa: E731  (L, B, ...) -> (L*B, ...) layer-major
    read = None if reads[0] is None else fold(torch.stack(reads))
    stacked = stack_parts(parts, B, ys[0].device) if stacked is None else stacked
    w = write(stacked, cfg, fold(torch.stack(ys)), fold(slots), fold(usage), fold(age),
              fold(provenance), pos.repeat(L, 1), read, None if slot_decay is None else _per_row(slot_decay, B),
              None if valid is None else valid.repeat(L, 1), layers=L)
    return _unstack(w, L)
