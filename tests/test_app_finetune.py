"""The fine-tuning screen driven with Pilot at 80x24, keyboard only: the live plot's bounded
buffers, following a run directory written by hand, stage editing and saving, a real one-epoch
run on the demo started with `s`, cancel, quitting during a run, and the look."""

from __future__ import annotations

import asyncio
import itertools
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from textual.app import App
from textual.widgets import DataTable, ProgressBar

from core.finetune import rundir
from core.finetune.rundir import RunWriter, read_events, read_status
from core.finetune.settings import FinetuneStage
from core.overview import Target
from core.session import load_session
from tests.tui import drive, opened, settle, text_of, wait_for
from workbench import finetune_process
from workbench.app import Workbench
from workbench.cli import main
from workbench.screens.quit_run import QuitRunScreen
from workbench.screens.stage_edit import default_stages, edit_stage, stage_cells
from workbench.widgets.plots import SeriesPlot, decimate

T0 = 1_700_000_000.0  # event times are frozen so "last update N s ago" is stable
S = 4                 # batches per epoch in the hand-written run
STEPS = [
    {"name": "baseline", "params": 269434, "flops": 5033216, "latency_ms": None, "accuracy": 0.9916},
    {"name": "pruned", "params": 151240, "flops": 2890112, "latency_ms": None, "accuracy": 0.9443},
    {"name": "decomposed", "params": 98311, "flops": 1922048, "latency_ms": None, "accuracy": 0.9012},
    {"name": "finetune:aux", "params": 98311, "flops": 1922048, "latency_ms": None, "accuracy": 0.9721},
    {"name": "finetune:ce", "params": 98311, "flops": 1922048, "latency_ms": None, "accuracy": 0.9805},
]


def write_run(path: Path, monkeypatch, finish: bool = True) -> RunWriter:
    """An aux stage (2 epochs) then a ce stage (1 epoch), S batches each, as the trainer writes
    them; one aux step has a diverged (null) loss term."""
    clock = itertools.count()
    with monkeypatch.context() as m:
        m.setattr(rundir.time, "time", lambda: T0 + next(clock))
        w = RunWriter(path)
        w.event({"event": "steps", "steps": STEPS[:3]})
        for stage, (mode, epochs) in enumerate((("aux", 2), ("ce", 1))):
            w.event({"event": "stage", "stage": stage, "stages": 2, "mode": mode, "epochs": epochs,
                     "steps_per_epoch": S})
            for epoch in range(epochs):
                for step in range(1, S + 1):
                    g = epoch * S + step
                    losses = {"ce": 1 / g} if mode == "ce" else {
                        "ce": 2 / g, "mse": 1 / g, "aux1": 0.5 / g, "aux2": math.nan if g == 3 else 0.25 / g}
                    w.event({"event": "step", "stage": stage, "mode": mode, "epoch": epoch, "step": step,
                             "steps_per_epoch": S, "global_step": g, "loss": sum(losses.values()),
                             "losses": losses, "lr": 1e-3, "images_per_s": 512.0,
                             "eta_s": 3725.0 if stage == 0 else 0.0})
                w.event({"event": "epoch", "stage": stage, "mode": mode, "epoch": epoch + 1, "epochs": epochs,
                         "loss": 1.0, "losses": {}, "val_acc": 0.9 + 0.03 * (2 * stage + epoch),
                         "best_val": 0.9 + 0.03 * (2 * stage + epoch), "lr": 1e-3})
                w.event({"event": "checkpoint", "stage": stage, "epoch": epoch + 1, "step": 0})
            w.event({"event": "stage_end", "stage": stage, "mode": mode, "best_val": 0.95, "best_epoch": epochs,
                     "test_acc": 0.97})
            w.event({"event": "steps", "steps": STEPS[:4 + stage]})
        if finish:
            w.event({"event": "done"})
            w.close("done")
    return w


def frozen(app, at: float) -> None:
    app.get_screen("finetune").clock = lambda: at


