"""The run directory a replay writes and the TUI follows (ARCHITECTURE.md, "Long jobs").

Files (their names are the constants below): `metrics.jsonl` (one JSON event per line,
appended and flushed as it happens), `status.json` (pid, state, heartbeat, message; rewritten
atomically), `session.toml` (the frozen session), `finetune.ckpt` / `baseline.ckpt` (the
latest training checkpoints), each step's model (`model_file`) and `report.json`/`report.md`
(written last); `stdout.log` when the TUI started the replay. `.lock` holds an exclusive lock while a replay
writes, so a second replay into the same folder is refused instead of interleaved; what the
folder may hold is checked under that lock (`RunWriter(check=...)`), before anything is written.

The events and their lines: core.finetune.events.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import sweep_temps, write_json
from core.errors import WorkbenchError
from core.finetune.events import Record, RunEvent, from_line, to_line

METRICS = "metrics.jsonl"
STATUS = "status.json"
CHECKPOINT = "finetune.ckpt"
BASELINE_CHECKPOINT = "baseline.ckpt"   # while a `[train]` section trains the baseline
LOCK = ".lock"
SESSION = "session.toml"
REPORT = "report.json"
REPORT_MD = "report.md"
STDOUT = "stdout.log"                   # a replay the TUI started: its output
RUN_FILES = (REPORT, METRICS, STATUS, SESSION)  # a folder holding one of these is a run
SKELETON = {METRICS, STATUS, LOCK, STDOUT}  # what a run killed before freezing its session leaves
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")


def model_file(step: str) -> str:
    """File stem of a step's model (`<stem>.safetensors`, `<stem>.pth.tar`): `baseline`,
    `pruned`, `decomposed`, `finetune-2-ce` for the step `finetune-2-ce` or `finetune:ce`."""
    return step.replace(":", "-")


def check_out_folder(out: Path) -> None:
    """One WorkbenchError line when `out` cannot become a run directory: a file, a path under
    a file, a system folder, or a folder this user cannot write. Reads only (no torch)."""
    path = Path(os.path.abspath(Path(out).expanduser()))
    if any(path == Path(s) or Path(s) in path.parents for s in SYSTEM_FOLDERS):
        raise WorkbenchError(f"--out {out} is inside the system folder {path.parts[0]}{path.parts[1]}: "
                             "pick a folder of your own")
    if path.exists() and not path.is_dir():
        raise WorkbenchError(f"--out {out} is a file, not a folder: pick a folder (it is created if missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise WorkbenchError(f"--out {out} is under the file {existing}: pick a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkbenchError(f"--out {out}: cannot write in {existing} (permission denied): pick a folder you "
                             "can write")


def check_owner(out: Path, session_text: str) -> None:
    """Refuse a folder holding files the workbench did not write for this session: another
    session's run (its frozen session.toml differs) or, without a session.toml, anything but
    the files a run killed at its start leaves."""
    out = Path(out)
    if not out.is_dir():
        return
    frozen = out / SESSION
    if frozen.is_file():
        try:
            same = frozen.read_text() == session_text
        except (OSError, ValueError):
            same = False
        if same:
            return
        raise WorkbenchError(f"{out} holds the run of another session ({frozen} differs from this session): "
                             "pick another --out, or pass --force to write over it")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in SKELETON and not is_temp(p.name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise WorkbenchError(f"{out} holds files this workbench did not write for this session ({shown}): "
                             "pick another --out (a new or empty folder), or pass --force to write over them")


def is_temp(name: str) -> bool:
    """An atomic write's temp file (`.NAME.PID.*.tmp`)."""
    return name.startswith(".") and name.endswith(".tmp")


def set_aside(path: Path) -> Path:
    """Rename `path` to `path.old` (`.old-2`, ... when taken) and return the new path."""
    target, n = path.with_name(f"{path.name}.old"), 2
    while target.exists():
        target, n = path.with_name(f"{path.name}.old-{n}"), n + 1
    path.rename(target)
    return target


