"""Atomic file writes: write a temp file beside the target, then rename over it, so a
crash or a full disk never leaves a half-written file where a good one was."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.errors import WorkbenchError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; on success it replaces `path` (with the
    usual umask permissions), on any failure it is removed and `path` is left untouched."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise WorkbenchError(f"cannot write {path}: {exc.strerror or exc}; check the folder and free space") from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, document: dict) -> None:
    """Write `document` as indented JSON (no NaN: use None), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document, indent=1, allow_nan=False))