def test_plot_bounds_its_buffers_and_decimates_to_its_width():
    assert decimate([0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], 3) == ([0.5, 2.5, 4.5], [0.5, 2.5, 4.5])
    assert decimate([1, 2], [3, 4], 10) == ([1, 2], [3, 4])

    class One(App):
        def compose(self):
            yield SeriesPlot("loss", maxlen=500, id="p")

    async def main_():
        app = One()
        async with app.run_test(size=(60, 16)) as pilot:
            plot = app.query_one("#p", SeriesPlot)
            for i in range(10_000):
                plot.add("a", i, math.sin(i / 100))
                plot.add("b", i, i / 10_000)
            plot.add("a", 10_000, None)          # a null (diverged) loss is skipped
            plot.add("a", 10_001, math.nan)
            assert len(plot.series["a"]) == len(plot.series["b"]) == 500
            assert plot.series["a"][-1][0] == 9_999 and plot.series["a"][0][0] == 9_500
            await wait_for(pilot, lambda: set(plot.drawn) == {"a", "b"}, 10)  # the throttled redraw
            assert set(plot.drawn) == {"a", "b"}
            for xs, ys in plot.drawn.values():
                assert 2 <= len(xs) == len(ys) <= plot.size.width == 60

    asyncio.run(main_())


def test_follows_a_run_directory(tmp_path, monkeypatch):
    done = tmp_path / "demo-20240101-000000"
    write_run(done, monkeypatch)
    last = read_status(done)["heartbeat"]
    app = Workbench(Target.demo(), latency=False)
    # the process of a run that went silent (killed by `c` below)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    async def script(pilot):
        frozen(app, last + 5)
        app.follow_run(done)
        await pilot.pause(0.5)
        screen = app.screen
        loss = screen.query_one("#loss-plot", SeriesPlot)
        # x counts batches over the whole run: 2 aux epochs, then the ce stage continues
        assert set(loss.series) == {"ce", "mse", "aux1", "aux2"}
        assert [x for x, _ in loss.series["ce"]] == list(range(1, 3 * S + 1))
        assert len(loss.series["aux2"]) == 2 * S - 1  # the null point is skipped
        assert loss.series["ce"][-1] == (3 * S, 1 / S)
        acc = screen.query_one("#acc-plot", SeriesPlot)
        assert [round(y, 6) for _, y in acc.series["val"]] == [90.0, 93.0, 96.0]
        assert [x for x, _ in acc.series["val"]] == [1, 2, 3]
        assert loss.drawn and all(len(xs) <= loss.size.width for xs, _ in loss.drawn.values())
        bar = screen.query_one("#ft-bar", ProgressBar)
        assert bar.total == S and bar.progress == S
        progress = text_of(app, "#ft-progress")
        assert "stage 2/2 ce" in progress and "epoch 1/1" in progress and "512 img/s" in progress
        assert "ETA 0:00:00" in progress and "best 96.00%" in progress
        results = screen.query_one("#ft-results", DataTable)
        assert [results.get_row_at(i)[0] for i in range(results.row_count)] == [s["name"] for s in STEPS]
        assert results.get_row_at(4)[1:4] == ["98.3K", "1.92M", "98.05%"]
        line = text_of(app, "#run-line")
        assert "demo-20240101-000000" in line and "done" in line and "last update 5 s ago" in line
        # a finished run offers start again, not cancel
        assert screen.check_action("start", ()) and not screen.check_action("cancel_run", ())

        # a run whose process is alive but silent for five minutes: stalled, visible
        stalled = tmp_path / "demo-20240101-010000"
        w = write_run(stalled, monkeypatch, finish=False)
        w.status["pid"] = sleeper.pid
        with monkeypatch.context() as m:
            m.setattr(rundir.time, "time", lambda: T0)
            w.heartbeat()
        frozen(app, read_events(stalled)[-1]["time"] + 300)  # heartbeat and events are older
        app.follow_run(stalled)
        await wait_for(pilot, lambda: "last update" in text_of(app, "#run-line"), 10)
        line = text_of(app, "#run-line")
        assert "running" in line and "last update 0:05:00 ago" in line
        assert loss.series["ce"][-1] == (3 * S, 1 / S)  # the view was reset, then refilled
        assert screen.check_action("cancel_run", ()) and not screen.check_action("start", ())
        # c cancels: SIGTERM to the run's pid
        await pilot.press("c")
        assert await wait_for(pilot, lambda: sleeper.poll() is not None, 10)
        assert sleeper.returncode == -signal.SIGTERM
        await wait_for(pilot, lambda: "exited" in text_of(app, "#run-line"), 10)
        assert "exited" in text_of(app, "#run-line")  # died without saying "stopped"
        assert screen.check_action("resume", ())

    try:
        drive(app, script, "f")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stage_editing_saving_and_reopening(tmp_path, monkeypatch):
    session_file = tmp_path / "s.toml"
    app = Workbench(Target.demo(), latency=False, session_path=session_file)

    def shown(app) -> list[list[str]]:
        table = app.screen.query_one("#stages", DataTable)
        return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]

    async def script(pilot):
        assert app.finetune_settings == default_stages()  # METHOD.md's aux, then ce
        assert shown(app) == [[str(c) for c in stage_cells(s)] for s in default_stages()]
        await pilot.press("a")  # a ce stage after the highlighted (first) one
        assert [s.mode for s in app.finetune_settings] == ["aux", "ce", "ce"]
        await pilot.press("right", "e", "ctrl+u", "2", "enter")  # epochs of the new stage
        assert app.finetune_settings[1].epochs == 2 and shown(app)[1][1] == "2"
        # lr -1 is refused with a notification; the old value stays
        before = list(app.finetune_settings)
        await pilot.press("right", "enter", "ctrl+u", "-", "1", "enter")
        await pilot.pause()
        assert app.finetune_settings == before
        messages = [n.message for n in app._notifications]
        assert any(m.startswith("lr:") and "greater than 0" in m for m in messages)
        await pilot.press("escape")
        assert app.focused is app.screen.query_one("#stages")
        # milestones "5, 8" and mode aux -> ce (reference lr follows), then delete the last stage
        await pilot.press("right", "e", "ctrl+u", *"5, 8", "enter")
        assert app.finetune_settings[1].milestones == [5, 8]
        await pilot.press("end", "x")
        assert len(app.finetune_settings) == 2
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = load_session(session_file)
        assert saved.finetune == app.finetune_settings
        assert [[str(c) for c in stage_cells(s)] for s in saved.finetune] == shown(app)

    drive(app, script, "f")

    # `workbench open --session FILE` restores the stages
    opened = []
    monkeypatch.setattr(Workbench, "run", lambda self, *a, **k: opened.append(self))
    with pytest.raises(SystemExit) as exited:
        main(["open", "--session", str(session_file)])
    assert exited.value.code == 0
    again = opened[0]
    assert again.finetune_settings == load_session(session_file).finetune

    async def reopened(pilot):
        assert shown(again) == [[str(c) for c in stage_cells(s)] for s in again.finetune_settings]

    drive(again, reopened, "f")


