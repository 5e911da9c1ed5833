"""Numerical faults of a training step: is the step finite, and if not, what is not and where.

Checked once per step, after backward and before the optimiser step: the forward (loss, aux
losses, the state after the batch) and the total gradient norm are reduced on the device and
read back together, the step's one host sync. Only on a fault do the functions here look
further (which loss, which layer's state, which parameter), with as many syncs as they need.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from selmem.state import MemoryState


def _layer(name: str) -> str:
    """'layer 1' for a parameter of a per-layer part (blocks.1.attn.qkv.weight, select.1.score...),
    else the shared part it belongs to (embed, cache_transform, ...)."""
    match = re.match(r"[A-Za-z_]+\.(\d+)\.", name)
    return f"layer {match.group(1)}" if match else f"outside the layers: {name.split('.')[0]}"


def finite_forward(loss: Tensor, out: Any) -> Tensor:
    """() bool on the device: the loss, every aux loss and the state after the batch are finite."""
    checks = [torch.isfinite(v).all() for v in (loss, *out.losses.values())]
    if isinstance(out.state, MemoryState):
        checks.append(out.state.finite())
    return torch.stack(checks).all()


def nonfinite_step(model: nn.Module, step: int, loss: Tensor, out: Any, norm: Tensor) -> str | None:
    """None if the forward (``finite_forward``) and the total gradient norm are finite, else what
    is not and where. The training step's one host sync: forward and gradients are checked
    together after backward and before the optimiser step (a non-finite forward makes non-finite
    gradients, which are never applied); the message then names the forward's fault first."""
    if bool(finite_forward(loss, out) & torch.isfinite(norm)):
        return None
    return nonfinite_forward(model, step, loss, out) or nonfinite_gradient(model, step, norm)


def nonfinite_forward(model: nn.Module, step: int, loss: Tensor, out: Any) -> str | None:
    """None if the loss, every aux loss and the state after the batch are finite (one device
    sync), else what is not and where: the first layer whose state is, else the first parameter."""
    if bool(finite_forward(loss, out)):
        return None
    losses = {"task loss": loss, **{f"aux loss {k}": v for k, v in out.losses.items()}}
    state = out.state if isinstance(out.state, MemoryState) else None
    bad = [f"{k} is {float(v.detach())}" for k, v in losses.items() if not torch.isfinite(v).all()]
    layers = state.nonfinite_layers() if state is not None else []
    weight = nonfinite_weight(model)  # a pass over the weights, on a fault only
    if layers and weight.startswith("parameter"):  # a bad weight is the cause, the state its effect
        where = f"the state holds NaN/inf in layer(s) {layers}; {weight}"
    elif layers:
        where = f"the state of layer {layers[0]} holds NaN/inf" + (f" (also layers {layers[1:]})" if layers[1:] else "")
    else:
        where = weight
    return f"non-finite forward at step {step}: {', '.join(bad) or 'the losses are finite'}; {where}"


def nonfinite_weight(model: nn.Module) -> str:
    """Which parameter (and layer) holds NaN/inf first, for a fault message."""
    params = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    return f"parameter {params[0]} ({_layer(params[0])}) is non-finite" if params else "every weight is finite"


def grad_norm(model: nn.Module) -> Tensor:
    """() the total gradient norm, on the device (no clipping)."""
    grads = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


def nonfinite_gradient(model: nn.Module, step: int, norm: Tensor | None) -> str | None:
    """None if the total gradient norm (``norm``, else computed here) is finite, else the first
    parameter whose gradient holds NaN/inf, and its layer."""
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    norm = grad_norm(model) if norm is None else norm
    if bool(torch.isfinite(norm)):
        return None
    names = [n for n, g in grads if not torch.isfinite(g).all()]
    if not names:
        return f"gradient norm overflowed at step {step} (every gradient is finite, their norm is not)"
    return f"non-finite gradient at step {step} in {names[0]} ({_layer(names[0])})"
