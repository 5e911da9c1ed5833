"""Multi-process training: what a rank needs to know, and the few collectives the loop uses.

``torchrun --nproc_per_node=N -m selmem train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; ``init``
reads them and joins the process group (gloo on CPU; on CUDA nccl for device tensors, gloo for the host-side ones). Without them everything here
is a no-op on a world of one, so the single-process loop runs exactly as before.

The split of work (loop.py): every rank builds the same global batch from the task's stream
(batches are a pure function of the step) and keeps its own rows (``shard``); DDP averages the
gradients; the task loss is normalised by the *global* count of scored positions, so the
gradient is that of the global batch. Rank 0 alone writes the run folder and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from selmem.tasks.base import Batch


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device_type: str) -> World:
    """Join the process group torchrun describes in the environment (idempotent); a World of one
    without torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # on CUDA the loop's small host-side reductions (all_sum, mean_over_ranks) are CPU tensors,
        # which NCCL refuses: gloo takes those, NCCL the gradients
        dist.init_process_group("cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")
    return World(rank, size, local)


def shard(x: Tensor | None, world: World) -> Tensor | None:
    """This rank's rows of a global batch tensor (B, ...); B must divide by the world size."""
    if x is None or not world.distributed:
        return x
    B = x.shape[0]
    if B % world.size:
        raise ValueError(f"train.batch_size={B} does not divide by the {world.size} training processes; "
                         f"pick a multiple of {world.size}")
    n = B // world.size
    return x[world.rank * n : (world.rank + 1) * n]


def all_sum(x: Tensor, world: World) -> Tensor:
    """Sum over ranks (a copy; x itself unchanged)."""
    if not world.distributed:
        return x
    y = x.clone()
    dist.all_reduce(y)
    return y


def broadcast(obj: object, world: World) -> object:
    """Rank 0's ``obj`` on every rank (a picklable value: the run folder's path, say)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def close(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class _SequenceForward(nn.Module):
    """``forward`` = the model's ``forward_sequence``, so DDP (which hooks ``forward``) sees the
    whole training forward; the model itself stays a plain nn.Module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.forward_sequence(*args, **kwargs)


def ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around the training forward. Every selmem parameter gets a gradient each step (the
    credit probe is trained by forward_sequence, InfoNCE picks its value with torch.where rather
    than skipping a branch), so find_unused_parameters stays off: no graph walk per step."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_SequenceForward(model), device_ids=ids)


def shard_batch(batch: Batch, world: World) -> Batch:
    """This rank's rows of the global train batch (every tensor field)."""
    if not world.distributed:
        return batch
    return replace(batch, **{k: shard(v, world) for k, v in vars(batch).items() if isinstance(v, Tensor)})


def any_fault(fault: str | None, step: int, world: World) -> str | None:
    """This rank's fault, else a note that another rank had one (so that all skip or stop)."""
    bad = all_sum(torch.tensor([float(fault is not None)]), world)
    if fault is None and bool(bad > 0):
        return f"non-finite forward at step {step} on another training process"
    return fault


def global_loss(loss: Tensor, right: Tensor | int, n: int, world: World) -> tuple[float, float]:
    """The task loss and accuracy of the global batch (token-weighted over ranks)."""
    v = torch.tensor([float(loss.detach()) * n, float(right), float(n)], dtype=torch.float64)
    total, correct, count = all_sum(v, world).tolist()
    return total / count, correct / count


def mean_over_ranks(rec: dict[str, float], world: World) -> dict[str, float]:
    """Each logged diagnostic averaged over the ranks where it is defined: sum of the values /
    number of ranks that have the key. The ranks' keys can differ: ``memory_metrics`` leaves out
    a 0/0, e.g. read_hit_rate on a shard with no scored answer (issue 27: an all_reduce over
    lists of different lengths aborted gloo at step 18). So every rank first learns the union of
    the keys, then all ranks reduce one (K, 2) tensor of (value, 1), or (0, 0) where the key is
    undefined here; a key defined on no rank is in no record, so it stays out."""
    if not world.distributed:
        return rec
    key_sets: list[list[str] | None] = [None] * world.size
    dist.all_gather_object(key_sets, sorted(rec))
    keys = sorted(set().union(*key_sets))  # same order on every rank
    v = torch.tensor([[float(rec[k]), 1.0] if k in rec else [0.0, 0.0] for k in keys], dtype=torch.float64)
    total, count = all_sum(v, world).unbind(1)  # (K,) each; count >= 1: some rank has each key
    return dict(zip(keys, (total / count).tolist(), strict=True))
