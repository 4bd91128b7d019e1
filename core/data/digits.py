"""The built-in digits demo (scikit-learn's 8x8 digits, 20% held out as test)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from core.data.splits import (
    DIGITS_TEST_FRACTION,
    DataOptions,
    DataSplits,
    in_memory,
    seeded_split,
)


def load(path: Path | None, seed: int, augment: bool, image_size: int, opts: DataOptions) -> DataSplits:
    """The digits, `path` and `image_size` unused (8x8 images)."""
    pixels, target = digits_arrays()
    images = torch.from_numpy(np.round(pixels.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(target)
    rest, test = seeded_split(len(labels), seed, DIGITS_TEST_FRACTION)
    return in_memory("digits", images[rest], labels[rest], images[test], labels[test],
                      [str(d) for d in range(10)], seed, augment, pad=1, flip=False, source="digits", opts=opts)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(1797x64 pixel values 0-16, labels) read from the file scikit-learn ships, as its
    `load_digits` reads it; importing scikit-learn itself would cost about 1.5 s at startup."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the digits demo needs scikit-learn: pip install scikit-learn")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(csv, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)
