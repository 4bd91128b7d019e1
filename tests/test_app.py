"""The Textual app driven with Pilot, keyboard only, at 80x24."""

from __future__ import annotations

import json
import math

from textual.widgets import DataTable, Static

from core.measure import count_params
from core.models.checkpoint import load_model
from core.overview import Target
from core.stats import network_stats
from tests.tui import drive, opened
from workbench.app import Workbench


def line(app) -> str:
    return str(app.screen.query_one("#layer-line", Static).render())


def demo_stats():
    return network_stats(load_model("demo").model)


def test_stats_table_navigation_sort_and_filter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stats = demo_stats()
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        table = app.screen.query_one("#layers", DataTable)
        assert table.row_count == len(stats.layers) == 19
        assert line(app).startswith("conv1 16x1x3x3")
        await pilot.press("down")
        assert line(app).startswith("layer1.0.conv1")
        # cursor to the kurt column, sort ascending then descending
        await pilot.press("right", "right", "right", "s")
        by_kurt = sorted(stats.layers, key=lambda s: s.kurt)
        assert table.get_row_at(0)[0] == by_kurt[0].name
        await pilot.press("s")
        assert table.get_row_at(0)[0] == by_kurt[-1].name
        # filter by name
        await pilot.press("slash", *"layer3", "enter")
        assert table.row_count == 6
        await pilot.press("ctrl+e")
        doc = json.loads((tmp_path / "workbench-stats-resnet20.json").read_text())
        assert len(doc["layers"]) == 19
        assert math.isclose(doc["layers"][5]["kurt"], stats.layers[5].kurt, rel_tol=1e-12)

    drive(app, script)


def test_summary_screen_shows_costs_and_accuracy():
    app = Workbench(Target.demo(), latency=False)
    params = count_params(load_model("demo").model)

    async def script(pilot):
        await pilot.press("m")
        text = str(app.screen.query_one("#summary", Static).render())
        assert f"{params:,}" in text
        assert "digits" in text and "test" in text
        await pilot.press("w")
        assert app.screen.query_one("#layers", DataTable).row_count == 19

    drive(app, script)


def test_unreadable_checkpoint_is_shown_not_raised(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    app = Workbench(Target(model="resnet20", checkpoint=bad), latency=False)

    async def script(pilot):
        assert app.error and "bad.pth" in app.error
        assert "cannot open" in str(app.screen.query_one("#loading-what", Static).render())

    drive(app, script)


def test_stats_screen_snapshot(snap_compare):
    assert snap_compare(Workbench(Target.demo(), latency=False), terminal_size=(80, 24),
                        run_before=opened, press=["down", "down"])


def test_summary_screen_snapshot(snap_compare):
    assert snap_compare(Workbench(Target.demo(), latency=False), terminal_size=(80, 24),
                        run_before=opened, press=["m"])
