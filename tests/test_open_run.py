"""`workbench open RUN_DIR`: the TUI on a run directory's session, following the run on the
fine-tune screen (a finished run made by a real replay, a run still being written, a run whose
model moved, and directories that hold no run)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from textual.widgets import DataTable

from core.finetune.rundir import RunWriter, read_events
from core.session import load_session, save_session
from tests.cli_runner import run_cli
from tests.tui import drive, settle, text_of, wait_for
from workbench.app import Workbench
from workbench.cli import main
from workbench.screens.finetune import FinetuneScreen
from workbench.widgets.plots import SeriesPlot

REPO = Path(__file__).resolve().parents[1]
SESSION = """version = 1
[model]
name = "demo"
[data]
spec = "demo"
[prune]
strategy = "P1"
[[finetune]]
mode = "ce"
epochs = 1
max_steps = 3
lr = 0.01
log_every = 1
"""


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A run directory written by a real `workbench replay` (P1, then 3 batches of ce)."""
    root = tmp_path_factory.mktemp("open-run")
    (root / "s.toml").write_text(SESSION)
    result = cli("replay", "s.toml", "--out", "run", "--no-latency", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run"


def opened_app(monkeypatch, *args: str) -> Workbench:
    """The app `workbench ARGS` builds, without running it."""
    apps = []
    monkeypatch.setattr(Workbench, "run", lambda self, *a, **k: apps.append(self))
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code == 0
    assert len(apps) == 1
    return apps[0]


def rows(app) -> list[str]:
    table = app.screen.query_one("#ft-results", DataTable)
    return [table.get_row_at(i)[0] for i in range(table.row_count)]


def test_open_a_finished_run(finished, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    app = opened_app(monkeypatch, "open", str(finished))
    frozen = load_session(finished / "session.toml")
    assert (app.target.model, app.target.data, app.target.checkpoint) == ("demo", "demo", None)
    assert app.prune_settings == frozen.prune and app.decompose_settings is None
    assert app.finetune_settings == frozen.finetune and app.finetune_settings[0].max_steps == 3
    assert app.opened is not None  # opened before the screen took over, as `open` always does
    assert app.followed is not None and app.followed.dir == finished and app.followed.process is None
    assert app.session_path == Path("session.toml")  # ctrl+s never rewrites the run's frozen session
    events = read_events(finished)
    losses = [(e["global_step"], e["losses"]["ce"]) for e in events if e["event"] == "step"]
    assert [x for x, _ in losses] == [1, 2, 3]

    async def script(pilot):
        await settle(pilot)
        assert isinstance(app.screen, FinetuneScreen)
        assert rows(app) == ["baseline", "pruned", "finetune:ce"]
        assert list(app.screen.query_one("#loss-plot", SeriesPlot).series["ce"]) == losses
        assert len(app.screen.query_one("#acc-plot", SeriesPlot).series["val"]) == 1
        line = text_of(app, "#run-line")
        assert "run" in line and "done" in line
        assert app.base is not None and app.error is None  # the model opened too
        await pilot.press("w")  # the other screens show the run's model
        assert type(app.screen).__name__ == "StatsScreen"

    drive(app, script)


def test_open_a_run_still_being_written(monkeypatch, tmp_path):
    """The run's writer is alive (this process): the screen says running and picks up what is
    appended at its next poll, until the run is done."""
    run_dir = tmp_path / "live"
    writer = RunWriter(run_dir)
    save_session(load_session_text(tmp_path), run_dir / "session.toml")
    steps = [{"name": "baseline", "params": 269434, "flops": 5033216, "latency_ms": None, "accuracy": 0.99}]
    writer.event({"event": "steps", "steps": steps})
    writer.event({"event": "stage", "stage": 0, "stages": 1, "mode": "ce", "epochs": 1, "steps_per_epoch": 4})

    def step(g: int) -> None:
        writer.event({"event": "step", "stage": 0, "mode": "ce", "epoch": 0, "step": g, "steps_per_epoch": 4,
                      "global_step": g, "loss": 1 / g, "losses": {"ce": 1 / g}, "lr": 0.01, "images_per_s": 100.0,
                      "eta_s": 4.0 - g})

    step(1)
    step(2)
    app = opened_app(monkeypatch, "open", str(run_dir))

    async def script(pilot):
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, FinetuneScreen)
        loss = screen.query_one("#loss-plot", SeriesPlot)
        assert list(loss.series["ce"]) == [(1, 1.0), (2, 0.5)]
        assert "running" in text_of(app, "#run-line")
        assert screen.check_action("cancel_run", ()) and not screen.check_action("start", ())
        step(3)
        step(4)
        await wait_for(pilot, lambda: len(loss.series["ce"]) == 4 and "epoch 1/1" in text_of(app, "#ft-progress"),
                       30)  # the next poll (every 0.5 s)
        assert [x for x, _ in loss.series["ce"]] == [1, 2, 3, 4]
        assert "epoch 1/1" in text_of(app, "#ft-progress")
        writer.event({"event": "steps", "steps": [*steps, {**steps[0], "name": "finetune:ce", "accuracy": 0.98}]})
        writer.event({"event": "done"})
        writer.close("done")
        await wait_for(pilot, lambda: len(rows(app)) == 2 and "done" in text_of(app, "#run-line"), 30)
        assert rows(app) == ["baseline", "finetune:ce"]
        assert "done" in text_of(app, "#run-line")

    try:
        drive(app, script)
    finally:
        if not writer._metrics.closed:
            writer.close("failed", "test ended")


def load_session_text(tmp_path: Path):
    (tmp_path / "s.toml").write_text(SESSION)
    return load_session(tmp_path / "s.toml").resolved(tmp_path)


def test_open_a_run_whose_model_moved(finished, monkeypatch, tmp_path):
    """The checkpoint the run names is gone: the run is still followed, and the app says why
    the model cannot be opened."""
    run_dir = tmp_path / "moved"
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns(".lock"))
    session = load_session(run_dir / "session.toml")
    gone = tmp_path / "gone.safetensors"
    save_session(session.model_copy(update={"model": session.model.model_copy(update={"checkpoint": str(gone)})}),
                 run_dir / "session.toml")
    app = opened_app(monkeypatch, "open", str(run_dir))
    assert app.opened is None and app.target.checkpoint == gone

    async def script(pilot):
        await settle(pilot)
        assert isinstance(app.screen, FinetuneScreen)
        assert rows(app) == ["baseline", "pruned", "finetune:ce"]
        assert "done" in text_of(app, "#run-line")
        assert app.error is not None and str(gone) in app.error and "does not exist" in app.error
        assert any(str(gone) in n.message for n in app._notifications)

    drive(app, script)


@pytest.mark.parametrize("make, args, words", [
    (lambda d: d.mkdir(), (), ("holds no run", "status.json, report.json, session.toml")),
    (lambda d: None, (), ("does not exist",)),
    (lambda d: d.write_text("x"), (), ("is not a directory", "--session")),
    (lambda d: (d.mkdir(), (d / "status.json").write_text("{}")), ("--model", "demo"),
     ("--model does not go with RUN_DIR",)),
])
def test_not_a_run_is_one_line(tmp_path, make, args, words):
    target = tmp_path / "somewhere"
    make(target)
    result = cli("open", str(target), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]
