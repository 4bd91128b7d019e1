"""`workbench replay`: run a session headless with progress and a summary table.

On a terminal the progress is a live rich display (a status line for the compression
steps; bars for the fine-tuning stage and epoch with loss, throughput and ETA); otherwise
(nohup, SLURM, CI logs) plain timestamped lines at every logged step. Under torchrun only
rank 0 prints."""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from core import report
from core.errors import WorkbenchError
from core.finetune import events as ev
from core.finetune.rundir import default_run_dir
from core.finetune.trainer import Placement, Stopped, distributed
from core.pipeline import agree, replay
from workbench.format import count, duration, num, percent
from workbench.tables import for_console


def _losses(event: ev.Step) -> str:
    return " ".join(f"{k} {num(v)}" for k, v in event.losses.items())


def plain_line(event: ev.RunEvent | dict) -> str | None:
    """The log line of a training event (None for events not worth a line); baseline training
    (a session's `[train]`) is prefixed `baseline`."""
    event = ev.as_event(event)
    line = _line(event) if event is not None else None
    return f"baseline {line}" if line and event.phase == "baseline" else line


def _line(event: ev.RunEvent) -> str | None:
    if isinstance(event, ev.Stage):
        where = f" on {event.device}" if event.device else ""
        many = f" x {event.processes} processes" if (event.processes or 1) > 1 else ""
        return f"stage {event.stage + 1}/{event.stages} ({event.mode}): {event.epochs} epochs of " \
               f"{event.steps_per_epoch} batches{where}{many}"
    if isinstance(event, ev.Step):
        return (f"stage {event.stage + 1} epoch {event.epoch + 1} batch {event.step}/"
                f"{event.steps_per_epoch}: loss {num(event.loss)} ({_losses(event)}) lr {num(event.lr)} "
                f"{event.images_per_s or 0:.0f} img/s ETA {duration(event.eta_s)}")
    if isinstance(event, ev.Epoch):
        return (f"stage {event.stage + 1} epoch {event.epoch}/{event.epochs}: loss {num(event.loss)} "
                f"val {percent(event.val_acc)} (best {percent(event.best_val)})")
    if isinstance(event, ev.StageEnd):
        return (f"stage {event.stage + 1} ({event.mode}) done: best val {percent(event.best_val)} "
                f"at epoch {event.best_epoch}, test {percent(event.test_acc)}")
    if isinstance(event, ev.Stopped):
        return f"stopped: {event.reason}"
    if isinstance(event, ev.Failed):
        return f"failed: {event.message}"
    return None


class LiveProgress:
    """Rich bars fed by fine-tuning events: the stage's epochs and the epoch's batches."""

    def __init__(self, console: Console):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.epochs = self.batches = None

    def __call__(self, event: ev.RunEvent | dict) -> None:
        event, p = ev.as_event(event), self.progress
        if isinstance(event, ev.Stage):
            for task in (self.epochs, self.batches):
                if task is not None:
                    p.remove_task(task)
            label = f"stage {event.stage + 1}/{event.stages} {event.mode}" + \
                (f" on {event.device}" if event.device else "")
            label = f"baseline {label}" if event.phase == "baseline" else label
            self.epochs = p.add_task(f"{label} epochs", total=event.epochs, info="")
            self.batches = p.add_task("batches", total=event.steps_per_epoch, info="")
        elif isinstance(event, ev.Step) and self.batches is not None:
            done = next(t.completed for t in p.tasks if t.id == self.batches)
            if event.step < done:  # a new epoch: its own elapsed time, not the last one's, frozen when full
                p.reset(self.batches)
            p.update(self.batches, completed=event.step, description=f"epoch {event.epoch + 1} batches",
                     info=f"loss {num(event.loss)} {event.images_per_s or 0:.0f} img/s ETA {duration(event.eta_s)}")
        elif isinstance(event, ev.Epoch) and self.epochs is not None:
            p.update(self.epochs, completed=event.epoch,
                     info=f"val {percent(event.val_acc)} best {percent(event.best_val)}")
        elif isinstance(event, ev.ENDS):
            line = plain_line(event)
            if line:
                p.console.print(line)


def resume_command(session: Path, out: Path, latency: bool, data: str | None, checkpoint: Path | None,
                   trust: bool, measure: dict | None = None) -> str:
    """The command that continues a stopped replay: the options it was given, then --resume."""
    words = ["workbench", "replay", str(session), "--out", str(out), *([] if latency else ["--no-latency"]),
             *(["--data", data] if data is not None else []),
             *(["--checkpoint", str(checkpoint)] if checkpoint is not None else []),
             *(["--trust-pickle"] if trust else []),
             *(word for key, value in (measure or {}).items() for word in (f"--{key.replace('_', '-')}", str(value))),
             "--resume"]
    return shlex.join(words)


