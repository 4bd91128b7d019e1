"""The latency table on disk: what a `LatencyTable` (core/layer_times.py) measured, kept per
machine, device, torch version, thread count and batch size, so that the next session on the same
machine (a replay, the workbench opened again) solves a latency budget on it without timing the
model again. Layer points are shared by every model (a conv's time depends on its shape alone);
whole-model times and the table's fit are kept per model structure (times do not depend on weights).

The folder is $WORKBENCH_TIMING_CACHE, else $XDG_CACHE_HOME/hos-workbench, else
~/.cache/hos-workbench; `WORKBENCH_TIMING_CACHE=off` times everything afresh. A file older than
MAX_AGE_DAYS is measured again (the machine may have changed); so is one that cannot be read."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from pathlib import Path

import torch
from torch import nn

from core.atomic import write_json
from core.errors import WorkbenchError

MAX_AGE_DAYS = 7
VERSION = 1


def folder() -> Path | None:
    """Where the tables are kept; None when the cache is turned off."""
    given = os.environ.get("WORKBENCH_TIMING_CACHE")
    if given is not None:
        return None if given.strip().lower() in ("", "off", "0", "no") else Path(given).expanduser()
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home folder to be found: timing works without the cache
        return None
    return Path(base) / "hos-workbench"


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def context(device: str, batch: int) -> dict:
    """What a time measured here depends on besides the layer: machine, device, torch, threads, batch."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _processor()
    return {"version": VERSION, "host": platform.node(), "device": str(dev), "device_name": name,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": batch}


def model_key(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The model's structure and input shape (its modules as printed, every parameter's and buffer's
    shape), not its weights."""
    shapes = [(n, tuple(t.shape)) for n, t in (*model.named_parameters(), *model.named_buffers())]
    text = repr((type(model).__module__, type(model).__qualname__, tuple(input_shape), repr(model), shapes))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@torch.no_grad()
def weights_key(model: nn.Module) -> str:
    """The model's weights, told apart by each parameter's and buffer's sum and sum of squares."""
    tensors = [t.detach().double() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not tensors:
        return ""
    sums = torch.stack([torch.stack([t.sum(), (t * t).sum()]) for t in tensors]).cpu().numpy()
    return hashlib.sha256(sums.tobytes()).hexdigest()[:24]


def path_for(ctx: dict) -> Path | None:
    where = folder()
    if where is None:
        return None
    return where / f"latency-{hashlib.sha256(json.dumps(ctx, sort_keys=True).encode()).hexdigest()[:16]}.json"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def load(ctx: dict) -> dict:
    """The document kept for `ctx` ({"created", "context", "points", "models"}), or a new empty one
    (no file, another context, unreadable, or older than MAX_AGE_DAYS)."""
    fresh = {"created": _now().isoformat(timespec="seconds"), "context": ctx, "points": {}, "models": {}}
    path = path_for(ctx)
    if path is None or not path.is_file():
        return fresh
    try:
        doc = json.loads(path.read_text())
        age = _now() - datetime.datetime.fromisoformat(doc["created"])  # TypeError without a time zone
        if doc["context"] != ctx or not isinstance(doc["points"], dict) or not isinstance(doc["models"], dict):
            return fresh
    except (OSError, ValueError, KeyError, TypeError):
        return fresh
    return doc if age <= datetime.timedelta(days=MAX_AGE_DAYS) else fresh


def save(ctx: dict, points: dict[str, dict[str, float]], key: str, entry: dict) -> None:
    """Merge `points` (format -> point -> ms) and the model `key`'s `entry` into the file for `ctx`
    (another process may have added to it meanwhile), atomically. A folder that cannot be written
    leaves the cache as it was: timing works without it."""
    path = path_for(ctx)
    if path is None:
        return
    doc = load(ctx)
    for fmt, table in points.items():
        doc["points"].setdefault(fmt, {}).update(table)
    doc["models"][key] = entry
    try:
        write_json(path, doc)
    except (WorkbenchError, ValueError):  # unwritable, or a time that is no finite number
        pass
