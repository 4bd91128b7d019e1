"""The pruning screen driven by keyboard: strategy change, per-layer edit, save, apply."""

from __future__ import annotations

from textual.widgets import DataTable

from core.models.checkpoint import load_model
from core.overview import Target
from core.prune.plan import Planner
from core.session import LayerChoice, PruneSection, load_session
from tests.tui import drive, opened, settle, text_of
from workbench.app import Workbench


def planner() -> Planner:
    loaded = load_model("demo")
    return Planner(loaded.model, loaded.arch, (1, 8, 8))


def totals(app) -> str:
    return text_of(app, "#totals")


def test_strategy_change_edit_save_and_apply(tmp_path):
    session_file = tmp_path / "s.toml"
    app = Workbench(Target.demo(), latency=False, session_path=session_file)
    expected = planner()

    async def script(pilot):
        p1 = expected.plan(PruneSection(strategy="P1"))
        assert f"→ {p1.params[1]:,}" in totals(app)
        # strategy P1 -> P4 with the keyboard
        app.screen.query_one("#strategy").focus()
        await pilot.press("enter", "down", "down", "down", "enter")
        await settle(pilot)
        assert app.prune_settings.strategy == "P4"
        p4 = expected.plan(PruneSection(strategy="P4"))
        assert f"→ {p4.params[1]:,}" in totals(app)
        table = app.screen.query_one("#plan", DataTable)
        assert [table.get_row_at(i)[5] for i in range(table.row_count)] == [str(x.keep) for x in p4.layers]
        # edit the first layer in place: keep 5 filters
        table.focus()
        await pilot.press("home", "e", *"5", "enter")
        await settle(pilot)
        edited = expected.plan(PruneSection(strategy="P4", layers={"layer1.0.conv1": LayerChoice(keep=5)}))
        assert table.get_row_at(0)[5] == "5" and table.get_row_at(0)[7] == "override"
        assert f"→ {edited.params[1]:,}" in totals(app)
        # save: the file replays to the same plan
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = load_session(session_file)
        again = expected.plan(saved.prune)
        assert [x.kept for x in again.layers] == [x.kept for x in edited.layers]
        # apply: the pruned model is measured and matches the plan
        await pilot.press("a")
        await settle(pilot)
        assert app.overview.costs.params == edited.params[1]
        assert app.overview.costs.flops == edited.flops[1]
        assert app.base.costs.params == expected.baseline[0]

    drive(app, script, "p")


def test_bad_field_value_is_shown_not_raised():
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        app.screen.query_one("#coef").focus()
        await pilot.press(*"-1")
        await settle(pilot)
        assert "coef" in totals(app) and "greater than 0" in totals(app)
        assert app.prune_settings is None  # nothing valid was chosen: the defaults stay

    drive(app, script, "p")


def test_prune_screen_snapshot(snap_compare):
    async def run_before(pilot):
        await opened(pilot)
        await pilot.press("p")
        await settle(pilot)

    assert snap_compare(Workbench(Target.demo(), latency=False), terminal_size=(80, 24), run_before=run_before)
