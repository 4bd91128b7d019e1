"""Where a training process runs and the few exchanges several processes make.

Several processes (torchrun) exchange at fixed points only: rank 0's weights once at the
start (`broadcast_from_main`), one all-reduce of the gradients and one broadcast of rank 0's
buffers per batch (`sync_gradients`, `sync_buffers`), and one all-reduce of the status (stop
request, failures, loss sum) at every logged batch (`exchange_status`). Tensors travel
flattened, one exchange per dtype.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from core.errors import WorkbenchError


@dataclass
class Placement:
    """Where this process trains: device, and its rank among `world` processes."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @classmethod
    def detect(cls) -> Placement:
        """CUDA when present (the GPU torchrun's LOCAL_RANK names, one per process); the
        process group's rank and size when torchrun started us."""
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        if not torch.cuda.is_available():
            return cls(torch.device("cpu"), rank, world)
        count = torch.cuda.device_count()
        local = int(os.environ.get("LOCAL_RANK", rank % count))  # a launcher without LOCAL_RANK: one node
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if max(per_node, local + 1) > count:
            raise WorkbenchError(f"torchrun starts {per_node} processes on this machine but it has {count} GPU(s): "
                                 f"pass --nproc_per_node {count} (one process per GPU)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        return cls(device, rank, world)

    @property
    def name(self) -> str:
        """The device in words: `cpu`, or `cuda:0 (NVIDIA H200)`."""
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def distributed():
    """The process group torchrun asks for (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
        dist.barrier()  # every rank done before any tears its connections down (gloo may abort otherwise)
    finally:
        dist.destroy_process_group()


def by_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """`tensors` grouped by dtype (one flat exchange per group)."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())


def broadcast_from_main(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every process."""
    for tensors in by_dtype([*model.parameters(), *model.buffers()]):
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.broadcast(flat, 0)
        with torch.no_grad():
            for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
                t.copy_(part.view_as(t))


def sync_gradients(model: nn.Module, world: int, failed: bool) -> None:
    """Average the gradients over the `world` processes (one all-reduce per dtype). A parameter
    without a gradient sends zeros and stays without one; a `failed` process sends zeros."""
    params = [p for p in model.parameters() if p.requires_grad]
    for group in by_dtype(params):
        flat = torch.cat([(p.grad if p.grad is not None and not failed else torch.zeros_like(p)).reshape(-1)
                          for p in group])
        dist.all_reduce(flat)
        flat /= world
        for p, part in zip(group, flat.split([p.numel() for p in group])):
            if p.grad is not None:
                p.grad.copy_(part.view_as(p))


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every process, as
    DistributedDataParallel's broadcast_buffers keeps them."""
    for group in by_dtype(list(model.buffers())):
        flat = torch.cat([b.reshape(-1) for b in group])
        dist.broadcast(flat, 0)
        for b, part in zip(group, flat.split([b.numel() for b in group])):
            b.copy_(part.view_as(b))


def mean_over(place: Placement, values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over the processes (itself in a single process)."""
    if place.world > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= place.world
    return values


def exchange_status(place: Placement, asked: bool, loss_sum: torch.Tensor | float,
                    failure: tuple[int, int] | None) -> tuple[bool, float, list[tuple[int, int, int]]]:
    """One all-reduce of every process's stop request, loss sum and failure (code, batch).
    Returns (a stop was asked anywhere, the loss sum over the processes, [(rank, code, batch)]
    of the processes that failed)."""
    world, rank = place.world, place.rank
    status = torch.zeros(2 + 2 * world, dtype=torch.float64, device=place.device)
    status[0] = float(asked)
    status[1] = loss_sum
    if failure is not None:
        status[2 + rank], status[2 + world + rank] = failure
    if world > 1:
        dist.all_reduce(status)
    values = status.tolist()
    failed = [(r, int(values[2 + r]), int(values[2 + world + r])) for r in range(world) if values[2 + r]]
    return values[0] > 0, values[1], failed
