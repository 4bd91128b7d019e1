"""core.data: real loaders on the digits demo and on small real-format files written to tmp dirs."""

from __future__ import annotations

import gzip
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.data import FASHION_CLASSES, load_data, make_loader
from core.errors import WorkbenchError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)


def marker(dataset) -> list[int]:
    """The id each fake image carries in its first raw byte."""
    return dataset.images[:, 0, 0, 0].tolist()


def views(dataset, index: int, flips: bool) -> torch.Tensor:
    """Every normalised crop (then every mirrored one, if `flips`) augmentation may give one item."""
    img, p = dataset.images[index], dataset.pad
    padded = F.pad(img, (p, p, p, p))
    h, w = img.shape[1:]
    crops = [padded[:, y:y + h, x:x + w] for y in range(2 * p + 1) for x in range(2 * p + 1)]
    crops += [c.flip(-1) for c in crops] if flips else []
    return (torch.stack(crops).float() / 255 - dataset.mean[0]) / dataset.std[0]


def matches(samples: list[torch.Tensor], candidates: torch.Tensor) -> torch.Tensor:
    """(samples, candidates) bool: which candidate each sample equals."""
    diff = torch.stack(samples)[:, None] - candidates[None]
    return diff.abs().flatten(2).amax(2) < 1e-5


# ---------------------------------------------------------------- fake data on disk

def dump(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj))


def cifar_images(rng, n: int, first_id: int) -> np.ndarray:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(first_id, first_id + n)  # unique id, read back by marker()
    return data


@pytest.fixture
def cifar10_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        dump(root / f"data_batch_{i}", {b"data": cifar_images(rng, 8, 8 * (i - 1)),
                                        b"labels": rng.integers(0, 10, 8).tolist(), b"batch_label": b"x"})
    dump(root / "test_batch", {b"data": cifar_images(rng, 6, 200), b"labels": list(range(6))})
    dump(root / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})
    return tmp_path


@pytest.fixture
def cifar100_dir(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    dump(tmp_path / "train", {b"data": cifar_images(rng, 30, 0), b"fine_labels": rng.integers(0, 100, 30).tolist(),
                              b"coarse_labels": [0] * 30})
    dump(tmp_path / "test", {b"data": cifar_images(rng, 5, 100), b"fine_labels": [99, 0, 1, 2, 3]})
    dump(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                             b"coarse_label_names": [b"c"]})
    return tmp_path


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_fashion(root: Path, gz: bool) -> None:
    rng = np.random.default_rng(2)
    parts = {"train": 20, "t10k": 5}
    for prefix, n in parts.items():
        for kind, magic, array in (("images-idx3-ubyte", 2051, rng.integers(0, 256, (n, 6, 6))),
                                   ("labels-idx1-ubyte", 2049, rng.integers(0, 10, n))):
            name, raw = f"{prefix}-{kind}", idx_bytes(magic, array)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (root / name).write_bytes(raw)


@pytest.fixture
def image_dir(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    for split, n in (("train", 5), ("test", 1)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path


# ---------------------------------------------------------------- digits

def test_digits_shapes_and_split_sizes():
    d = load_data("demo", seed=0)
    assert (d.name, d.num_classes, d.in_channels, d.image_size) == ("digits", 10, 1, 8)
    assert d.classes == [str(i) for i in range(10)]
    assert (len(d.train), len(d.val), len(d.test)) == (1294, 144, 359)
    x, y = d.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert d.train.images.dtype == torch.uint8 and d.train.images.max() == 255
    assert torch.equal(d.test[-1][0], d.test[358][0])
    with pytest.raises(IndexError):
        d.test[359]


def test_digits_file_reads_as_scikit_learn_loads_it():
    from sklearn.datasets import load_digits

    from core.data.digits import digits_arrays

    pixels, labels = digits_arrays()
    ref = load_digits()
    assert np.array_equal(pixels, ref.data) and np.array_equal(labels, ref.target)


def test_digits_splits_partition_the_data_and_are_seeded():
    from sklearn.datasets import load_digits

    a, b, c = (load_data("digits", seed=s, augment=False) for s in (0, 0, 1))
    rows = lambda ds: Counter(bytes(r) for r in ds.images.flatten(1).numpy())  # noqa: E731
    full = Counter(bytes(r) for r in np.round(load_digits().images * (255 / 16)).astype(np.uint8).reshape(1797, -1))
    assert rows(a.train) + rows(a.val) + rows(a.test) == full  # disjoint and covering
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(a, part).images, getattr(b, part).images)
        assert torch.equal(getattr(a, part).labels, getattr(b, part).labels)
        assert not torch.equal(getattr(a, part).images, getattr(c, part).images)


def test_normalisation_uses_training_statistics():
    d = load_data("demo", augment=False)
    x, _ = stack(d.train)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(1), atol=1e-3)
    assert torch.equal(d.val.mean, d.train.mean) and torch.equal(d.test.std, d.train.std)


