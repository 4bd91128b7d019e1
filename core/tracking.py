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
from core.finetune.rundir import read_events

CSV_FILE = "metrics.csv"
ROWS = ("step", "epoch", "stage_end")
FIRST = ("event", "phase", "stage", "mode", "epoch", "step", "global_step", "loss")
LAST = ("lr", "images_per_s", "eta_s", "val_acc", "best_val", "test_acc", "time")
ENDS = ("stage_end", "done", "stopped", "failed")


def _prefix(event: dict) -> str:
    return f"{event.get('phase', 'finetune')}/stage{event.get('stage', 0) + 1}-{event.get('mode', '')}"


def scalars(event: dict) -> tuple[int, dict[str, float]] | None:
    """(x, {tag: value}) of one event for TensorBoard; None for events without scalars."""
    kind, where = event.get("event"), _prefix(event)
    values: dict[str, float | None] = {}
    if kind == "step":
        x = event.get("global_step") or event["epoch"] * event["steps_per_epoch"] + event["step"]
        values = {f"{where}/train/loss": event.get("loss"), f"{where}/lr": event.get("lr"),
                  f"{where}/images_per_s": event.get("images_per_s"),
                  **{f"{where}/train/{k}": v for k, v in (event.get("losses") or {}).items()}}
    elif kind == "epoch":
        x = event["epoch"]
        values = {f"{where}/epoch/loss": event.get("loss"), f"{where}/val_acc": event.get("val_acc"),
                  f"{where}/best_val": event.get("best_val"),
                  **{f"{where}/epoch/{k}": v for k, v in (event.get("losses") or {}).items()}}
    elif kind == "stage_end":
        x = event.get("epochs", 0)
        values = {f"{where}/test_acc": event.get("test_acc")}
    else:
        return None
    return x, {tag: float(v) for tag, v in values.items() if isinstance(v, (int, float))}


def csv_text(events: list[dict]) -> str:
    """The training events as CSV: one row per step/epoch/stage_end, a column per field and
    per loss term (`loss_<term>`), blank where an event has no such field."""
    rows = []
    for event in events:
        if event.get("event") in ROWS:
            row = {k: v for k, v in event.items() if k != "losses" and not isinstance(v, (dict, list))}
            row.update({f"loss_{k}": v for k, v in (event.get("losses") or {}).items()})
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
        tmp.write_text(csv_text(read_events(run_dir)))
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

    def __call__(self, event: dict) -> None:
        self._seen = True
        if self.tensorboard:
            point = scalars(event)
            if point is not None:
                if self._writer is None:
                    from torch.utils.tensorboard import SummaryWriter

                    self._writer = SummaryWriter(log_dir=str(self.run_dir))
                x, values = point
                for tag, value in values.items():
                    self._writer.add_scalar(tag, value, x, walltime=event.get("time"))
                if event.get("event") != "step":
                    self._writer.flush()
        if self.csv and event.get("event") in ("epoch", *ENDS):
            write_csv(self.run_dir)

    def close(self) -> None:
        if self.csv and self._seen:
            write_csv(self.run_dir)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
