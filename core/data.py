"""Data sets and splits: the digits demo, CIFAR-10/100 python batches, Fashion-MNIST idx, ImageFolder.

`load_data(spec)` returns `DataSplits` (train / seeded 10% val / official test). The small data
sets live in memory as uint8 tensors in `TensorImages`, normalised per item: CIFAR with the
reference loader's fixed constants (METHOD.md "Data"), the others with the training mean/std;
ImageFolder trees are read from disk with torchvision transforms.
"""

from __future__ import annotations

import copy
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset

from core.data_spec import parse_spec
from core.errors import WorkbenchError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the reference loader's (cifar/step1/cifar10/data_loader.py): every reference checkpoint expects them
REFERENCE_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
REFERENCE_CIFAR_STD = (0.2023, 0.1994, 0.2010)
REFERENCE_SPLIT_SEED = 1  # the reference loader: np.random.seed(1); np.random.shuffle(indices)
NORMALIZE_MODES = ("reference", "computed")
SPLITS = ("seeded", "reference")
VAL_FRACTION = 0.1
DIGITS_TEST_FRACTION = 0.2


@dataclass
class DataSplits:
    """A data set's three parts and what a model needs to know about it."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    classes: list[str]
    normalization: dict | None = None  # {"mode", "mean", "std"} the images were normalised with
    split: str = "seeded"              # how validation was held out (SPLITS)


class TensorImages(Dataset):
    """uint8 images (N, C, H, W) and int64 labels, normalised per channel on access.

    With `augment`, each access takes a random crop of the zero-padded image (`pad` pixels)
    and, if `flip`, mirrors it horizontally with probability 1/2.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, augment: bool = False, pad: int = 4, flip: bool = True):
        self.images = images
        self.labels = labels
        self.mean = mean.float().view(1, -1, 1, 1)
        self.std = std.float().view(1, -1, 1, 1)
        self.augment = augment
        self.pad = pad
        self.flip = flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} images")
        return self.__getitems__([index % n])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole batch at once (DataLoader calls this), augmented with vectorised indexing."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images.index_select(0, idx)
        if self.augment:
            x = self._augment(x)
        x = (x.float() / 255 - self.mean) / self.std
        return list(zip(x.unbind(0), self.labels.index_select(0, idx).unbind(0)))

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image random crop (and mirror) as one gather over the padded, flattened batch."""
        b, c, h, w = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p)).flatten(2)
        oy, ox = torch.randint(0, 2 * p + 1, (2, b, 1))
        rows = oy + torch.arange(h)
        cols = ox + torch.arange(w)
        if self.flip:
            cols = torch.where(torch.rand(b, 1) < 0.5, cols.flip(1), cols)
        index = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(b, 1, h * w)
        return padded.gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


@dataclass(frozen=True)
class DataOptions:
    """How images are normalised and validation is held out.

    `normalize`: None for the data set's default (CIFAR: "reference"; ImageFolder: ImageNet's
    constants; the rest: "computed"), "reference" (CIFAR's fixed constants), "computed" (the
    training split's per-channel mean/std; not for ImageFolder) or explicit (mean, std) per channel.
    `split`: "seeded" (a torch permutation seeded with `seed`) or "reference" (the reference
    loader's: numpy seed 1 shuffle of range(n), the first floor(10% n) held out)."""

    normalize: str | tuple[tuple[float, ...], tuple[float, ...]] | None = None
    split: str = "seeded"


def load_data(spec: str, seed: int = 0, augment: bool = True, image_size: int = 224,
              normalize: str | tuple | None = None, split: str = "seeded") -> DataSplits:
    """Load `spec`: "demo"/"digits", "cifar10:PATH", "cifar100:PATH", "fashion-mnist:PATH",
    "imagefolder:PATH", or a bare PATH whose layout is detected; `normalize` and `split` as in
    DataOptions."""
    if split not in SPLITS:
        raise WorkbenchError(f"data split must be one of {', '.join(SPLITS)}, got {split!r}")
    if isinstance(normalize, str) and normalize not in NORMALIZE_MODES:
        raise WorkbenchError(f"data normalize must be one of {', '.join(NORMALIZE_MODES)} or explicit mean/std, "
                             f"got {normalize!r}")
    opts = DataOptions(normalize, split)
    kind, path = parse_spec(spec)
    if normalize == "reference" and kind not in ("cifar10", "cifar100"):
        raise WorkbenchError(f"data normalize = \"reference\" is CIFAR's fixed mean/std, but the data is {kind}: "
                             "use \"computed\" or explicit mean and std")
    if kind == "digits":
        return _digits(seed, augment, opts)
    if kind == "imagefolder":
        return _imagefolder(path, seed, augment, image_size, opts)
    loader = {"cifar10": _cifar10, "cifar100": _cifar100, "fashion-mnist": _fashion_mnist}[kind]
    return loader(path, seed, augment, opts)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                workers: int = 0) -> DataLoader:
    """A DataLoader; shuffling draws from a generator seeded with `seed`."""
    if batch_size < 1:
        raise WorkbenchError(f"batch size must be at least 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=workers, persistent_workers=workers > 0)


# ---------------------------------------------------------------- paths and detection

# ---------------------------------------------------------------- splits and in-memory sets

def _split(n: int, seed: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (kept, held-out) index tensors, `fraction` of `n` held out (at least one)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = max(1, round(n * fraction))
    return perm[held:], perm[:held]


def reference_split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference loader's (kept, held-out) indices: range(n) shuffled by numpy's legacy
    generator seeded with 1, the first floor(0.1 n) held out (CIFAR-10: 5,000 of 50,000)."""
    indices = np.arange(n)
    np.random.RandomState(REFERENCE_SPLIT_SEED).shuffle(indices)
    held = max(1, int(np.floor(VAL_FRACTION * n)))
    return torch.from_numpy(indices[held:]), torch.from_numpy(indices[:held])


def _val_split(n: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return reference_split(n) if split == "reference" else _split(n, seed, VAL_FRACTION)


def _mean_std(opts: DataOptions, default: str, train: torch.Tensor, channels: int) -> dict:
    """The normalisation `opts` asks for ({"mode", "mean", "std"}, float lists); `default` stands
    in for an unset `normalize`; "computed" takes the per-channel mean/std of `train` (uint8)."""
    mode = opts.normalize or default
    if mode == "reference":
        mean, std = REFERENCE_CIFAR_MEAN, REFERENCE_CIFAR_STD
    elif mode == "computed":
        x = train.double()
        mean, std = x.mean(dim=(0, 2, 3)) / 255, (x.std(dim=(0, 2, 3)) / 255).clamp_min(1e-3)
    else:
        (mean, std), mode = mode, "explicit"
        if len(mean) != channels or len(std) != channels:
            raise WorkbenchError(f"data normalize: mean and std need one value per channel ({channels}), "
                                 f"got {len(mean)} and {len(std)}")
    return {"mode": mode, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _in_memory(name: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
               test_y: torch.Tensor, classes: list[str], seed: int, augment: bool, pad: int,
               flip: bool, source: Path | str, opts: DataOptions = DataOptions()) -> DataSplits:
    """Split off a 10% validation set and wrap all three parts in `TensorImages`, normalised as
    `opts` says (by default: CIFAR the reference constants, the others the training split's)."""
    if len(train_y) < 2:
        raise WorkbenchError(f"{source}: the training set has {len(train_y)} image(s); need at least 2 to split off validation")
    keep, held = _val_split(len(train_y), seed, opts.split)
    default = "reference" if name in ("cifar10", "cifar100") else "computed"
    normalization = _mean_std(opts, default, train_x[keep], train_x.shape[1])
    mean, std = torch.tensor(normalization["mean"]), torch.tensor(normalization["std"])

    def part(images, labels, aug=False):
        return TensorImages(images, labels, mean, std, augment=aug, pad=pad, flip=flip)

    return DataSplits(
        name=name,
        train=part(train_x[keep], train_y[keep], augment),
        val=part(train_x[held], train_y[held]),
        test=part(test_x, test_y),
        num_classes=len(classes),
        in_channels=train_x.shape[1],
        image_size=train_x.shape[2],
        classes=classes,
        normalization=normalization,
        split=opts.split,
    )


def _digits(seed: int, augment: bool, opts: DataOptions = DataOptions()) -> DataSplits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    rest, test = _split(len(labels), seed, DIGITS_TEST_FRACTION)
    return _in_memory("digits", images[rest], labels[rest], images[test], labels[test],
                      [str(d) for d in range(10)], seed, augment, pad=1, flip=False, source="digits", opts=opts)


# ---------------------------------------------------------------- CIFAR python batches

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
        why = (str(e).splitlines() or [type(e).__name__])[0]
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


def _cifar10(path: Path, seed: int, augment: bool, opts: DataOptions = DataOptions()) -> DataSplits:
    root = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    classes = _class_names(root / "batches.meta", b"label_names")
    parts = [_cifar_batch(root / f"data_batch_{i}", b"labels", len(classes)) for i in range(1, 6)]
    test_x, test_y = _cifar_batch(root / "test_batch", b"labels", len(classes))
    return _in_memory("cifar10", torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                      test_x, test_y, classes, seed, augment, pad=4, flip=True, source=root, opts=opts)


def _cifar100(path: Path, seed: int, augment: bool, opts: DataOptions = DataOptions()) -> DataSplits:
    root = path / "cifar-100-python" if (path / "cifar-100-python").is_dir() else path
    classes = _class_names(root / "meta", b"fine_label_names")
    train_x, train_y = _cifar_batch(root / "train", b"fine_labels", len(classes))
    test_x, test_y = _cifar_batch(root / "test", b"fine_labels", len(classes))
    return _in_memory("cifar100", train_x, train_y, test_x, test_y, classes, seed, augment,
                      pad=4, flip=True, source=root, opts=opts)


# ---------------------------------------------------------------- Fashion-MNIST idx

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


def _fashion_mnist(path: Path, seed: int, augment: bool, opts: DataOptions = DataOptions()) -> DataSplits:
    train_x, train_y = _fashion_part(path, "train")
    test_x, test_y = _fashion_part(path, "t10k")
    return _in_memory("fashion-mnist", train_x, train_y, test_x, test_y, list(FASHION_CLASSES), seed,
                      augment, pad=4, flip=True, source=path, opts=opts)


# ---------------------------------------------------------------- ImageFolder

def _load_image(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise WorkbenchError(f"{path} is not a readable image ({e}); remove or replace it") from None


def _image_folder(root: Path, transform):
    from torchvision import datasets  # only image folders need torchvision (slow to import)
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not root.is_dir() or not any(p.is_dir() for p in root.iterdir()):
        raise WorkbenchError(f"{root} has no class folders; put the images in {root}/<class name>/")
    try:
        folder = datasets.ImageFolder(str(root), transform=transform, loader=_load_image)
    except FileNotFoundError:
        empty = [d.name for d in sorted(root.iterdir()) if d.is_dir() and not any(
            f.is_file() and f.name.lower().endswith(IMG_EXTENSIONS) for f in d.rglob("*"))]
        raise WorkbenchError(f"{root}: class folder(s) {', '.join(empty)} hold no images; add images or remove the folder(s)") from None
    _check_decodes(folder)
    return folder


def _check_decodes(folder, first: int = 4) -> None:
    """A folder none of whose first images decodes holds no images (text files named .png, ...):
    say so now, before anything is written. One bad image among good ones fails when read."""
    problem = None
    for path, _ in folder.samples[:first]:
        try:
            _load_image(path)
            return
        except WorkbenchError as e:
            problem = problem or e
    raise problem


def _imagefolder(path: Path, seed: int, augment: bool, image_size: int,
                 opts: DataOptions = DataOptions()) -> DataSplits:
    if opts.normalize == "computed":
        raise WorkbenchError("data normalize = \"computed\" needs an in-memory data set (CIFAR, Fashion-MNIST, "
                             "digits); give an image folder explicit mean and std, or leave it unset (ImageNet's)")
    normalization = (_mean_std(opts, "", torch.empty(0), 3) if opts.normalize else
                     {"mode": "imagenet", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})
    from torchvision import transforms

    normalize = [transforms.ToTensor(), transforms.Normalize(normalization["mean"], normalization["std"])]
    eval_tf = transforms.Compose([transforms.Resize(int(image_size * 8 / 7)), transforms.CenterCrop(image_size), *normalize])
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), *normalize])
    if not (path / "train").is_dir():
        raise WorkbenchError(f"{path / 'train'} is missing; an image folder needs train/ and test/ (or val/) class folders")
    test_root = path / "test" if (path / "test").is_dir() else path / "val"
    if not test_root.is_dir():
        raise WorkbenchError(f"{path} has train/ but neither test/ nor val/; add one with the same class folders")
    train_full = _image_folder(path / "train", train_tf if augment else eval_tf)
    test = _image_folder(test_root, eval_tf)
    if test.classes != train_full.classes:
        raise WorkbenchError(f"{test_root} class folders differ from {path / 'train'}; both need the same class names")
    if len(train_full) < 2:
        raise WorkbenchError(f"{path / 'train'} holds {len(train_full)} image(s); need at least 2 to split off validation")
    keep, held = _val_split(len(train_full), seed, opts.split)
    val_full = copy.copy(train_full)  # same file list, evaluation transform
    val_full.transform = eval_tf
    return DataSplits(
        name="imagefolder",
        train=Subset(train_full, keep.tolist()),
        val=Subset(val_full, held.tolist()),
        test=test,
        num_classes=len(train_full.classes),
        in_channels=3,
        image_size=image_size,
        classes=list(train_full.classes),
        normalization=normalization,
        split=opts.split,
    )

