"""Compare runs: the final step of every run directory (finished or still going), its deltas
to its own baseline, and the Pareto frontier of accuracy against FLOPs or latency.

A finished run is read from its report.json; one still going (or stopped) from the last
`steps` event of its metrics.jsonl, which holds every step measured so far. Nothing here
imports torch, so `workbench compare` answers at once.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import WorkbenchError
from core.finetune.events import Steps, parse_all
from core.finetune.rundir import REPORT, RUN_FILES, is_alive, read_events, read_status

COSTS = {"flops": "flops", "latency": "latency_ms"}
SORT_KEYS = ("run", "params", "flops", "latency", "accuracy", "delta", "params_ratio", "flops_ratio",
             "latency_ratio")
CSV_FIELDS = ("run", "state", "step", "params", "flops", "latency_ms", "accuracy", "baseline_accuracy",
              "delta_accuracy", "params_ratio", "flops_ratio", "latency_ratio", "frontier", "path")


@dataclass
class RunRow:
    """One run's final step and its baseline (step 0 of the same run)."""

    run: str                # the run folder's name
    path: Path
    state: str              # done, running, stopped, failed, interrupted (a dead "running"), unknown
    step: str               # the final step's name: baseline, pruned, decomposed, finetune:<mode>
    params: int | None
    flops: int | None
    latency_ms: float | None
    accuracy: float | None
    baseline: dict
    frontier: bool = False

    @property
    def delta(self) -> float | None:
        """Accuracy minus the baseline's (a fraction: -0.012 is 1.2 points lost)."""
        base = self.baseline.get("accuracy")
        return None if self.accuracy is None or base is None else self.accuracy - base

    def ratio(self, key: str) -> float | None:
        """The baseline's `key` (params, flops, latency_ms) over this step's: 2.0 = half the cost."""
        mine, base = getattr(self, key), self.baseline.get(key)
        return base / mine if mine and base else None

    def value(self, key: str):
        """The value `--sort KEY` orders by (None sorts last)."""
        if key.endswith("_ratio"):
            return self.ratio("latency_ms" if key == "latency_ratio" else key[:-6])
        return {"latency": self.latency_ms, "delta": self.delta}.get(key, getattr(self, key, None))


