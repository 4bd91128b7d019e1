"""The steps table every view shows (report.md, replay's summary, the Model and Fine-tune
screens): one row per step with its costs, accuracy, latencies and ratios to the first step,
as plain data computed once; each view only formats the cells. Also report.md itself."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepRow:
    name: str
    params: int | None
    flops: int | None
    accuracy: float | None
    latency_ms: float | None                # the step's first latency (batch 1 unless [measure] says otherwise)
    latencies: tuple[float | None, ...]     # median ms per column of `StepsTable.where`
    fewer_params: float | None              # the first step's params divided by this step's
    fewer_flops: float | None
    speedup: float | None                   # the first step's latency divided by this step's (`time_ratio`)


@dataclass(frozen=True)
class StepsTable:
    where: list[tuple[str, int]]  # (device, batch) of each latency column, as the first step was measured
    rows: list[StepRow]


def _ratio(base, value) -> float | None:
    return base / value if base and value else None


def time_ratio(step: dict, base: dict) -> float | None:
    """`step`'s latency over `base`'s at the first batch size: the median over the rounds of each
    round's ratio when both carry their rounds (steps timed interleaved, core.measure.ratio), else
    the ratio of the two medians."""
    a, b = ((s.get("latency") or [{}])[0].get("rounds_ms") for s in (step, base))
    if a and b and len(a) == len(b):
        return statistics.median(x / y for x, y in zip(a, b))
    return _ratio(step.get("latency_ms"), base.get("latency_ms"))


def steps_table(steps: Sequence[dict]) -> StepsTable:
    """The table of a report's (or a `steps` event's) steps; the first step is the baseline the
    ratios divide. Raises KeyError/TypeError/AttributeError on a malformed list."""
    base = steps[0] if steps else {}
    where = [(m["device"], m["batch"]) for m in base.get("latency") or []] or [("cpu", 1)]
    rows = []
    for step in steps:
        measured = [m["median_ms"] for m in step.get("latency") or []]
        if not measured and step.get("latency_ms") is not None:
            measured = [step["latency_ms"]]
        rows.append(StepRow(
            str(step["name"]), step.get("params"), step.get("flops"), step.get("accuracy"), step.get("latency_ms"),
            tuple((measured + [None] * len(where))[:len(where)]), _ratio(base.get("params"), step.get("params")),
            _ratio(base.get("flops"), step.get("flops")), time_ratio(base, step)))
    return StepsTable(where, rows)


def fixed(x: float | None, digits: int = 2) -> str:
    """A ratio or latency with `digits` decimals ('-' when unknown)."""
    return "-" if x is None else f"{x:.{digits}f}"


def slower_notes(steps: Sequence[dict]) -> list[str]:
    """One note per layer whose measured time goes up with its step (`slower: 0.31 -> 0.38 ms`), or
    that skip_slower left whole for it."""
    notes = []
    for step in steps:
        for layer in step.get("layers") or []:
            times, skipped = layer.get("time_ms"), layer.get("skipped")
            if skipped and skipped.startswith("not faster"):
                notes.append(f"- {step['name']} {layer['name']}: left whole, {skipped}")
            elif times and not skipped and times[1] > times[0]:
                notes.append(f"- {step['name']} {layer['name']}: slower: {times[0]:.3f} -> {times[1]:.3f} ms")
    return notes


def markdown(report: dict) -> str:
    """report.md: the steps as a table (params, FLOPs, accuracy, latency per device and batch
    size, the ratios) and notes (fine-tuning, [target], a latency warning)."""
    table = steps_table(report["steps"])
    lines = ["| step | params | FLOPs | test accuracy | "
             + " | ".join(f"latency ms ({d}, batch {b})" for d, b in table.where) + " | params ÷ | FLOPs ÷ |",
             "|---|---:|---:|---:|" + "---:|" * len(table.where) + "---:|---:|"]
    for row in table.rows:
        acc = f"{100 * row.accuracy:.2f}%" if row.accuracy is not None else "-"
        ms = " | ".join(fixed(x, 3) for x in row.latencies)
        lines.append(f"| {row.name} | {row.params:,} | {row.flops:,} | {acc} | {ms} | "
                     f"{fixed(row.fewer_params)} | {fixed(row.fewer_flops)} |")
    steps = report["steps"]
    tuned = [s for s in steps if s["name"].startswith("finetune:")]
    notes = [f"- {s['name']}: {s['epochs']} epochs, best validation {100 * s['best_val']:.2f}% at epoch "
             f"{s['best_epoch']}" for s in tuned if s.get("best_val") is not None]
    if tuned and report.get("device"):
        notes.append(f"- trained on {report['device']}")
    if report.get("target"):
        t = report["target"]
        notes.append(f"- [target] {t['metric']} = {t['target']} of the baseline: solved {t['knob']} = "
                     f"{t['value']:.6g}, achieved {t['achieved']:.4f}"
                     + ((" (the plan pruned and timed whole)" if t.get("timed") else
                         " (predicted from the per-layer times)") if t["metric"] == "latency" else "")
                     + (f" on cached times measured since {t['cached']} (WORKBENCH_TIMING_CACHE=off times afresh)"
                        if t.get("cached") else "")
                     + (f", measured {t['measured']:.4f}" if t.get("measured") is not None else ""))
    notes += slower_notes(steps)
    if report.get("latency_warning"):
        notes.append(f"- warning: {report['latency_warning']}")
    return "# Replay report\n\n" + "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")
