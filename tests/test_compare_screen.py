"""The Compare screen (`workbench open RUNS_DIR` on a folder of runs): the table of final steps,
sorting from a column header, FLOPs/latency, and runs that measure more while it is open."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from textual.widgets import DataTable, Static

from core.compare import is_runs_folder
from workbench.screens.compare import SORT_OF_COLUMN, CompareApp, CompareScatter, CompareScreen


def _run(folder: Path, steps: list[tuple[str, int, float, float]], state: str = "done") -> None:
    folder.mkdir(parents=True)
    entries = [{"name": n, "params": 10 * f, "flops": f, "latency_ms": ms, "accuracy": a, "layers": []}
               for n, f, a, ms in steps]
    (folder / "status.json").write_text(json.dumps({"state": state, "pid": os.getpid()}))
    if state == "done":
        (folder / "report.json").write_text(json.dumps({"steps": entries}))
    else:
        (folder / "metrics.jsonl").write_text(json.dumps({"event": "steps", "steps": entries}) + "\n")


def _column(app, index: int) -> list[str]:
    grid = app.screen.query_one("#compare-table", DataTable)
    return [str(grid.get_row_at(i)[index]) for i in range(grid.row_count)]


def test_compare_screen_sorts_toggles_and_follows_runs(tmp_path):
    _run(tmp_path / "a1", [("baseline", 100, 0.90, 2.0), ("finetune:ce", 50, 0.88, 1.0)])
    _run(tmp_path / "a2", [("baseline", 100, 0.90, 2.0), ("finetune:ce", 40, 0.86, 1.6)])
    _run(tmp_path / "going", [("baseline", 100, 0.90, 2.0), ("pruned", 60, 0.30, 1.2)], state="running")
    assert is_runs_folder(tmp_path) and not is_runs_folder(tmp_path / "a1")
    app = CompareApp([tmp_path])

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, CompareScreen)
            assert _column(app, 1) == ["a2", "a1", "going"]                    # by FLOPs, ascending
            assert _column(app, 0) == ["1*", "2*", "3"]                        # a1 and a2 on the frontier
            assert "1 still going" in str(screen.query_one("#compare-note", Static).render())
            grid = screen.query_one("#compare-table", DataTable)
            index = SORT_OF_COLUMN.index("accuracy")
            column = list(grid.columns)[index]
            grid.post_message(DataTable.HeaderSelected(grid, column, index, grid.columns[column].label))
            await pilot.pause()
            assert _column(app, 1) == ["a1", "a2", "going"]                    # most accurate first
            await pilot.press("b")
            await pilot.pause()
            assert screen.by == "latency" and _column(app, 0) == ["1*", "2", "3"]  # a1: 1.0 ms, the most accurate
            assert screen.query_one("#compare-plot", CompareScatter).by == "latency"
            (tmp_path / "going" / "metrics.jsonl").open("a").write(json.dumps({"event": "steps", "steps": [
                {"name": "baseline", "params": 1000, "flops": 100, "latency_ms": 2.0, "accuracy": 0.9},
                {"name": "finetune:ce", "params": 600, "flops": 60, "latency_ms": 1.2, "accuracy": 0.95}]}) + "\n")
            await pilot.press("r")
            await pilot.pause()
            assert _column(app, 1)[0] == "going" and _column(app, 3)[0] == "finetune:ce"

    asyncio.run(main())


def test_a_refresh_tick_after_the_screens_widgets_are_gone_does_nothing(tmp_path):
    """The refresh timer can tick while the app closes, the screen's widgets already removed."""
    _run(tmp_path / "a1", [("baseline", 100, 0.90, 2.0), ("finetune:ce", 50, 0.88, 1.0)])
    _run(tmp_path / "a2", [("baseline", 100, 0.90, 2.0), ("finetune:ce", 40, 0.86, 1.6)])
    app = CompareApp([tmp_path])

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            screen = app.screen
            await screen.query_one("#compare-note").remove()
            screen.action_reload()

    asyncio.run(main())
