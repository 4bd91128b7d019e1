"""The app's single state: the statistics table shows before the costs are in (staged loading),
screens change the state through typed messages, and workers post results that the app's
handlers, in the main thread, turn into state."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from textual.widgets import DataTable

import core.overview
import workbench.app
from core.models.checkpoint import load_model
from core.overview import Target
from core.session import PruneSection
from core.stats import network_stats
from tests.tui import drive, settle, text_of, wait_for
from workbench import messages
from workbench.app import Workbench
from workbench.format import jb_p, num, shape
from workbench.screens.stats import COLUMNS


class Recording(Workbench):
    """The workbench, noting each message it handles and each state change, with its thread."""

    CSS_PATH = Path(workbench.app.__file__).with_name("app.tcss")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[object, threading.Thread]] = []

    async def _on_message(self, message) -> None:
        if isinstance(message, (messages.SettingsChanged, messages.StatsReady, messages.ModelOpened,
                                messages.PlanApplied, messages.Progress)):
            self.seen.append((message, threading.current_thread()))
        await super()._on_message(message)

    def watch_state(self, state) -> None:
        self.seen.append(("state", threading.current_thread()))
        super().watch_state(state)

    def handled(self, kind) -> list:
        return [m for m, _ in self.seen if isinstance(m, kind)]


class Gate:
    """Holds a function of core.overview until `open()`: the loader stops there."""

    def __init__(self, monkeypatch, name: str) -> None:
        self.reached, self.released = threading.Event(), threading.Event()
        real = getattr(core.overview, name)

        def gated(*args, **kwargs):
            self.reached.set()
            self.released.wait(120)
            return real(*args, **kwargs)

        monkeypatch.setattr(core.overview, name, gated)

    def open(self) -> None:
        self.released.set()


async def until(pilot, condition, seconds: float = 120.0) -> None:
    if not await wait_for(pilot, condition, seconds):
        raise AssertionError("timed out waiting for the app")


def rows(app) -> list[list[str]]:
    table = app.screen.query_one("#layers", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def expected_rows(stats, shown: list[str]) -> list[list[str]]:
    attrs = {key: attr for key, _, attr in COLUMNS}
    return [[layer.name if k == "name" else shape(layer.shape) if k == "shape" else
             jb_p(layer.jb, layer.jb_p) if k == "pJB" else num(getattr(layer, attrs[k])) for k in shown]
            for layer in stats.layers]


def test_the_statistics_table_shows_before_the_tests_and_costs_then_fills_in(monkeypatch):
    """The loader posts the statistics as soon as they exist: the table is up (the normality
    tests' cells …) while scipy's tests and the costs are still being computed; then the tests
    fill in, then the costs; the final figures are those of a complete overview."""
    tests, costs = Gate(monkeypatch, "with_tests"), Gate(monkeypatch, "measure_costs")
    full = network_stats(load_model("demo").model)
    app = Recording(Target.demo(), latency=False)

    async def main():
        async with app.run_test(size=(160, 30)) as pilot:  # wide: every column on one page
            try:
                await until(pilot, lambda: tests.reached.is_set() and app.screen.query("#layers")
                            and app.screen.query_one("#layers", DataTable).row_count == 19)
                assert app.overview is None and app.base is None  # no costs yet
                shown = app.screen.shown_columns
                table = rows(app)
                assert [r[0] for r in table] == [layer.name for layer in full.layers]
                for key in ("W", "pW", "pJB"):
                    assert {r[shown.index(key)] for r in table} == {"…"}
                assert [r[shown.index("kurt")] for r in table] == [num(layer.kurt) for layer in full.layers]
                assert "measuring the normality tests" in text_of(app, "#layer-line")

                tests.open()
                await until(pilot, lambda: costs.reached.is_set() and rows(app)[0][shown.index("W")] != "…"
                            and "costs" in text_of(app, "#loading-what"))
                assert app.overview is None  # the tests are in, the costs still measured
                assert app.screen.query_one("#loading").display  # and the screen says so
                assert rows(app) == expected_rows(full, shown)

                costs.open()
                await until(pilot, lambda: app.overview is not None)
                await settle(pilot)
                assert not app.screen.query_one("#loading").display
                assert rows(app) == expected_rows(full, shown)
                assert app.overview.stats.t_range == full.t_range
                assert f"W {num(full.layers[0].shapiro_w)}" in text_of(app, "#layer-line")
                assert app.overview.costs.params == sum(p.numel() for p in load_model("demo").model.parameters())
                assert len(app.handled(messages.StatsReady)) == 2  # before and after the tests
            finally:
                tests.open()
                costs.open()

    asyncio.run(main())


def test_a_settings_change_on_a_screen_reaches_the_app_state_as_a_message():
    """The Prune screen posts SettingsChanged; the app's state holds it; the state's parts are
    read-only on the app (only messages change them)."""
    app = Recording(Target.demo(), latency=False)

    async def script(pilot):
        app.screen.query_one("#strategy").focus()
        await pilot.press("enter", "down", "down", "down", "enter")
        await settle(pilot)
        posted = app.handled(messages.SettingsChanged)
        assert posted and posted[-1].prune.strategy == "P4"
        assert app.state.prune.strategy == "P4" and app.prune_settings is app.state.prune
        with pytest.raises(AttributeError):
            app.prune_settings = PruneSection()
        # a stage added on Tune arrives the same way
        app.switch_screen("finetune")
        await settle(pilot)
        await pilot.press("a")
        await settle(pilot)
        assert app.handled(messages.SettingsChanged)[-1].finetune == app.state.finetune
        assert [s.mode for s in app.state.finetune] == ["aux", "ce", "ce"]

    drive(app, script, "p")


def test_workers_post_results_and_the_state_changes_only_in_the_main_thread():
    """Opening and applying a plan run in worker threads; their results arrive as messages
    handled in the main thread, which alone assigns the state."""
    app = Recording(Target.demo(), latency=False)

    async def script(pilot):
        await pilot.press("a")  # apply the P1 plan
        await settle(pilot)
        assert app.pruned is not None and app.overview is app.pruned
        assert app.handled(messages.ModelOpened) and app.handled(messages.PlanApplied)
        assert app.handled(messages.PlanApplied)[-1].overview is app.pruned
        main = threading.main_thread()
        assert {thread for _, thread in app.seen} == {main}
        assert any(m == "state" for m, _ in app.seen)

    drive(app, script, "p")
