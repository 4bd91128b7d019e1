"""The decomposition screen driven by keyboard: rank edit, layer toggle, save, apply (A2 and A3)."""

from __future__ import annotations

from textual.widgets import DataTable

from core.decompose.plan import Decomposer
from core.models.checkpoint import load_model
from core.overview import Target
from core.session import DecomposeSection, LayerRanks, load_session
from tests.tui import drive, opened, settle, text_of
from workbench.app import Workbench


def totals(app) -> str:
    return text_of(app, "#dtotals")


def test_edit_toggle_save_apply(tmp_path):
    session_file = tmp_path / "s.toml"
    app = Workbench(Target.demo(), latency=False, session_path=session_file)
    loaded = load_model("demo")
    decomposer = Decomposer(loaded.model, loaded.arch, (1, 8, 8))

    async def script(pilot):
        default = decomposer.plan(DecomposeSection())
        assert f"→ {default.params[1]:,}" in totals(app)
        table = app.screen.query_one("#layers-d", DataTable)
        assert table.get_row_at(0)[6] == "off"  # the stem is not decomposed by default
        # every decomposed layer's error was filled in by the worker
        errors = [table.get_row_at(i)[5] for i in range(1, table.row_count)]
        assert all(e not in ("…", "-") for e in errors)
        # edit layer1.0.conv1's ranks in place
        await pilot.press("home", "down", "e", *"8 6", "enter")
        await settle(pilot)
        edited = DecomposeSection(ranks={"layer1.0.conv1": LayerRanks(r_out=8, r_in=6)})
        assert table.get_row_at(1)[2] == "8 6"
        assert f"→ {decomposer.plan(edited).params[1]:,}" in totals(app)
        # switch layer1.0.conv2 off
        await pilot.press("down", "space")
        await settle(pilot)
        assert table.get_row_at(2)[6] == "off"
        chosen = app.decompose_settings.layers
        assert "layer1.0.conv2" not in chosen and "layer1.0.conv1" in chosen
        expected = decomposer.plan(app.decompose_settings)
        assert f"→ {expected.params[1]:,}" in totals(app)
        # save: the file replays to the same ranks
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = load_session(session_file)
        assert saved.prune is None  # no pruning choice was made
        again = decomposer.plan(saved.decompose)
        assert [(x.name, x.ranks) for x in again.layers] == [(x.name, x.ranks) for x in expected.layers]
        # apply (A2): the measured model matches the plan
        await pilot.press("a")
        await settle(pilot)
        assert app.decomposed is not None
        assert (app.overview.costs.params, app.overview.costs.flops) == (expected.params[1], expected.flops[1])

    drive(app, script, "d")


def test_a3_decomposes_the_pruned_model():
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        await pilot.press("a")  # prune with the default P1 plan
        await settle(pilot)
        pruned = app.pruned.opened
        await pilot.press("d")
        await settle(pilot)
        assert "A3" in totals(app)
        plan = Decomposer(pruned.model, pruned.loaded.arch, (1, 8, 8)).plan(DecomposeSection())
        assert f"{plan.params[0]:,} → {plan.params[1]:,}" in totals(app)
        await pilot.press("a")
        await settle(pilot)
        assert app.overview.costs.params == plan.params[1]
        await pilot.press("m")
        text = text_of(app, "#summary")
        assert "pruned" in text and "decomposed" in text

    drive(app, script, "p")


def test_decompose_screen_snapshot(snap_compare):
    async def run_before(pilot):
        await opened(pilot)
        await pilot.press("d")
        await settle(pilot)

    assert snap_compare(Workbench(Target.demo(), latency=False), terminal_size=(80, 24), run_before=run_before)
