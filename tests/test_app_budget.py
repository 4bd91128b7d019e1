"""The budget and latency fields of the TUI: the target field on Prune and Decompose (the knob
solved, the solution shown), skip_slower, per-layer times (t), the Model screen's device and batch
sizes; ctrl+s writes them and the saved session opens with them again. Timings are a synthetic
clock (tests/latency_clock.py), never asserted."""

from __future__ import annotations

from textual.widgets import DataTable

from core import layer_times
from core.budget import solve_decompose, solve_prune
from core.models.checkpoint import load_model
from core.overview import Target
from core.prune.plan import Planner
from core.session import MeasureSection, PruneSection, TargetSection, load_session
from tests.latency_clock import Clock
from tests.tui import drive, settle, text_of
from workbench.app import Workbench
from workbench.screens import decompose as decompose_screen


def test_prune_target_solves_the_knob_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(layer_times, "compare_latency", Clock())
    session_file = tmp_path / "s.toml"
    app = Workbench(Target.demo(), latency=False, session_path=session_file)
    demo = load_model("demo")
    expected = solve_prune(Planner(demo.model, demo.arch, (1, 8, 8)), PruneSection(), TargetSection(flops=0.6))[1]

    async def script(pilot):
        app.screen.query_one("#target-metric").focus()
        await pilot.press("enter", "down", "enter", "tab", *"0.6")   # FLOPs, 0.6 of the baseline
        await settle(pilot)
        assert app.state.budget == TargetSection(flops=0.6) and app.state.prune == PruneSection()  # unsolved
        assert f"coef = {expected.value:.4g} → {expected.achieved:.3f}" in text_of(app, "#target-solved")
        plan = app.screen.plan
        assert plan.flops[1] / plan.flops[0] == expected.achieved and plan.settings.coef == expected.value
        # t: each layer timed, the column filled
        app.screen.query_one("#plan", DataTable).focus()
        await pilot.press("t")
        await settle(pilot)
        table = app.screen.query_one("#plan", DataTable)
        assert all("→" in str(table.get_row_at(i)[8]) for i in range(table.row_count))
        # a bad target: one line naming the key, nothing posted
        app.screen.query_one("#target-value").focus()
        await pilot.press("home", "1")                              # 10.6
        await settle(pilot)
        assert "target.flops: give a fraction of the baseline" in text_of(app, "#totals")
        assert app.state.budget == TargetSection(flops=0.6)
        await pilot.press("backspace")
        await settle(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = load_session(session_file)
        assert saved.budget == TargetSection(flops=0.6) and saved.prune == PruneSection()
        # a plan solved for the target applies as the user's choices (the target, not the solution)
        table.focus()
        await pilot.press("a")
        await settle(pilot)
        assert app.overview.costs.flops == plan.flops[1] and app.state.prune == PruneSection()

    drive(app, script, "p")


def test_a_refused_latency_target_leaves_no_solving_line(monkeypatch):
    """A latency target no plan meets: the totals say why in one line, and the target line no longer
    says it is solving (it had stayed at `solving: timing layers ...` for good)."""
    monkeypatch.setattr(layer_times, "compare_latency", Clock())
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        app.screen.query_one("#target-metric").focus()
        await pilot.press("enter", "down", "down", "down", "enter", "tab", *"0.01")   # latency, 0.01
        await settle(pilot)
        assert app.state.budget == TargetSection(latency=0.01)
        assert "target: the fastest plan found" in text_of(app, "#totals")
        assert text_of(app, "#target-solved") == ""
    drive(app, script, "p")


def test_decompose_skip_slower_and_latency_target_on_the_measure_device(tmp_path, monkeypatch):
    monkeypatch.setattr(layer_times, "compare_latency", Clock())
    session_file = tmp_path / "s.toml"
    app = Workbench(Target.demo(), latency=False, session_path=session_file)
    shown_while_solving = []

    def solving(*args, **kwargs):  # what the solved line says while the solve times the layers
        shown_while_solving.append(text_of(app, "#target-solved"))
        return solve_decompose(*args, **kwargs)
    monkeypatch.setattr(decompose_screen, "solve_decompose", solving)

    async def script(pilot):
        # the Model screen: latency at batch sizes 2 and 8 on the CPU
        await pilot.press("m")
        await settle(pilot)
        app.screen.query_one("#batch_sizes").focus()
        await pilot.press(*"2 8")
        await settle(pilot)
        assert app.state.measure == MeasureSection(batch_sizes=[2, 8])
        app.screen.query_one("#device").focus()
        await pilot.press(*"tpu")
        await settle(pilot)
        assert "--device tpu: use cpu, cuda or cuda:N" in text_of(app, "#measure-error")
        assert app.state.measure == MeasureSection(batch_sizes=[2, 8])
        await pilot.press("backspace", "backspace", "backspace")
        await settle(pilot)
        # the Decompose screen: skip slower, then a latency target
        app.screen.set_focus(None)
        await pilot.press("d")
        await settle(pilot)
        app.screen.query_one("#skip_slower").focus()
        await pilot.press("enter", "down", "enter")
        await settle(pilot)
        assert app.state.decompose.skip_slower
        app.screen.query_one("#target-metric").focus()
        await pilot.press("enter", "down", "down", "down", "enter", "tab", *"0.8")
        await settle(pilot)
        assert app.state.budget == TargetSection(latency=0.8)
        solved = text_of(app, "#target-solved")
        assert solved.startswith("x = ") and solved.endswith("(cpu b2)")
        assert shown_while_solving[-1] == "solving: timing layers and the whole model: cpu, batch 2 …"
        assert app.screen.decomposer.timing == ("cpu", 2)
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = load_session(session_file)
        assert saved.budget == TargetSection(latency=0.8) and saved.decompose.skip_slower
        assert saved.measure == MeasureSection(batch_sizes=[2, 8])
        assert "[target]" in session_file.read_text() and "[measure]" in session_file.read_text()

    drive(app, script, "w")
    # the saved session opens with its keys on the screens
    saved = load_session(session_file)
    again = Workbench(Target.demo(), latency=False, decompose=saved.decompose, measure=saved.measure,
                      budget=saved.budget, session_path=session_file)

    async def reopened(pilot):
        assert app.screen.query_one("#target-value").value == "0.8"
        assert app.screen.query_one("#skip_slower").value is True
        await pilot.press("m")
        await settle(pilot)
        assert again.screen.query_one("#batch_sizes").value == "2 8"

    app = again
    drive(again, reopened, "d")
