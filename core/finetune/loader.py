"""The training batches of an epoch, built ahead in DataLoader worker processes (into pinned
memory when training on CUDA) so that decoding and augmenting images (an ImageFolder's JPEGs)
does not starve the device, or in the training process for data held in memory.

Either way a batch is the same tensors: batch `step` of an epoch holds `order[step]` and its
augmentation draws from torch's RNG seeded with `batch_seed(...)` alone, in a forked RNG, so
the training process's RNG after a batch is the seeded state whatever the number of workers.
That keeps the exact resume: a run resumed mid-epoch (any worker count) gets the same batches.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data._utils.collate import default_collate

from core.data import TensorImages

MAX_AUTO_WORKERS = 8


def batch_seed(seed: int, stage_index: int, epoch: int, step: int) -> int:
    """The RNG seed of one training batch (its augmentation, and the step that follows)."""
    return seed * 7_919 + stage_index * 104_729 + epoch * 1_299_709 + step


def fetch(dataset: Dataset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch (images, labels) of `dataset` at `indices`."""
    idx = indices.tolist()
    items = dataset.__getitems__(idx) if hasattr(dataset, "__getitems__") else [dataset[i] for i in idx]
    return default_collate(items)


def seeded_fetch(dataset: Dataset, indices: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`fetch` with torch's RNG seeded by `seed` (and the caller's RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fetch(dataset, indices)


def in_memory(dataset: Dataset) -> bool:
    """Whether `dataset` (or the set a Subset takes from) is held in memory as tensors."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, TensorImages)


def auto_workers(dataset: Dataset, processes: int = 1) -> int:
    """Workers per training process: none for data in memory (building a batch is a gather),
    else the CPUs this process may use, shared among the processes, less one, at most 8."""
    if in_memory(dataset):
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, processes) - 1))


class _Plan(Dataset):
    """Item k: batch `start + k` of the epoch, built by `seeded_fetch` (in a worker)."""

    def __init__(self, dataset: Dataset, order: torch.Tensor, seeds: list[int], start: int):
        self.dataset, self.order, self.seeds, self.start = dataset, order, seeds, start

    def __len__(self) -> int:
        return len(self.order) - self.start

    def __getitem__(self, k: int):
        step = self.start + k
        return (step, *seeded_fetch(self.dataset, self.order[step], self.seeds[step]))


class EpochBatches:
    """The batches of one epoch from batch `start` on, in order: `take(step)` returns batch
    `step` (images, labels), built here (`workers=0`) or by workers a few batches ahead."""

    def __init__(self, dataset: Dataset, order: torch.Tensor, seeds: list[int], start: int = 0,
                 workers: int = 0, pin: bool = False):
        self.dataset, self.order, self.seeds = dataset, order, seeds
        self._batches = None
        if workers > 0 and start < len(order):
            loader = DataLoader(_Plan(dataset, order, seeds, start), batch_size=None, shuffle=False,
                                num_workers=workers, pin_memory=pin, prefetch_factor=2)
            self._batches = iter(loader)

    def take(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:
            return seeded_fetch(self.dataset, self.order[step], self.seeds[step])
        got, x, y = next(self._batches)
        if got != step:  # the trainer asks in order: anything else is a bug, not a data problem
            raise RuntimeError(f"batch loader out of step: built batch {got}, asked for {step}")
        return x, y

    def close(self) -> None:
        """Stop the workers (an epoch cut short by a stop or a failure)."""
        self._batches = None
