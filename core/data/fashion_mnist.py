"""Fashion-MNIST idx files (plain or .gz), headers and sizes checked."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from core.data.splits import DataOptions, DataSplits, in_memory
from core.errors import WorkbenchError

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

def _idx_file(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise WorkbenchError(f"{root / stem}[.gz] is missing; a Fashion-MNIST directory needs the four idx files")


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """An idx array (uint8), its header and size checked."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise WorkbenchError(f"{path} cannot be read ({e}); re-download it") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise WorkbenchError(f"{path} is truncated ({len(raw)} bytes, shorter than its header); re-download it")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise WorkbenchError(f"{path} has magic number {found}, expected {magic}; it is not the right idx file")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has trailing bytes"
        raise WorkbenchError(f"{path} {problem} ({len(raw)} bytes, header {dims} needs {expected}); re-download it")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _fashion_part(root: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path = _idx_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_file(root, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_path, 2051, 3)
    labels = _read_idx(labels_path, 2049, 1)
    if len(images) != len(labels):
        raise WorkbenchError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels; re-download them")
    if len(labels) and labels.max() >= len(FASHION_CLASSES):
        raise WorkbenchError(f"{labels_path}: labels must lie in 0..9, found {labels.max()}")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def load(path: Path, seed: int, augment: bool, image_size: int, opts: DataOptions) -> DataSplits:
    train_x, train_y = _fashion_part(path, "train")
    test_x, test_y = _fashion_part(path, "t10k")
    return in_memory("fashion-mnist", train_x, train_y, test_x, test_y, list(FASHION_CLASSES), seed,
                      augment, pad=4, flip=True, source=path, opts=opts)