def test_edit_stage_mode_moves_reference_values():
    aux = FinetuneStage(mode="aux")
    ce = edit_stage(aux, "mode", "ce")
    assert (ce.lr, ce.epochs, ce.milestones) == (1e-4, 30, [])
    tuned = edit_stage(FinetuneStage(mode="aux", lr=0.01), "mode", "ce")
    assert tuned.lr == 0.01 and tuned.epochs == 30


def test_start_a_one_epoch_run_on_the_demo(tmp_path):
    stage = FinetuneStage(mode="ce", epochs=1, max_steps=5, log_every=1)
    app = Workbench(Target.demo(), latency=False, finetune=[stage])
    app.runs_dir = tmp_path / "runs"

    async def script(pilot):
        await pilot.press("s")
        run = app.followed
        assert run is not None and run.process is not None
        assert run.dir.parent == app.runs_dir and run.dir.name.startswith("session-")
        saved = load_session(run.dir.with_name(f"{run.dir.name}.toml"))
        assert saved.finetune == [stage] and saved.model.name == "demo"
        # the UI answers keys while the run goes on in its own process
        await pilot.press("w")
        assert type(app.screen).__name__ == "StatsScreen"
        await pilot.press("f")
        assert type(app.screen).__name__ == "FinetuneScreen"
        finished = await wait_for(pilot, lambda: not run.alive(), 120)
        await pilot.pause(1.0)
        log = (run.dir / "stdout.log").read_text()
        assert finished, log
        assert (read_status(run.dir) or {}).get("state") == "done", log
        screen = app.screen
        loss = screen.query_one("#loss-plot", SeriesPlot)
        assert [x for x, _ in loss.series["ce"]] == [1, 2, 3, 4, 5]
        bar = screen.query_one("#ft-bar", ProgressBar)
        assert bar.total == 5 and bar.progress == 5
        assert len(screen.query_one("#acc-plot", SeriesPlot).series["val"]) == 1
        results = screen.query_one("#ft-results", DataTable)
        names = [results.get_row_at(i)[0] for i in range(results.row_count)]
        assert names == ["baseline", "finetune:ce"]
        assert "done" in text_of(app, "#run-line")

    drive(app, script, "f")


