"""TensorBoard and CSV views of a run's training events (`[log]` in a session, or `workbench
replay --tensorboard/--csv`). metrics.jsonl stays the source of truth: these are derived
from the same events and can be rebuilt from it (`write_csv`).

TensorBoard: an event file in the run directory, so `tensorboard --logdir runs/` shows every
run; tags are `<phase>/stage<N>-<mode>/...`: `train/loss` and `train/<term>` for each loss
term, `lr` and `images_per_s` at every logged batch (x: the stage's batch count), and
`epoch/loss`, `epoch/<term>`, `val_acc`, `best_val` per epoch, `test_acc` at the stage end
(x: the epoch). CSV: `metrics.csv`, one row per `step`, `epoch` and `stage_end` event,
rewritten (atomically) at each epoch and when the run ends.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path

from core.atomic import atomic_path
from core.errors import WorkbenchError
from core.finetune.events import (
    ENDS,
    Epoch,
    Record,
    RunEvent,
    StageEnd,
    Step,
    as_event,
    parse_all,
)
from core.finetune.rundir import read_events

CSV_FILE = "metrics.csv"
ROWS = (Step, Epoch, StageEnd)
FIRST = ("event", "phase", "stage", "mode", "epoch", "step", "global_step", "loss")
LAST = ("lr", "images_per_s", "eta_s", "val_acc", "best_val", "test_acc", "time")


def scalars(event: RunEvent | Record) -> tuple[int, dict[str, float]] | None:
    """(x, {tag: value}) of one event (or record) for TensorBoard; None for events without scalars."""
    event = as_event(event)
    if not isinstance(event, ROWS):
        return None
    where = f"{event.phase or 'finetune'}/stage{event.stage + 1}-{event.mode}"
    values: dict[str, float | None]
    if isinstance(event, Step):
        x = event.global_step or event.epoch * event.steps_per_epoch + event.step
        values = {f"{where}/train/loss": event.loss, f"{where}/lr": event.lr,
                  f"{where}/images_per_s": event.images_per_s,
                  **{f"{where}/train/{k}": v for k, v in event.losses.items()}}
    elif isinstance(event, Epoch):
        x = event.epoch
        values = {f"{where}/epoch/loss": event.loss, f"{where}/val_acc": event.val_acc,
                  f"{where}/best_val": event.best_val, **{f"{where}/epoch/{k}": v for k, v in event.losses.items()}}
    else:
        x = event.epochs
        values = {f"{where}/test_acc": event.test_acc}
    return x, {tag: float(v) for tag, v in values.items() if isinstance(v, (int, float))}


def csv_text(events: list[RunEvent]) -> str:
    """The training events as CSV: one row per step/epoch/stage_end, a column per field and
    per loss term (`loss_<term>`), blank where an event has no such field."""
    rows = []
    for event in events:
        if isinstance(event, ROWS):
            record = event.to_dict()
            row = {k: v for k, v in record.items() if k != "losses" and not isinstance(v, (dict, list))}
            row.update({f"loss_{k}": v for k, v in (record.get("losses") or {}).items()})
            rows.append(row)
    seen = dict.fromkeys(k for row in rows for k in row)
    terms = [k for k in seen if k.startswith("loss_")]
    columns = [*FIRST, *terms, *LAST, *(k for k in seen if k not in (*FIRST, *terms, *LAST))]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_csv(run_dir: Path) -> Path:
    """metrics.csv of a run directory, from its metrics.jsonl (atomically)."""
    path = Path(run_dir) / CSV_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(csv_text(parse_all(read_events(run_dir))))
    return path


class Tracker:
    """Fed every event a replay writes to metrics.jsonl (after it is written): TensorBoard
    scalars as they come, the CSV at each epoch and at the end. Files appear with the first
    event, never before the run directory is the replay's."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, csv: bool = False):
        self.run_dir, self.tensorboard, self.csv = Path(run_dir), tensorboard, csv
        self._writer = None
        self._seen = False  # files are written only for a run this tracker was fed
        if tensorboard and importlib.util.find_spec("tensorboard") is None:  # SummaryWriter needs it
            raise WorkbenchError("--tensorboard (or [log] tensorboard) needs the tensorboard package: "
                                 "pip install 'hos-workbench[tensorboard]'")

    def __call__(self, event: RunEvent | Record) -> None:
        """Take one event as written (a plain record from a writer not yet typed is parsed)."""
        self._seen = True
        event = as_event(event)
        if event is None:
            return
        if self.tensorboard:
            point = scalars(event)
            if point is not None:
                if self._writer is None:
                    from torch.utils.tensorboard import SummaryWriter

                    self._writer = SummaryWriter(log_dir=str(self.run_dir))
                x, values = point
                for tag, value in values.items():
                    self._writer.add_scalar(tag, value, x, walltime=event.time)
                if not isinstance(event, Step):
                    self._writer.flush()
        if self.csv and isinstance(event, (Epoch, *ENDS)):
            write_csv(self.run_dir)

    def close(self) -> None:
        if self.csv and self._seen:
            write_csv(self.run_dir)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