def test_digits_augmentation_shifts_but_never_flips():
    d = load_data("demo", seed=0, augment=True)
    assert d.train.augment and not d.val.augment and not d.test.augment
    torch.manual_seed(0)
    shifts, mirrored = views(d.train, 3, flips=True).split(9)
    mirrored = mirrored[~matches(list(mirrored), shifts).any(1)]  # mirrors that are no shift
    assert len(mirrored) > 0
    samples = [d.train[3][0] for _ in range(60)]
    assert all(s.shape == (1, 8, 8) for s in samples)
    assert matches(samples, shifts).any(1).all()
    assert not matches(samples, mirrored).any()
    assert not matches(samples, shifts[4:5]).all()  # shift 4 is the unshifted image
    assert torch.equal(d.val[0][0], d.val[0][0])


def test_make_loader_batches_and_seeded_shuffle():
    d = load_data("demo", augment=False)
    x, y = next(iter(make_loader(d.test, batch_size=32)))
    assert x.shape == (32, 1, 8, 8) and torch.equal(y, d.test.labels[:32])
    order = lambda seed: torch.cat([b[1] for b in make_loader(d.val, 16, shuffle=True, seed=seed)])  # noqa: E731
    assert torch.equal(order(5), order(5)) and not torch.equal(order(5), order(6))
    with pytest.raises(WorkbenchError, match="batch size"):
        make_loader(d.val, 0)


# ---------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("spec", ["cifar10:{}", "{}", "{}/cifar-10-batches-py"])
def test_cifar10_loads_and_detects(cifar10_dir, spec):
    d = load_data(spec.format(cifar10_dir), seed=0)
    assert (d.name, d.num_classes, d.in_channels, d.image_size) == ("cifar10", 10, 3, 32)
    assert d.classes == [f"c{i}" for i in range(10)]
    assert (len(d.train), len(d.val), len(d.test)) == (36, 4, 6)
    assert d.train[0][0].shape == (3, 32, 32)
    assert torch.equal(d.test.labels, torch.arange(6))
    ids = marker(d.train) + marker(d.val)
    assert sorted(ids) == list(range(40)) and marker(d.test) == list(range(200, 206))
    assert set(marker(load_data(str(cifar10_dir), seed=1).val)) != set(marker(d.val))


def test_cifar_augmentation_crops_and_flips(cifar10_dir):
    d = load_data(str(cifar10_dir), seed=0, augment=True)
    torch.manual_seed(0)
    shifts, mirrored = views(d.train, 0, flips=True).split(81)
    samples = [d.train[0][0] for _ in range(40)]
    assert all(s.shape == (3, 32, 32) for s in samples)
    hit_shift, hit_mirror = matches(samples, shifts).any(1), matches(samples, mirrored).any(1)
    assert (hit_shift | hit_mirror).all() and hit_shift.any() and hit_mirror.any()
    x, _ = next(iter(make_loader(d.train, 8, shuffle=True)))
    assert x.shape == (8, 3, 32, 32)


@pytest.mark.parametrize("nested", [False, True])
def test_cifar100_loads_and_detects(cifar100_dir, nested, tmp_path):
    if nested:
        (tmp_path / "cifar-100-python").mkdir()
        for name in ("train", "test", "meta"):
            (tmp_path / name).rename(tmp_path / "cifar-100-python" / name)
    for spec in (f"cifar100:{tmp_path}", str(tmp_path)):
        d = load_data(spec, seed=0)
        assert (d.name, d.num_classes, d.in_channels, d.image_size) == ("cifar100", 100, 3, 32)
        assert d.classes[99] == "f99" and (len(d.train), len(d.val), len(d.test)) == (27, 3, 5)
        assert sorted(marker(d.train) + marker(d.val)) == list(range(30))


class Payload:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_malicious_cifar_pickle_is_refused_and_never_runs(cifar10_dir, tmp_path):
    ran = tmp_path / "payload-ran"
    batch = cifar10_dir / "cifar-10-batches-py" / "data_batch_3"
    dump(batch, {b"data": Payload(ran), b"labels": [0]})
    with pytest.raises(WorkbenchError, match="data_batch_3.*system"):
        load_data(str(cifar10_dir))
    assert not ran.exists()


