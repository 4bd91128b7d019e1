"""Atomic file writes: write a temp file beside the target, then rename over it, so a
crash or a full disk never leaves a half-written file where a good one was."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.errors import WorkbenchError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process
        return True
    return True


def _sweep(path: Path) -> None:
    """Remove the temp files of `path` that writers killed mid-write (kill -9, power loss)
    left behind: `.NAME.PID.*.tmp` whose process is gone."""
    prefix = f".{path.name}."
    for old in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = old.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                old.unlink()
            except OSError:
                pass


def sweep_temps(folder: str | Path) -> None:
    """Remove every temp file in `folder` (`.NAME.PID.RANDOM.tmp`) whose writer is gone: what a
    killed writer, or one whose folder turned read-only, left."""
    for old in Path(folder).glob(".*.tmp"):
        parts = old.name[: -len(".tmp")].rsplit(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) != os.getpid() and not _alive(int(parts[1])):
            try:
                old.unlink()
            except OSError:
                pass


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; on success it replaces `path` (with the
    usual umask permissions), on any failure it is removed and `path` is left untouched.
    The temp name carries the writer's pid, so the next write of `path` removes what a
    killed writer left."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
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
