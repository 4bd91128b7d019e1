"""Issue 13, tried as a new user would at 80x24: no crash, no stale plan applied, every key
discoverable, saving keeps the user's file, the detail follows the cursor."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input, Select
from textual.widgets._footer import FooterKey, FooterLabel

from core.models.checkpoint import load_model
from core.overview import Target
from core.prune.plan import Planner
from core.session import DecomposeSection, PruneSection, load_session
from core.session_file import MARK
from tests.test_app_finetune import write_run
from tests.tui import drive, settle, text_of
from workbench.app import Workbench
from workbench.finetune_process import replay_command
from workbench.screens.dialogs import ConfirmScreen
from workbench.screens.help import HelpScreen


def messages(app) -> list[str]:
    return [n.message for n in app._notifications]


def layer_line(app) -> str:
    return text_of(app, "#layer-line")


def row_under_cursor(app) -> str:
    table = app.screen.query_one("#layers", DataTable)
    return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value


def test_starting_a_run_without_data_is_a_notification_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = Workbench(Target(model="demo"), latency=False)

    async def script(pilot):
        await pilot.press("f", "s")
        await pilot.pause()
        assert app.is_running and app.followed is None
        said = " ".join(messages(app))
        assert "needs data" in said and "--data" in said and "[data]" in said
        assert not any(n.markup for n in app._notifications)  # "[data]" is shown, not read as markup
        assert not (tmp_path / "runs").exists()

    drive(app, script)


def test_p5_error_refuses_apply_and_p5_stage_fields_plan_the_demo():
    app = Workbench(Target.demo(), latency=False)
    loaded = load_model("demo")
    planner = Planner(loaded.model, loaded.arch, (1, 8, 8))

    async def script(pilot):
        strategy = app.screen.query_one("#strategy", Select)
        strategy.focus()
        await pilot.press("enter", "down", "down", "down", "enter")  # P4
        await settle(pilot)
        assert app.screen.plan.settings.strategy == "P4"
        await pilot.press("enter", "down", "enter")  # P5: no built-in variant for the demo
        await settle(pilot)
        assert "P5 needs variant" in text_of(app, "#totals") and "out of date" in text_of(app, "#totals")
        assert app.screen.query_one("#plan", DataTable).has_class("-stale")
        app.screen.query_one("#plan", DataTable).focus()
        await pilot.press("a")
        await settle(pilot)
        assert app.pruned is None  # the P4 plan on screen was not applied
        assert any("not applied" in m and "P5 needs variant" in m for m in messages(app))
        # the P5 fields: computed stage ends as the placeholder, ratios typed in
        assert app.screen.query_one("#row-p5").display and not app.screen.query_one("#row-t").display
        ends = app.screen.stage_ends()
        assert app.screen.query_one("#stage_bounds", Input).placeholder == "auto " + " ".join(map(str, ends))
        app.screen.query_one("#stage_ratios", Input).focus()
        await pilot.press(*"0.5 0.3 0.1")
        await settle(pilot)
        expected = planner.plan(PruneSection(strategy="P5", stage_bounds=ends, stage_ratios=[0.5, 0.3, 0.1]))
        assert f"→ {expected.params[1]:,}" in text_of(app, "#totals")
        app.screen.query_one("#plan", DataTable).focus()
        await pilot.press("a")
        await settle(pilot)
        assert app.pruned.costs.params == expected.params[1]

    drive(app, script, "p")


def test_out_of_range_rank_refuses_apply():
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        await pilot.press("home", "down", "e", *"999 999", "enter")
        await settle(pilot)
        assert "999" in text_of(app, "#dtotals") and "out of date" in text_of(app, "#dtotals")
        await pilot.press("a")
        await settle(pilot)
        assert app.decomposed is None
        assert any(m.startswith("not applied") for m in messages(app))

    drive(app, script, "d")


def test_switching_to_cp3_says_custom_ranks_are_dropped():
    app = Workbench(Target.demo(), latency=False,
                    decompose=DecomposeSection(ranks={"layer1.0.conv1": {"r_out": 8, "r_in": 6}}))

    async def script(pilot):
        app.screen.query_one("#method", Select).value = "cp3"
        for _ in range(50):  # not settle: the CP3 errors take longer than the message shows
            await pilot.pause()
            if app.decompose_settings.method == "cp3":
                break
        assert any("custom ranks dropped" in m and "layer1.0.conv1" in m for m in messages(app))
        assert app.decompose_settings.method == "cp3" and not app.decompose_settings.ranks

    drive(app, script, "d")


def test_detail_follows_the_cursor_after_sort_clear_and_palette():
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        await pilot.press("down", "down", "right", "right", "right", "s")  # sort by kurt, cursor on row 2
        await pilot.pause()
        assert layer_line(app).startswith(row_under_cursor(app) + " ")
        await pilot.press("slash", *"layer3", "enter", "down", "escape")
        await pilot.pause()
        assert layer_line(app).startswith(row_under_cursor(app) + " ")
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("down")
        await pilot.pause()
        assert layer_line(app).startswith(row_under_cursor(app) + " ")

    drive(app, script)


def test_help_toggles_and_lists_keys_and_columns():
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        for opener, closer in (("question_mark", "question_mark"), ("f1", "f1"), ("f1", "escape")):
            await pilot.press(opener)
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            text = app.screen.text
            for word in ("Sort col", "Filter", "Export", "Save", "Quit", "skew", "kurt", "k3·k4", "JB"):
                assert word in text
            await pilot.press(closer)
            await pilot.pause()
            assert not isinstance(app.screen, HelpScreen)
        await pilot.press("p")
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()
        assert all(w in app.screen.text for w in ("Apply", "ratio", "kept", "[b]T[/]"))

    drive(app, script)


def test_save_edits_the_users_file_in_place_after_asking(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('# my session\nversion = 1\n\n[model]\nname = "demo"  # tiny\n\n[data]\nspec = "demo"\n\n'
                    '# pruning\n[prune]\nstrategy = "P4"\n')
    loaded = load_session(path)
    app = Workbench(loaded.target(), latency=False, prune=loaded.prune, session_path=path,
                    finetune=loaded.finetune)

    async def script(pilot):
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert path.read_text().startswith("# my session")
        assert "finetune" not in path.read_text()
        await pilot.press("ctrl+s")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        text = path.read_text()
        assert text.startswith("# my session") and 'name = "demo"  # tiny' in text and "# pruning" in text
        assert text.index("[model]") < text.index("[prune]") < text.index("[[finetune]]")
        assert "batch_size" not in text and "momentum" not in text  # defaults are not written
        saved = load_session(path)
        assert [s.mode for s in saved.finetune] == [s.mode for s in app.finetune_settings] == ["aux", "ce"]
        assert saved.finetune == app.finetune_settings and saved.prune == loaded.prune
        await pilot.press("ctrl+s")  # agreed once: no second question
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)

    drive(app, script)


def test_new_session_file_is_marked_and_saved_without_asking(tmp_path):
    path = tmp_path / "new.toml"
    app = Workbench(Target.demo(), latency=False, session_path=path)

    async def script(pilot):
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert path.read_text().startswith(MARK)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)

    drive(app, script)


def test_focus_is_marked_in_the_16_colour_theme():
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        app.theme = "ansi-dark"
        await pilot.pause()
        strategy, metric = app.screen.query_one("#strategy"), app.screen.query_one("#metric")
        strategy.focus()
        await pilot.pause()
        focused = strategy.render_lines(strategy.region.reset_offset)[0].text
        unfocused = metric.render_lines(metric.region.reset_offset)[0].text
        assert focused.startswith("▌") and not unfocused.startswith("▌")

    drive(app, script, "p")


def test_every_screen_footer_fits_80_columns_and_the_table_cuts_no_number(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ctrl+e writes there
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        for key in "wpdfm":
            await pilot.press(key)
            await settle(pilot)
            footer = app.screen.query_one("Footer")
            keys = [k.key_display for k in footer.query(FooterKey)]
            assert footer.virtual_size.width <= 80, key
            assert {"^s", "q", "?"} <= set(keys) and "screens" in [str(x.render()) for x in footer.query(FooterLabel)]
        await pilot.press("w")
        await settle(pilot)
        table = app.screen.query_one("#layers", DataTable)
        assert table.virtual_size.width <= table.size.width  # nothing past the edge, so no cut value
        first = list(table.columns)
        await pilot.press("c")
        await pilot.pause()
        assert next(iter(table.columns)) == "name" and set(table.columns) - {"name"} != set(first) - {"name"}
        await pilot.press("ctrl+e")
        await pilot.pause()
        assert "workbench-stats-resnet20.json" in layer_line(app) and not messages(app)

    drive(app, script)


def test_palette_holds_the_workbench_commands():
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Screen: Prune", "Screen: Tune (fine-tuning)", "Save session", "Apply pruning plan",
                      "Apply decomposition plan", "Export statistics", "Start run", "Open run…", "Open session…"):
            assert title in titles
        command = next(c for c in app.get_system_commands(app.screen) if c.title == "Apply pruning plan")
        command.callback()
        await settle(pilot)
        assert app.pruned is not None

    drive(app, script)


def test_palette_open_session_checks_the_file_asks_then_reopens(tmp_path):
    """A missing or code-running session file is refused with a notice; a good one is opened in
    a fresh workbench once the user says yes (the app ends with it as `reopen`)."""
    good = tmp_path / "p1.toml"
    good.write_text('version = 1\n[model]\nname = "demo"\n[prune]\nstrategy = "P1"\n')
    code = tmp_path / "code.toml"
    code.write_text('version = 1\n[model]\nname = "os:getpid"\n')
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        command = next(c for c in app.get_system_commands(app.screen) if c.title == "Open session…")
        for path, words in ((tmp_path / "none.toml", "does not exist"), (code, "--trust-pickle")):
            command.callback()
            await pilot.pause()
            app.screen.query_one(Input).value = str(path)
            await pilot.press("enter")
            await settle(pilot)
            assert words in messages(app)[-1] and app.reopen is None
        command.callback()
        await pilot.pause()
        app.screen.query_one(Input).value = str(good)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        assert app.reopen == good

    drive(app, script)


def test_stopped_run_shows_no_speed_and_quitting_prints_the_commands(tmp_path, monkeypatch):
    run_dir = tmp_path / "demo-run"
    w = write_run(run_dir, monkeypatch, finish=False)
    w.close("stopped")
    (tmp_path / "demo-run.toml").write_text("")
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        app.follow_run(run_dir)
        await pilot.pause(0.3)
        progress = text_of(app, "#ft-progress")
        assert "epoch" in progress and "img/s" not in progress and "ETA" not in progress
        farewell = app.farewell()
        assert str(run_dir.resolve()) in farewell and f"workbench open {run_dir.resolve()}" in farewell
        assert f"--out {run_dir.resolve()} --resume" in farewell

    drive(app, script, "f")
    assert "--no-latency" not in replay_command(Path("s.toml"), Path("r"))
