"""The data spec a user writes (`demo`, `cifar10:PATH`, a bare directory ...) and the one
list of data set kinds, parsed and checked against the disk without importing torch, so a
wrong path is answered at once. `load_data` and the session file both read specs here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import WorkbenchError

BUILTIN = ("demo", "digits")  # names of the built-in digits data (no path)


def _cifar10(path: Path) -> bool:
    return (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py" / "data_batch_1").is_file()


def _cifar100(path: Path) -> bool:
    return all((path / n).is_file() for n in ("train", "test", "meta")) or (path / "cifar-100-python").is_dir()


def _fashion_mnist(path: Path) -> bool:
    return any((path / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz"))


def _imagefolder(path: Path) -> bool:
    return (path / "train").is_dir() and ((path / "test").is_dir() or (path / "val").is_dir())


@dataclass(frozen=True)
class Kind:
    """A data set kind: how it is recognised on disk and which loader reads it."""

    name: str                                  # `kind:` in a spec, DataSplits.name
    loader: str                                # "module:function" (imported when used: it needs torch)
    layout: str = ""                           # what its directory holds, in words
    detect: Callable[[Path], bool] | None = None  # a directory of this kind? (None: built in, no path)
    reference_normalization: bool = False      # normalised with the reference loader's constants by default


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("digits", "core.data.digits:load"),
    Kind("cifar10", "core.data.cifar:load_cifar10",
         "CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta)", _cifar10, True),
    Kind("cifar100", "core.data.cifar:load_cifar100", "CIFAR-100 python files (train, test, meta)", _cifar100, True),
    Kind("fashion-mnist", "core.data.fashion_mnist:load",
         "Fashion-MNIST idx files (train-images-idx3-ubyte[.gz] ...)", _fashion_mnist),
    Kind("imagefolder", "core.data.imagefolder:load",
         "an image folder with train/ and test/ (or val/) holding one folder per class", _imagefolder),
)}
ON_DISK = tuple(name for name, kind in KINDS.items() if kind.detect is not None)
_layouts = [KINDS[name].layout for name in ON_DISK]
LAYOUTS = ", ".join(_layouts[:-1]) + ", or " + _layouts[-1]


def split_spec(spec: str) -> tuple[str | None, str]:
    """(kind, path text) of a spec, without touching the disk: ("digits", "") for the
    built-in demo data, (None, PATH) for a bare path whose layout is detected later."""
    spec = spec.strip()
    if spec.lower() in BUILTIN:
        return "digits", ""
    kind, sep, rest = spec.partition(":")
    if sep and kind.lower() in ON_DISK:
        return kind.lower(), rest.strip()
    return None, spec


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """(kind, directory) of a spec, the directory checked and its layout detected; one
    WorkbenchError line for a missing, wrong or unrecognised path."""
    kind, text = split_spec(spec)
    if kind == "digits":
        return kind, None
    path = existing_dir(text)
    return kind or detect(path), path


def existing_dir(text: str) -> Path:
    if not text.strip():
        raise WorkbenchError(f"no data set given; use 'demo' or a directory with {LAYOUTS}")
    path = Path(text.strip()).expanduser()
    if not path.exists():
        raise WorkbenchError(f"data directory {path} does not exist; pass an existing directory or 'demo'")
    if not path.is_dir():
        raise WorkbenchError(f"data path {path} is not a directory; pass the directory that holds the data set")
    return path


def detect(path: Path) -> str:
    """The kind of a directory's layout, or a WorkbenchError naming the accepted layouts."""
    for name in ON_DISK:
        if KINDS[name].detect(path):
            return name
    if not any(path.iterdir()):
        raise WorkbenchError(f"data directory {path} is empty; expected {LAYOUTS}")
    raise WorkbenchError(f"data directory {path} has no recognised layout; expected {LAYOUTS}")
