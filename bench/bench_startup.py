"""How fast the workbench answers: `--help`, `--version`, bad input (answered before torch
is imported), the TUI's first frame and the demo's statistics table, each as a ratio to
`python -c "import torch"` measured in the same run.

Run on an idle machine: python bench/bench_startup.py [--repeats 5] [--suite]
Prints one row per case: median seconds, ratio to `import torch`, and the target (seconds).
`--suite` also times the README's test command (`python -m pytest`, the install already
done). The TUI cases start `workbench` in a detached tmux session at 80x24 and poll its
screen every 20 ms: "first frame" is the first text on screen (the loading screen), "table"
the demo's first conv layer name in the statistics table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKBENCH = [sys.executable, "-m", "workbench"]


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def tui_times(timeout: float = 60.0) -> tuple[float, float]:
    """(first frame, statistics table) seconds of `workbench` on the demo in tmux at 80x24."""
    name = f"wb-bench-{time.monotonic_ns()}"
    start = time.perf_counter()
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "80", "-y", "24",
                    " ".join(WORKBENCH)], check=True, cwd=REPO)
    first = table = None
    try:
        while time.perf_counter() - start < timeout and table is None:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True,
                                    text=True).stdout
            now = time.perf_counter() - start
            if first is None and screen.strip():
                first = now
            if "conv1" in screen:
                table = now
            time.sleep(0.02)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], check=False)
    if first is None or table is None:
        raise SystemExit("the TUI did not show its statistics table within the timeout")
    return first, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--suite", action="store_true", help="also time the README's test command")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wb-startup-"))
    (tmp / "bad.toml").write_text('version = 1\n[model\nname = "demo"\n')
    (tmp / "typo.toml").write_text('version = 1\n[model]\nname = "demo"\n[prune]\nstrategy = "P1"\ncoeff = 2\n')
    (tmp / "type.toml").write_text('version = 1\n[model]\nname = "demo"\n[prune]\npercent = "half"\n')
    (tmp / "range.toml").write_text('version = 1\n[model]\nname = "demo"\n[prune]\nstrategy = "P4"\npercent = 1.5\n')
    (tmp / "strategy.toml").write_text('version = 1\n[model]\nname = "demo"\n[prune]\nstrategy = "P9"\n')
    cases = [  # (what, command, target seconds)
        ("python -c 'import torch'", [sys.executable, "-c", "import torch"], None),
        ("workbench --help", [*WORKBENCH, "--help"], 0.5),
        ("workbench --version", [*WORKBENCH, "--version"], 0.5),
        ("missing checkpoint", [*WORKBENCH, "inspect", "--checkpoint", str(tmp / "none.pth")], 1.0),
        ("unknown model name", [*WORKBENCH, "inspect", "--model", "resnet57"], 1.0),
        ("missing data folder", [*WORKBENCH, "inspect", "--model", "demo", "--data", str(tmp / "none")], 1.0),
        ("malformed TOML", [*WORKBENCH, "replay", str(tmp / "bad.toml")], 1.0),
        ("unknown session key", [*WORKBENCH, "replay", str(tmp / "typo.toml")], 1.0),
        ("wrong type", [*WORKBENCH, "replay", str(tmp / "type.toml")], 1.0),
        ("out-of-range value", [*WORKBENCH, "replay", str(tmp / "range.toml")], 1.0),
        ("unknown strategy", [*WORKBENCH, "open", "--session", str(tmp / "strategy.toml")], 1.0),
    ]
    rows = []
    for what, cmd, target in cases:
        rows.append((what, statistics.median(timed(cmd, tmp) for _ in range(args.repeats)), target))
    if shutil.which("tmux"):
        runs = [tui_times() for _ in range(args.repeats)]
        rows.append(("TUI first frame (80x24)", statistics.median(r[0] for r in runs), 1.5))
        rows.append(("TUI demo statistics table", statistics.median(r[1] for r in runs), 3.0))
    if args.suite:
        rows.append(("test suite (python -m pytest)", timed([sys.executable, "-m", "pytest", "-q"], REPO), 300.0))
    torch_s = rows[0][1]
    print(f"{'case':34} {'median s':>9} {'/ import torch':>15} {'target s':>9}")
    for what, seconds, target in rows:
        verdict = "" if target is None else ("  ok" if seconds <= target else "  SLOW")
        print(f"{what:34} {seconds:9.2f} {seconds / torch_s:15.2f} {target or '':>9}{verdict}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