def run_replay(session: Path, out: Path | None, latency: bool, resume: bool | str = False, data: str | None = None,
               checkpoint: Path | None = None, trust: bool = False, restart: bool = False, force: bool = False,
               tensorboard: bool = False, csv: bool = False, measure: dict | None = None):
    """Replay one session into `out` (None: a new `runs/<session name>[-N]`, or with `resume`
    the last one) with progress and the steps table; returns the Run."""
    out_console, err = Console(), Console(stderr=True)
    quiet = int(os.environ.get("RANK", "0")) != 0  # torchrun: only rank 0 prints
    start = time.perf_counter()
    given = {"data": data, "checkpoint": checkpoint, "trust": trust, "restart": restart, "force": force,
             "tensorboard": tensorboard, "csv": csv, "measure": measure}

    def stamp(text: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {text}", flush=True)

    with distributed():
        if out is None:  # rank 0 picks it, so every process writes to the same folder
            out = agree(Placement.detect(), lambda: default_run_dir(Path("runs") / session.stem, bool(resume)))
        try:
            if quiet:
                run = replay(session, out, latency, resume=resume, **given)
            elif err.is_terminal:
                live = LiveProgress(err)
                with live.progress:
                    run = replay(session, out, latency, lambda what: live.progress.console.print(what), resume, live,
                                 **given)
            else:
                run = replay(session, out, latency, stamp, resume,
                             lambda event: (line := plain_line(event)) and stamp(line), **given)
        except Stopped as exc:
            again = resume_command(session, out, latency, data, checkpoint, trust, measure)
            raise Stopped(f"{exc}; checkpoint in {out}: continue with `{again}`") from None
    if quiet:
        return run
    out_console.print(for_console(steps_table(run.report["steps"], f"{session} -> {out}"), out_console))
    out_console.print(f"wrote {out / 'report.json'} in {time.perf_counter() - start:.1f} s")
    return run


def queue_dirs(sessions: list[Path], parent: Path, avoid_existing: bool = False) -> list[Path]:
    """One run directory per queued session, `parent/<session stem>`; sessions sharing a stem
    get `-2`, `-3`, ... in queue order, never a name another session's stem takes, and with
    `avoid_existing` (the default parent, not resuming) never a folder that exists already."""
    stems = [s.stem for s in sessions]
    used: set[str] = set()
    dirs = []
    for stem in stems:
        name, n = stem, 2
        while name in used or (name != stem and name in stems) or (avoid_existing and (parent / name).exists()):
            name, n = f"{stem}-{n}", n + 1
        used.add(name)
        dirs.append(parent / name)
    return dirs


@dataclass
class Outcome:
    """How one queued session ended: ok, failed or stopped, with its last step or its error."""

    session: Path
    out: Path
    state: str
    step: dict | None = None
    error: str | None = None


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def run_queue(sessions: list[Path], parent: Path | None, latency: bool, resume: bool | str = False,
              data: str | None = None, checkpoint: Path | None = None, trust: bool = False, restart: bool = False,
              force: bool = False, tensorboard: bool = False, csv: bool = False, measure: dict | None = None) -> int:
    """Replay the sessions in turn, each into its own run directory (`parent/<stem>`, default
    runs/<stem>). A failure or a stop is reported in one line and the queue goes on; a
    summary table ends it. Returns the exit code: 0 all ok, 3 only stops, else 2."""
    quiet = int(os.environ.get("RANK", "0")) != 0
    dirs = queue_dirs(sessions, parent or Path("runs"), avoid_existing=parent is None and not resume)
    outcomes: list[Outcome] = []
    with distributed():  # one process group for the whole queue under torchrun
        for i, (session, out) in enumerate(zip(sessions, dirs), 1):
            if not quiet:
                print(f"[{i}/{len(sessions)}] {session} -> {out}", flush=True)
            try:
                if not session.is_file():
                    raise WorkbenchError(f"session file {session} does not exist")
                run = run_replay(session, out, latency, resume, data, checkpoint, trust, restart, force,
                                 tensorboard, csv, measure)
                outcomes.append(Outcome(session, out, "ok", run.report["steps"][-1]))
            except KeyboardInterrupt:
                outcomes.append(Outcome(session, out, "stopped", error="interrupted"))
                if not quiet:
                    Console().print(queue_table(outcomes))
                raise
            except Exception as exc:  # noqa: BLE001 - user code too: one line, then the next session
                state = "stopped" if isinstance(exc, Stopped) else "failed"
                outcomes.append(Outcome(session, out, state, error=_one_line(exc)))
                if not quiet:
                    line = outcomes[-1].error
                    print(f"error: {line if str(session) in line else f'{session}: {line}'}", file=sys.stderr,
                          flush=True)
    if not quiet:
        table = queue_table(outcomes)
        console = Console()
        if not console.is_terminal:  # a log file: as wide as the table needs, never wrapped
            wide = Measurement.get(console, console.options.update_width(1000), table).maximum
            console = Console(width=max(80, wide))
        console.print(for_console(table, console))
    states = {o.state for o in outcomes}
    return 0 if states == {"ok"} else 3 if "failed" not in states else 2


def queue_table(outcomes: list[Outcome]) -> Table:
    """One row per queued session: its run directory, state, and final step (or its error)."""
    table = Table(title=f"{len(outcomes)} sessions", header_style="bold")
    for col in ("session", "run dir", "state", "final step", "params", "FLOPs", "acc", "error"):
        table.add_column(col, justify="right" if col in ("params", "FLOPs", "acc") else "left")
    style = {"ok": "green", "failed": "bold red", "stopped": "yellow"}
    for o in outcomes:
        s = o.step or {}
        table.add_row(str(o.session), str(o.out), Text(o.state, style=style[o.state]), s.get("name", "-"),
                      f"{s['params']:,}" if s.get("params") is not None else "-", count(s.get("flops")),
                      percent(s.get("accuracy")),
                      o.error or "")
    return table


def steps_table(steps: list[dict], title: str) -> Table:
    """One row per pipeline step (core.report): parameters, FLOPs, latency (ms, batch 1), test
    accuracy, and the ratios to the baseline (parameters and FLOPs divided by, speed multiplied by)."""
    table = Table(title=title, header_style="bold")
    for col in ("step", "params", "FLOPs", "ms", "acc", "÷params", "÷FLOPs", "×speed"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for row in report.steps_table(steps).rows:
        table.add_row(row.name, f"{row.params:,}", count(row.flops), num(row.latency_ms), percent(row.accuracy),
                      report.fixed(row.fewer_params), report.fixed(row.fewer_flops), report.fixed(row.speedup))
    return table
