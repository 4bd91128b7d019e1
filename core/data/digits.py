"""The built-in digits demo (scikit-learn's 8x8 digits, 20% held out as test)."""

from __future__ import annotations

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
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    rest, test = seeded_split(len(labels), seed, DIGITS_TEST_FRACTION)
    return in_memory("digits", images[rest], labels[rest], images[test], labels[test],
                      [str(d) for d in range(10)], seed, augment, pad=1, flip=False, source="digits", opts=opts)
