"""The data spec a user writes (`demo`, `cifar10:PATH`, a bare directory ...), parsed and
checked against the disk without importing torch, so a wrong path is answered at once.

`load_data` (core.data) and the session file both read specs through `parse_spec`."""

from __future__ import annotations

from pathlib import Path

from core.errors import WorkbenchError

BUILTIN = ("demo", "digits")
KINDS = ("cifar10", "cifar100", "fashion-mnist", "imagefolder")
LAYOUTS = (
    "CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta), "
    "CIFAR-100 python files (train, test, meta), "
    "Fashion-MNIST idx files (train-images-idx3-ubyte[.gz] ...), "
    "or an image folder with train/ and test/ (or val/) holding one folder per class"
)


def split_spec(spec: str) -> tuple[str | None, str]:
    """(kind, path text) of a spec, without touching the disk: ("digits", "") for the
    built-in demo data, (None, PATH) for a bare path whose layout is detected later."""
    spec = spec.strip()
    if spec.lower() in BUILTIN:
        return "digits", ""
    kind, sep, rest = spec.partition(":")
    if sep and kind.lower() in KINDS:
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
    """The loader for a directory's layout, or a WorkbenchError naming the accepted layouts."""
    if (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py" / "data_batch_1").is_file():
        return "cifar10"
    if all((path / n).is_file() for n in ("train", "test", "meta")) or (path / "cifar-100-python").is_dir():
        return "cifar100"
    if any((path / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz")):
        return "fashion-mnist"
    if (path / "train").is_dir() and ((path / "test").is_dir() or (path / "val").is_dir()):
        return "imagefolder"
    if not any(path.iterdir()):
        raise WorkbenchError(f"data directory {path} is empty; expected {LAYOUTS}")
    raise WorkbenchError(f"data directory {path} has no recognised layout; expected {LAYOUTS}")