def test_cifar_missing_and_broken_batches(cifar10_dir):
    root = cifar10_dir / "cifar-10-batches-py"
    (root / "data_batch_5").unlink()
    with pytest.raises(WorkbenchError, match=r"data_batch_5 is missing"):
        load_data(f"cifar10:{cifar10_dir}")
    (root / "data_batch_5").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-10])
    with pytest.raises(WorkbenchError, match="data_batch_5 is not a readable"):
        load_data(f"cifar10:{cifar10_dir}")
    dump(root / "data_batch_5", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(WorkbenchError, match="3072"):
        load_data(f"cifar10:{cifar10_dir}")
    dump(root / "data_batch_5", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(WorkbenchError, match="0..9"):
        load_data(f"cifar10:{cifar10_dir}")


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx(tmp_path, gz):
    write_fashion(tmp_path, gz)
    for spec in (f"fashion-mnist:{tmp_path}", str(tmp_path)):
        d = load_data(spec, seed=0)
        assert (d.name, d.num_classes, d.in_channels, d.image_size) == ("fashion-mnist", 10, 1, 6)
        assert d.classes == FASHION_CLASSES and (len(d.train), len(d.val), len(d.test)) == (18, 2, 5)
        assert d.train[0][0].shape == (1, 6, 6)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_truncated_or_wrong_file(tmp_path, gz):
    write_fashion(tmp_path, gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    raw = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(gzip.compress(gzip.decompress(raw)[:-7]) if gz else raw[:-7])
    with pytest.raises(WorkbenchError, match=f"{name} is truncated"):
        load_data(str(tmp_path))
    if gz:
        (tmp_path / name).write_bytes(raw[:40])  # cut inside the gzip stream
        with pytest.raises(WorkbenchError, match=f"{name} cannot be read"):
            load_data(str(tmp_path))
    else:
        (tmp_path / name).write_bytes(idx_bytes(2049, np.zeros(20)))  # a labels file in its place
        with pytest.raises(WorkbenchError, match=f"{name} has magic number 2049, expected 2051"):
            load_data(str(tmp_path))


def test_fashion_mnist_missing_labels(tmp_path):
    write_fashion(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(WorkbenchError, match="t10k-labels-idx1-ubyte.* is missing"):
        load_data(str(tmp_path))


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason=f"{REAL_FASHION} absent (Debian package dataset-fashion-mnist)")
def test_real_fashion_mnist():
    d = load_data(str(REAL_FASHION), augment=False)
    assert (len(d.train) + len(d.val), len(d.test)) == (60000, 10000)
    assert d.image_size == 28 and d.train[0][0].shape == (1, 28, 28)
    assert abs(d.train.mean.item() - 0.286) < 0.01


# ---------------------------------------------------------------- ImageFolder

def test_imagefolder(image_dir):
    for spec in (f"imagefolder:{image_dir}", str(image_dir)):
        d = load_data(spec, seed=0, image_size=16)
        assert (d.name, d.num_classes, d.in_channels, d.image_size) == ("imagefolder", 2, 3, 16)
        assert d.classes == ["cat", "dog"] and (len(d.train), len(d.val), len(d.test)) == (9, 1, 2)
        for part in (d.train, d.val, d.test):
            x, y = part[0]
            assert x.shape == (3, 16, 16) and isinstance(y, int)
        assert set(d.train.indices).isdisjoint(d.val.indices)
    x, y = next(iter(make_loader(d.train, 4, shuffle=True)))
    assert x.shape == (4, 3, 16, 16)


def test_imagefolder_val_folder_and_errors(image_dir):
    (image_dir / "test").rename(image_dir / "val")
    assert len(load_data(str(image_dir), image_size=8).test) == 2
    (image_dir / "val" / "bird").mkdir()
    Image.new("RGB", (4, 4)).save(image_dir / "val" / "bird" / "0.png")
    with pytest.raises(WorkbenchError, match="differ"):
        load_data(str(image_dir))
    (image_dir / "train" / "bird").mkdir()
    with pytest.raises(WorkbenchError, match=r"train: class folder\(s\) bird hold no images"):
        load_data(str(image_dir))


def test_imagefolder_without_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(WorkbenchError, match="has no class folders"):
        load_data(f"imagefolder:{tmp_path}")


def test_unreadable_image_is_one_clear_error(image_dir):
    (image_dir / "test" / "cat" / "0.png").write_bytes(b"not a png")
    d = load_data(str(image_dir))
    with pytest.raises(WorkbenchError, match="0.png is not a readable image"):
        d.test[0]


# ---------------------------------------------------------------- bad paths

def test_missing_empty_and_unknown_dirs(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(WorkbenchError, match=f"{missing} does not exist"):
        load_data(str(missing))
    with pytest.raises(WorkbenchError, match=f"{missing} does not exist"):
        load_data(f"cifar10:{missing}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorkbenchError, match=f"{empty} is empty"):
        load_data(str(empty))
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(WorkbenchError, match=f"{empty} has no recognised layout.*CIFAR-10"):
        load_data(str(empty))
    with pytest.raises(WorkbenchError, match="not a directory"):
        load_data(str(empty / "notes.txt"))
    with pytest.raises(WorkbenchError, match="batches.meta is missing"):
        load_data(f"cifar10:{empty}")
    with pytest.raises(WorkbenchError, match="no data set given"):
        load_data("  ")
