"""Data sets and splits: the digits demo, CIFAR-10/100 python batches, Fashion-MNIST idx, ImageFolder.

`load_data(spec)` returns `DataSplits` (train / seeded 10% val / official test). The small data
sets live in memory as uint8 tensors in `TensorImages`, normalised per item: CIFAR with the
reference loader's fixed constants (METHOD.md "Data"), the others with the training mean/std;
ImageFolder trees are read from disk with torchvision transforms.

The kinds and the spec parser are in `core.data.spec` (no torch); one module per kind reads
it. The names below are imported on first use, so `core.data.spec` stays free of torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load": ("load_data", "make_loader"),
    "splits": ("DataSplits", "DataOptions", "TensorImages", "reference_split", "NORMALIZE_MODES", "SPLITS",
               "REFERENCE_CIFAR_MEAN", "REFERENCE_CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD"),
    "fashion_mnist": ("FASHION_CLASSES",),
    "spec": ("KINDS", "parse_spec", "split_spec"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'core.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"core.data.{module}"), name)