def test_resume_restarts_a_stopped_run_with_resume(tmp_path, monkeypatch):
    """r on a stopped run starts `workbench replay SESSION --out RUN_DIR --resume` (the session
    saved beside the run), in its own session, and follows it on."""
    run_dir = tmp_path / "demo-20240101-000000"
    w = write_run(run_dir, monkeypatch, finish=False)
    w.event({"event": "stopped", "reason": "signal"})
    w.close("stopped")
    session_file = tmp_path / "demo-20240101-000000.toml"
    session_file.write_text("")
    started = []
    real_popen = subprocess.Popen

    def popen(args, **kwargs):
        started.append((args, kwargs))
        return real_popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(finetune_process.subprocess, "Popen", popen)
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        app.follow_run(run_dir)
        await wait_for(pilot, lambda: "r resumes" in text_of(app, "#run-line"), 10)
        assert "stopped" in text_of(app, "#run-line") and "r resumes" in text_of(app, "#run-line")
        assert app.screen.check_action("resume", ()) and not app.screen.check_action("cancel_run", ())
        await pilot.press("r")
        assert len(started) == 1
        args, kwargs = started[0]
        assert args == [sys.executable, "-m", "workbench", "replay", str(session_file), "--out", str(run_dir),
                        "--no-latency", "--resume"]
        assert kwargs["start_new_session"] and kwargs["stdin"] == subprocess.DEVNULL
        assert app.followed.process is not None and app.followed.dir == run_dir
        app.followed.process.wait()

    drive(app, script, "f")


def test_quitting_during_a_run_asks_then_stops_it(tmp_path):
    """q while the run is alive: c cancels, q again then s stops it (SIGTERM: it checkpoints and
    says "stopped") and the app exits; with l the app exits and the run goes on."""
    child = textwrap.dedent("""
        import signal, sys, time
        from core.finetune.rundir import RunWriter
        w = RunWriter(sys.argv[1])
        def stop(*_):
            w.event({"event": "stopped", "reason": "signal"})
            w.close("stopped")
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        w.event({"event": "stage", "stage": 0, "stages": 1, "mode": "ce", "epochs": 1, "steps_per_epoch": 5})
        time.sleep(60)
    """)

    def fake_run(path: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", child, str(path)], cwd=Path(__file__).parents[1])
        deadline = time.monotonic() + 30
        while (read_status(path) or {}).get("state") != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        return proc

    run_dir = tmp_path / "stop"
    proc = fake_run(run_dir)
    app = Workbench(Target.demo(), latency=False)

    async def stop(pilot):
        app.follow_run(run_dir, proc)
        await pilot.pause(0.3)
        await pilot.press("q", "q")
        assert sum(isinstance(s, QuitRunScreen) for s in app.screen_stack) == 1
        await pilot.press("c")
        assert not isinstance(app.screen, QuitRunScreen)
        assert app.return_code is None and proc.poll() is None
        await pilot.press("q", "s")
        assert await wait_for(pilot, lambda: app.return_code is not None, 15)

    try:
        drive(app, stop)
        assert proc.wait(timeout=10) == 0
        assert read_status(run_dir)["state"] == "stopped"
        assert read_events(run_dir)[-1]["event"] == "stopped"
    finally:
        proc.kill()
        proc.wait()

    run_dir = tmp_path / "leave"
    proc = fake_run(run_dir)
    app = Workbench(Target.demo(), latency=False)

    async def leave(pilot):
        app.follow_run(run_dir, proc)
        await pilot.pause(0.3)
        await pilot.press("q", "l")
        assert await wait_for(pilot, lambda: app.return_code is not None, 5)

    try:
        drive(app, leave)
        assert proc.poll() is None and read_status(run_dir)["state"] == "running"
    finally:
        proc.kill()
        proc.wait()


def test_finetune_screen_snapshot(snap_compare, tmp_path, monkeypatch):
    done = tmp_path / "demo-20240101-000000"
    write_run(done, monkeypatch)
    last = read_status(done)["heartbeat"]

    async def run_before(pilot):
        await opened(pilot)
        await pilot.press("f")
        await settle(pilot)
        frozen(pilot.app, last + 5)
        pilot.app.follow_run(done)
        await pilot.pause(0.6)

    assert snap_compare(Workbench(Target.demo(), latency=False), terminal_size=(80, 24), run_before=run_before)


def test_a_poll_tick_after_the_screens_widgets_are_gone_does_nothing():
    """The Tune screen's poll timer can tick while the app closes, its widgets already removed
    (seen once as a NoMatches traceback when a test's app exited under load)."""
    app = Workbench(Target.demo(), latency=False)

    async def script(pilot):
        await pilot.press("f")
        await settle(pilot)
        screen = app.screen
        await pilot.press("w")
        await settle(pilot)
        await screen.query_one("#run-line").remove()
        screen.poll()

    drive(app, script)