def default_run_dir(base: Path, resume: bool) -> Path:
    """The run directory when --out is not given: `base` (runs/<session name>), else the first
    of `base-2`, `base-3`, ... that does not exist yet; with `resume`, the last that exists."""
    candidates = (base if n == 1 else base.with_name(f"{base.name}-{n}") for n in range(1, 10_000))
    last = None
    for path in candidates:
        if not path.exists():
            return (last or path) if resume else path
        last = path
    raise WorkbenchError(f"{base}: 10,000 run directories already: pass --out")


class RunWriter:
    """Owns a run directory while a replay writes it: the lock, the status and the metrics."""

    def __init__(self, path: Path, check: Callable[[], None] | None = None):
        """Take the folder's lock, then run `check` (which may refuse the folder) while holding
        it, then sweep the temp files of dead writers and mark the run running. A refused
        folder is left as it was (a folder or lock file made here is removed again)."""
        self.path = Path(path)
        created, had_lock = not self.path.exists(), (self.path / LOCK).exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path / LOCK, "a")
        except OSError as exc:
            raise WorkbenchError(f"cannot write in {self.path}: {exc.strerror or exc}; pick another --out") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise WorkbenchError(f"{self.path} is being written by another replay (see its status.json): "
                                 "wait for it, stop it, or pick another --out") from None
        try:
            if check is not None:
                check()
            sweep_temps(self.path)
            self._metrics = open(self.path / METRICS, "a")
        except BaseException as exc:
            self._lock.close()  # releases the lock
            for undo in ([] if had_lock else [lambda: (self.path / LOCK).unlink()]) + \
                    ([self.path.rmdir] if created else []):
                try:
                    undo()
                except OSError:
                    pass
            if isinstance(exc, OSError):
                raise WorkbenchError(f"cannot write in {self.path}: {exc.strerror or exc}; pick another --out") \
                    from None
            raise
        self.status: dict = {"pid": os.getpid(), "state": "running", "started": time.time(), "message": None}
        self.heartbeat()

    def event(self, event: RunEvent | Record) -> None:
        """Append one event to metrics.jsonl (flushed at once) and refresh the heartbeat."""
        event, line = to_line(event, time.time())
        try:
            self._metrics.write(line)
            self._metrics.flush()
        except OSError as exc:
            raise WorkbenchError(f"cannot write {self.path / METRICS}: {exc.strerror or exc}; check the folder "
                                 "and free space") from None
        for key in ("stage", "epoch"):
            if key in event:
                self.status[key] = event[key]
        self.heartbeat()

    def heartbeat(self, state: str | None = None, message: str | None = None) -> None:
        if state:
            self.status["state"] = state
        if message is not None:
            self.status["message"] = message
        self.status["heartbeat"] = time.time()
        write_json(self.path / STATUS, self.status)

    def close(self, state: str, message: str | None = None) -> None:
        """Record the final state and release the folder. When the run ends in failure, a
        status that cannot be written (the folder turned read-only) does not hide that failure."""
        try:
            self.heartbeat(state, message)
        except WorkbenchError:
            if state == "done":
                raise
        finally:
            for handle in (self._metrics, self._lock):
                try:
                    handle.close()  # closing the lock file releases the lock
                except OSError:
                    pass


def read_status(path: Path) -> dict | None:
    """status.json of a run directory, or None when absent or half-written."""
    try:
        status = json.loads((Path(path) / STATUS).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def is_alive(status: dict | None) -> bool:
    """Whether the process a status names still runs (same machine)."""
    if not status or status.get("state") != "running" or not isinstance(status.get("pid"), int):
        return False
    try:
        os.kill(status["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class MetricsFollower:
    """Reads the events appended to a metrics.jsonl since the last poll (complete lines only)."""

    path: Path
    offset: int = 0
    _partial: bytes = field(default=b"", repr=False)

    def poll(self) -> list[Record]:
        """The JSON objects of the new complete lines (typed by core.finetune.events.parse_all)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [record for record in map(from_line, lines) if record is not None]


def read_events(path: Path) -> list[Record]:
    """Every complete event of a run directory's metrics.jsonl."""
    return MetricsFollower(Path(path) / METRICS).poll()
