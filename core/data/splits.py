"""What every data set becomes: `DataSplits` (train / seeded 10% val / official test), the
in-memory `TensorImages` (uint8, normalised per item, augmented batch-wise), how images are
normalised and validation is held out (`DataOptions`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from core.data.spec import KINDS
from core.errors import WorkbenchError

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


def seeded_split(n: int, seed: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
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


def val_split(n: int, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return reference_split(n) if split == "reference" else seeded_split(n, seed, VAL_FRACTION)


def mean_std(opts: DataOptions, default: str, train: torch.Tensor, channels: int) -> dict:
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


def in_memory(name: str, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
               test_y: torch.Tensor, classes: list[str], seed: int, augment: bool, pad: int,
               flip: bool, source: Path | str, opts: DataOptions) -> DataSplits:
    """Split off a 10% validation set and wrap all three parts in `TensorImages`, normalised as
    `opts` says (by default: CIFAR the reference constants, the others the training split's)."""
    if len(train_y) < 2:
        raise WorkbenchError(f"{source}: the training set has {len(train_y)} image(s); need at least 2 to split off validation")
    keep, held = val_split(len(train_y), seed, opts.split)
    default = "reference" if KINDS[name].reference_normalization else "computed"
    normalization = mean_std(opts, default, train_x[keep], train_x.shape[1])
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
