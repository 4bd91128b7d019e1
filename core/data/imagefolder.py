"""Image folders (train/ and test/ or val/, one folder per class), read from disk with
torchvision transforms (torchvision is imported only here: it is slow to import)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Subset

from core.data.splits import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataOptions,
    DataSplits,
    mean_std,
    val_split,
)
from core.errors import WorkbenchError


def _load_image(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise WorkbenchError(f"{path} is not a readable image ({e}); remove or replace it") from None


def _image_folder(root: Path, transform):
    from torchvision import (
        datasets,  # only image folders need torchvision (slow to import)
    )
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


def load(path: Path, seed: int, augment: bool, image_size: int, opts: DataOptions) -> DataSplits:
    if opts.normalize == "computed":
        raise WorkbenchError("data normalize = \"computed\" needs an in-memory data set (CIFAR, Fashion-MNIST, "
                             "digits); give an image folder explicit mean and std, or leave it unset (ImageNet's)")
    normalization = (mean_std(opts, "", torch.empty(0), 3) if opts.normalize else
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
    keep, held = val_split(len(train_full), seed, opts.split)
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
