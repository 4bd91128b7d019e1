"""`workbench replay`: run a session headless with a progress display and a summary table.

On a terminal the progress is a live rich display; otherwise (nohup, CI logs) plain lines."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from core.pipeline import replay
from workbench.format import count, num, percent


def run_replay(session: Path, out: Path, latency: bool) -> None:
    out_console, err = Console(), Console(stderr=True)
    start = time.perf_counter()
    if err.is_terminal:
        with err.status("replaying") as status:
            run = replay(session, out, latency, lambda what: status.update(what))
    else:
        run = replay(session, out, latency,
                     lambda what: print(f"[{time.perf_counter() - start:7.1f}s] {what}", flush=True))
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
