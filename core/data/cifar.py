"""CIFAR-10/100 python batches, read by an unpickler that accepts plain data and numpy
arrays only, each file's shape and labels checked."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from core.data.splits import DataOptions, DataSplits, in_memory
from core.errors import WorkbenchError, first_line

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain data and numpy arrays; any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data batch never needs") from None


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise WorkbenchError(f"{path} is missing; the CIFAR directory must hold the complete python version of the data set")
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any failure inside a foreign pickle is bad data
        why = first_line(e) or type(e).__name__
        raise WorkbenchError(f"{path} is not a readable CIFAR python batch ({why}); re-download the python version") from None
    if not isinstance(obj, dict):
        raise WorkbenchError(f"{path} is not a CIFAR python batch (holds {type(obj).__name__}, not a dict); re-download the python version")
    return obj


def _cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _read_pickle(path)
    data, labels = batch.get(b"data"), batch.get(label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise WorkbenchError(f"{path}: b'data' is not an N x 3072 uint8 array; re-download the python version")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        y = np.empty(0)
    if labels is None or y.shape != (len(data),):
        raise WorkbenchError(f"{path}: {label_key!r} is missing or does not hold one integer label per image")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise WorkbenchError(f"{path}: labels must lie in 0..{num_classes - 1}, found {y.min()}..{y.max()}")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(y)


def _class_names(path: Path, key: bytes) -> list[str]:
    names = _read_pickle(path).get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, bytes) for n in names):
        raise WorkbenchError(f"{path}: {key!r} is missing or not a list of class names; re-download the python version")
    return [n.decode("utf-8", "replace") for n in names]


def load_cifar10(path: Path, seed: int, augment: bool, image_size: int,
                 opts: DataOptions) -> DataSplits:
    root = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    classes = _class_names(root / "batches.meta", b"label_names")
    parts = [_cifar_batch(root / f"data_batch_{i}", b"labels", len(classes)) for i in range(1, 6)]
    test_x, test_y = _cifar_batch(root / "test_batch", b"labels", len(classes))
    return in_memory("cifar10", torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                      test_x, test_y, classes, seed, augment, pad=4, flip=True, source=root, opts=opts)


def load_cifar100(path: Path, seed: int, augment: bool, image_size: int,
                  opts: DataOptions) -> DataSplits:
    root = path / "cifar-100-python" if (path / "cifar-100-python").is_dir() else path
    classes = _class_names(root / "meta", b"fine_label_names")
    train_x, train_y = _cifar_batch(root / "train", b"fine_labels", len(classes))
    test_x, test_y = _cifar_batch(root / "test", b"fine_labels", len(classes))
    return in_memory("cifar100", train_x, train_y, test_x, test_y, classes, seed, augment,
                      pad=4, flip=True, source=root, opts=opts)
