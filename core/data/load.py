"""`load_data`: a spec to its `DataSplits`, through the loader its kind names."""

from __future__ import annotations

import importlib

import torch
from torch.utils.data import DataLoader, Dataset

from core.data.spec import KINDS, parse_spec
from core.data.splits import NORMALIZE_MODES, SPLITS, DataOptions, DataSplits
from core.errors import WorkbenchError


def load_data(spec: str, seed: int = 0, augment: bool = True, image_size: int = 224,
              normalize: str | tuple | None = None, split: str = "seeded") -> DataSplits:
    """Load `spec`: "demo"/"digits", "cifar10:PATH", "cifar100:PATH", "fashion-mnist:PATH",
    "imagefolder:PATH", or a bare PATH whose layout is detected; `normalize` and `split` as in
    DataOptions; `image_size` for image folders."""
    if split not in SPLITS:
        raise WorkbenchError(f"data split must be one of {', '.join(SPLITS)}, got {split!r}")
    if isinstance(normalize, str) and normalize not in NORMALIZE_MODES:
        raise WorkbenchError(f"data normalize must be one of {', '.join(NORMALIZE_MODES)} or explicit mean/std, "
                             f"got {normalize!r}")
    opts = DataOptions(normalize, split)
    name, path = parse_spec(spec)
    kind = KINDS[name]
    if normalize == "reference" and not kind.reference_normalization:
        raise WorkbenchError(f"data normalize = \"reference\" is CIFAR's fixed mean/std, but the data is {name}: "
                             "use \"computed\" or explicit mean and std")
    module, function = kind.loader.split(":")
    return getattr(importlib.import_module(module), function)(path, seed, augment, image_size, opts)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                workers: int = 0) -> DataLoader:
    """A DataLoader; shuffling draws from a generator seeded with `seed`."""
    if batch_size < 1:
        raise WorkbenchError(f"batch size must be at least 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=workers, persistent_workers=workers > 0)
