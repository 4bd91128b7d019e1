"""`workbench replay`: run a session headless with progress and a summary table.

On a terminal the progress is a live rich display (a status line for the compression
steps; bars for the fine-tuning stage and epoch with loss, throughput and ETA); otherwise
(nohup, SLURM, CI logs) plain timestamped lines at every logged step. Under torchrun only
rank 0 prints."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.finetune.trainer import Stopped, distributed
from core.pipeline import replay
from workbench.format import count, duration, num, percent


def _losses(event: dict) -> str:
    return " ".join(f"{k} {num(v)}" for k, v in (event.get("losses") or {}).items())


def plain_line(event: dict) -> str | None:
    """The log line of a fine-tuning event (None for events not worth a line)."""
    kind = event.get("event")
    if kind == "stage":
        return f"stage {event['stage'] + 1}/{event['stages']} ({event['mode']}): {event['epochs']} epochs of " \
               f"{event['steps_per_epoch']} batches"
    if kind == "step":
        return (f"stage {event['stage'] + 1} epoch {event['epoch'] + 1} batch {event['step']}/"
                f"{event['steps_per_epoch']}: loss {num(event['loss'])} ({_losses(event)}) lr {num(event['lr'])} "
                f"{event['images_per_s']:.0f} img/s ETA {duration(event['eta_s'])}")
    if kind == "epoch":
        return (f"stage {event['stage'] + 1} epoch {event['epoch']}/{event['epochs']}: loss {num(event['loss'])} "
                f"val {percent(event['val_acc'])} (best {percent(event['best_val'])})")
    if kind == "stage_end":
        return (f"stage {event['stage'] + 1} ({event['mode']}) done: best val {percent(event['best_val'])} "
                f"at epoch {event['best_epoch']}, test {percent(event['test_acc'])}")
    if kind in ("stopped", "failed"):
        return f"{kind}: {event.get('message') or event.get('reason')}"
    return None


class LiveProgress:
    """Rich bars fed by fine-tuning events: the stage's epochs and the epoch's batches."""

    def __init__(self, console: Console):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.epochs = self.batches = None

    def __call__(self, event: dict) -> None:
        kind, p = event.get("event"), self.progress
        if kind == "stage":
            for task in (self.epochs, self.batches):
                if task is not None:
                    p.remove_task(task)
            label = f"stage {event['stage'] + 1}/{event['stages']} {event['mode']}"
            self.epochs = p.add_task(f"{label} epochs", total=event["epochs"], info="")
            self.batches = p.add_task("batches", total=event["steps_per_epoch"], info="")
        elif kind == "step" and self.batches is not None:
            p.update(self.batches, completed=event["step"],
                     description=f"epoch {event['epoch'] + 1} batches",
                     info=f"loss {num(event['loss'])} {event['images_per_s']:.0f} img/s ETA {duration(event['eta_s'])}")
        elif kind == "epoch" and self.epochs is not None:
            p.update(self.epochs, completed=event["epoch"],
                     info=f"val {percent(event['val_acc'])} best {percent(event['best_val'])}")
        elif kind in ("stage_end", "stopped", "failed"):
            line = plain_line(event)
            if line:
                p.console.print(line)


def run_replay(session: Path, out: Path, latency: bool, resume: bool = False) -> None:
    out_console, err = Console(), Console(stderr=True)
    quiet = int(os.environ.get("RANK", "0")) != 0  # torchrun: only rank 0 prints
    start = time.perf_counter()

    def stamp(text: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {text}", flush=True)

    with distributed():
        try:
            if quiet:
                run = replay(session, out, latency, resume=resume)
            elif err.is_terminal:
                live = LiveProgress(err)
                with live.progress:
                    run = replay(session, out, latency, lambda what: live.progress.console.print(what), resume, live)
            else:
                run = replay(session, out, latency, stamp, resume,
                             lambda event: (line := plain_line(event)) and stamp(line))
        except Stopped as exc:
            raise Stopped(f"{exc}; checkpoint in {out}: continue with `workbench replay {session} --out {out} "
                          "--resume`") from None
    if quiet:
        return
    out_console.print(steps_table(run.report["steps"], f"{session} -> {out}"))
    out_console.print(f"wrote {out / 'report.json'} in {time.perf_counter() - start:.1f} s")


def steps_table(steps: list[dict], title: str) -> Table:
    """One row per pipeline step: parameters, FLOPs, latency (ms, batch 1), test accuracy, and
    the ratios to the baseline (parameters and FLOPs divided by, speed multiplied by)."""
    table = Table(title=title, header_style="bold")
    for col in ("step", "params", "FLOPs", "ms", "acc", "÷params", "÷FLOPs", "×speed"):
        table.add_column(col, justify="left" if col == "step" else "right")
    base = steps[0]
    for step in steps:
        speed = (base["latency_ms"] / step["latency_ms"]) if step["latency_ms"] and base["latency_ms"] else None
        table.add_row(step["name"], f"{step['params']:,}", count(step["flops"]), num(step["latency_ms"]),
                      percent(step["accuracy"]), f"{base['params'] / step['params']:.2f}",
                      f"{base['flops'] / step['flops']:.2f}", f"{speed:.2f}" if speed else "-")
    return table