def find_runs(paths: list[Path]) -> list[Path]:
    """The run directories among `paths`: each one a run itself, or a folder of runs (its
    sub-folders that hold one). One line for a path that is neither."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise WorkbenchError(f"{path} {'is not a folder' if path.exists() else 'does not exist'}: give run "
                                 "directories (a replay's --out) or folders of them")
        if _is_run(path):
            found.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if p.is_dir() and _is_run(p))
        if not inside:
            raise WorkbenchError(f"{path} holds no run ({', '.join(RUN_FILES)}) and no folder of one: give a "
                                 "replay's --out, or the folder of several")
        found.extend(inside)
    unique: dict[Path, Path] = {}
    for run in found:
        unique.setdefault(run.resolve(), run)
    return list(unique.values())


def _is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def is_runs_folder(path: Path) -> bool:
    """Whether `path` is a folder of runs (a queue's --out) rather than a run itself."""
    return path.is_dir() and not _is_run(path) and any(p.is_dir() and _is_run(p) for p in path.iterdir())


def read_run(path: Path) -> RunRow | None:
    """The final step of the run at `path`, or None when it has measured nothing yet."""
    status = read_status(path)
    state = (status or {}).get("state", "unknown")
    if state == "running" and not is_alive(status):
        state = "interrupted"
    steps = _report_steps(path) if state != "running" else None
    if steps is None:
        events = [e for e in parse_all(read_events(path)) if isinstance(e, Steps)]
        steps = events[-1].steps if events else _report_steps(path)
    steps = [s for s in steps or [] if isinstance(s, dict) and "params" in s]
    if not steps:
        return None
    if state == "unknown" and (path / REPORT).is_file():
        state = "done"
    last, base = steps[-1], {k: _number(steps[0].get(k)) for k in ("params", "flops", "latency_ms", "accuracy")}
    return RunRow(path.name, path, state, str(last.get("name", "?")), *(_number(last.get(k)) for k in base), base)


def _number(value) -> float | int | None:
    """A measured value, or None for anything else (a hand-edited or foreign report)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _report_steps(path: Path) -> list | None:
    try:
        report = json.loads((path / REPORT).read_text())
    except (OSError, ValueError):
        return None
    steps = report.get("steps") if isinstance(report, dict) else None
    return steps if isinstance(steps, list) else None


def pareto(costs: list[float | None], accuracies: list[float | None]) -> list[bool]:
    """Which points no other point dominates (costs no more and is no less accurate, better in
    one); points missing either value are never on the frontier."""
    known = np.array([c is not None and a is not None for c, a in zip(costs, accuracies)], dtype=bool)
    c = np.array([x if x is not None else np.nan for x in costs], dtype=float)
    a = np.array([x if x is not None else np.nan for x in accuracies], dtype=float)
    no_worse = (c[None, :] <= c[:, None]) & (a[None, :] >= a[:, None])
    better = (c[None, :] < c[:, None]) | (a[None, :] > a[:, None])
    dominated = (no_worse & better & known[None, :]).any(axis=1)
    return (known & ~dominated).tolist()


def compare(paths: list[Path], by: str = "flops", sort: str | None = None) -> list[RunRow]:
    """Every run found under `paths` with a measured step, the frontier marked on (`by` cost,
    accuracy), sorted by `sort` (default `by`): costs and ratios ascending, accuracy and delta
    descending, run names alphabetically."""
    if by not in COSTS:
        raise WorkbenchError(f"--by {by}: use one of {', '.join(COSTS)}")
    sort = sort or by
    if sort not in SORT_KEYS:
        raise WorkbenchError(f"--sort {sort}: use one of {', '.join(SORT_KEYS)}")
    rows = [row for row in map(read_run, find_runs(paths)) if row is not None]
    if not rows:
        raise WorkbenchError("none of these runs has measured a step yet: compare again once a replay has "
                             "measured its baseline")
    for row, on in zip(rows, pareto([getattr(r, COSTS[by]) for r in rows], [r.accuracy for r in rows])):
        row.frontier = on
    descending = sort in ("accuracy", "delta") or sort.endswith("_ratio")
    present = [r for r in rows if r.value(sort) is not None]
    present.sort(key=lambda r: r.value(sort), reverse=descending)
    return present + [r for r in rows if r.value(sort) is None]


def table(rows: list[RunRow], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the comparison, the frontier's row numbers starred;
    `compact` (a terminal): counts as 1.23M and short headers."""
    count = _short if compact else _count
    headers = (["#", "run", "state", "step", "params", "FLOPs", "ms", "acc", "Δ pts", "params÷", "FLOPs÷", "ms÷"]
               if compact else ["#", "run", "state", "step", "params", "FLOPs", "latency ms", "accuracy", "delta pts",
                                "params x", "FLOPs x", "latency x"])
    cells = [[f"{i}{'*' if r.frontier else ''}", r.run, r.state, r.step, count(r.params), count(r.flops),
              _fixed(r.latency_ms, 3), _pct(r.accuracy), _signed(r.delta), _fixed(r.ratio("params")),
              _fixed(r.ratio("flops")), _fixed(r.ratio("latency_ms"))] for i, r in enumerate(rows, 1)]
    return headers, cells


def markdown(rows: list[RunRow], by: str = "flops") -> str:
    headers, cells = table(rows)
    right = "|".join("---" if 0 < i < 4 else "---:" for i in range(len(headers)))
    lines = ["| " + " | ".join(headers) + " |", f"|{right}|"] + ["| " + " | ".join(c) + " |" for c in cells]
    return (f"# Run comparison\n\nThe final step of each run; delta pts: accuracy minus the run's own baseline's, "
            f"in points; x: the baseline's cost over the step's (2.00: half); * the Pareto frontier: no other run "
            f"is as accurate for less {by}.\n\n" + "\n".join(lines) + "\n")


def csv_text(rows: list[RunRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow([r.run, r.state, r.step, r.params, r.flops, r.latency_ms, r.accuracy,
                         r.baseline.get("accuracy"), r.delta, r.ratio("params"), r.ratio("flops"),
                         r.ratio("latency_ms"), int(r.frontier), str(r.path)])
    return out.getvalue()


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _short(n: int | None) -> str:
    """1234567 -> 1.23M, 45600 -> 45.6K."""
    if n is None:
        return "-"
    unit, scale = next(((u, v) for u, v in (("G", 1e9), ("M", 1e6), ("K", 1e3)) if abs(n) >= v), ("", 1))
    return f"{n / scale:.3g}{unit}"


def _fixed(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"
