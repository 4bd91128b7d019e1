"""The run directory a replay writes and the TUI follows (ARCHITECTURE.md, "Long jobs").

Files: `metrics.jsonl` (one JSON event per line, appended and flushed as it happens),
`status.json` (pid, state, heartbeat, message; rewritten atomically), `session.toml` (the
frozen session), `finetune.ckpt` / `baseline.ckpt` (the latest training checkpoints), the models and
`report.json`/`report.md` (written last). `.lock` holds an exclusive lock while a replay
writes, so a second replay into the same folder is refused instead of interleaved.

Events (key `event`): `stage` (a fine-tuning stage starts), `step` (every `log_every`
batches: losses, lr, images/s, ETA), `epoch` (averages and validation accuracy),
`checkpoint`, `stage_end` (best validation, test accuracy), `stopped`, `failed`, `done`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import write_json
from core.errors import WorkbenchError

METRICS = "metrics.jsonl"
STATUS = "status.json"
CHECKPOINT = "finetune.ckpt"
BASELINE_CHECKPOINT = "baseline.ckpt"   # while a `[train]` section trains the baseline
LOCK = ".lock"
STATES = ("running", "done", "stopped", "failed")


def _clean(value):
    """JSON-safe copy: NaN/Inf become None (a diverged loss is still written)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunWriter:
    """Owns a run directory while a replay writes it: the lock, the status and the metrics."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / LOCK, "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise WorkbenchError(f"{self.path} is being written by another replay (see its status.json): "
                                 "wait for it, stop it, or pick another --out") from None
        self._metrics = open(self.path / METRICS, "a")
        self.status: dict = {"pid": os.getpid(), "state": "running", "started": time.time(), "message": None}
        self.heartbeat()

    def event(self, event: dict) -> None:
        """Append one event to metrics.jsonl (flushed at once) and refresh the heartbeat."""
        event = {**_clean(event), "time": time.time()}
        self._metrics.write(json.dumps(event) + "\n")
        self._metrics.flush()
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
        self.heartbeat(state, message)
        self._metrics.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


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

    def poll(self) -> list[dict]:
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
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def read_events(path: Path) -> list[dict]:
    """Every complete event of a run directory's metrics.jsonl."""
    return MetricsFollower(Path(path) / METRICS).poll()
