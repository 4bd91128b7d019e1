"""The events of a run, one frozen dataclass per kind, and their metrics.jsonl lines.

A line is one JSON object: `event` (the kind), the event's fields, `phase` (`finetune`, or
`baseline` while `[train]` trains the uncompressed network; training events only) and
`time` (added when written). NaN/Inf are written as null (a diverged loss is still logged).
`parse` is the one reader: a line of an unknown kind, or one missing a field or holding a
value of the wrong type (another version's, a hand edit), gives None and is skipped.

Kinds: `stage` (a stage starts), `step` (every `log_every` batches: losses, lr, images/s,
ETA), `epoch` (averages and validation accuracy), `checkpoint`, `stage_end` (best
validation, test accuracy), `stopped`, `failed`, `steps` (every measured step so far),
`done`.
"""

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import ClassVar

Record = dict  # an event as its JSON object


@dataclass(frozen=True, kw_only=True)
class RunEvent:
    """What every event carries besides its own fields."""

    kind: ClassVar[str]
    phase: str | None = None     # training events: "finetune" or "baseline"
    time: float | None = None    # seconds since the epoch, set when written

    def to_dict(self) -> Record:
        """The JSON object of the line: `event`, the fields (an optional one only when set),
        `phase`, `time`."""
        record: Record = {"event": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in ("phase", "time") and (value is not None or f.default is dataclasses.MISSING):
                record[f.name] = value
        for name in ("phase", "time"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        return record

    # the dict view (`event["stage"]`, `event.get("event")`) of readers not yet typed
    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def get(self, key: str, default=None):
        return self.to_dict().get(key, default)


@dataclass(frozen=True, kw_only=True)
class Stage(RunEvent):
    kind: ClassVar[str] = "stage"
    stage: int
    stages: int
    mode: str
    epochs: int
    steps_per_epoch: int
    device: str | None = None
    processes: int | None = None


@dataclass(frozen=True, kw_only=True)
class Step(RunEvent):
    kind: ClassVar[str] = "step"
    stage: int
    mode: str
    epoch: int                   # epochs completed before this batch
    step: int                    # batches completed in this epoch
    steps_per_epoch: int
    global_step: int | None = None  # older runs lack it: epoch * steps_per_epoch + step
    loss: float | None
    losses: dict
    lr: float | None
    images_per_s: float | None = None
    eta_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class Epoch(RunEvent):
    kind: ClassVar[str] = "epoch"
    stage: int
    mode: str
    epoch: int                   # epochs completed, this one included
    epochs: int
    loss: float | None
    losses: dict
    val_acc: float | None
    best_val: float | None
    lr: float | None


@dataclass(frozen=True, kw_only=True)
class Checkpoint(RunEvent):
    kind: ClassVar[str] = "checkpoint"
    stage: int
    epoch: int
    step: int


@dataclass(frozen=True, kw_only=True)
class StageEnd(RunEvent):
    kind: ClassVar[str] = "stage_end"
    stage: int
    mode: str
    epochs: int
    best_val: float | None
    best_epoch: int | None
    test_acc: float | None


@dataclass(frozen=True, kw_only=True)
class Stopped(RunEvent):
    kind: ClassVar[str] = "stopped"
    reason: str
    stage: int | None = None
    epoch: int | None = None
    step: int | None = None


@dataclass(frozen=True, kw_only=True)
class Failed(RunEvent):
    kind: ClassVar[str] = "failed"
    message: str


@dataclass(frozen=True, kw_only=True)
class Steps(RunEvent):
    kind: ClassVar[str] = "steps"
    steps: list                  # the report's steps measured so far


@dataclass(frozen=True, kw_only=True)
class Done(RunEvent):
    kind: ClassVar[str] = "done"


KINDS: dict[str, type[RunEvent]] = {cls.kind: cls for cls in
                                    (Stage, Step, Epoch, Checkpoint, StageEnd, Stopped, Failed, Steps, Done)}
ENDS = (StageEnd, Done, Stopped, Failed)  # events after which views are brought up to date
_HINTS = {cls: typing.get_type_hints(cls) for cls in (RunEvent, *KINDS.values())}


def _fits(hint, value) -> bool:
    """Whether a JSON value has the type a field declares (an int is a float too; bools are neither)."""
    for option in typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,):
        base = typing.get_origin(option) or option
        if value is None:
            if option is type(None):
                return True
        elif base is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif base is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif isinstance(value, base):
            return True
    return False


def parse(record) -> RunEvent | None:
    """The event a JSON object holds, or None when it is not one this version reads."""
    if not isinstance(record, dict):
        return None
    cls = KINDS.get(record.get("event"))
    if cls is None:
        return None
    hints, values = _HINTS[cls], {}
    for f in dataclasses.fields(cls):
        if f.name in record:
            if not _fits(hints[f.name], record[f.name]):
                return None
            values[f.name] = record[f.name]
        elif f.default is dataclasses.MISSING:
            return None
    return cls(**values)


def as_event(event: RunEvent | Record) -> RunEvent | None:
    """`event` itself, or the event a record holds (None when it holds none)."""
    return event if isinstance(event, RunEvent) else parse(event)


def parse_all(records) -> list[RunEvent]:
    """The events among `records` (read_events, MetricsFollower.poll), the others skipped."""
    return [event for event in map(parse, records) if event is not None]


def _clean(value):
    """JSON-safe copy: NaN/Inf become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_line(event: RunEvent | Record, when: float) -> tuple[Record, str]:
    """The record written for `event` at time `when` and its metrics.jsonl line (with newline).
    A plain record (hand-made in tests, or a writer not yet typed) is written as it is."""
    record = event.to_dict() if isinstance(event, RunEvent) else dict(event)
    record = {**_clean(record), "time": when}
    return record, json.dumps(record) + "\n"


def from_line(line: bytes) -> Record | None:
    """The JSON object of one complete line, None for anything else."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
