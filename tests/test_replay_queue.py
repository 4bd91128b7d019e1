"""`workbench replay A.toml B.toml ...` (a queue of sessions, each in its own run directory)
and the `--data` / `--checkpoint` overrides, as real processes on the embedded demo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import WorkbenchError
from core.finetune.rundir import read_events, read_status
from core.models.checkpoint import load_model, save_model
from core.pipeline import override_session, replay
from core.session import load_session
from tests.cli_runner import run_cli
from tests.test_data import write_fashion
from workbench.replay_view import queue_dirs

REPO = Path(__file__).resolve().parents[1]
SESSIONS = REPO / "sessions"
BAD_LAYER = '[model]\nname = "demo"\n[prune]\nstrategy = "manual"\n[prune.layers."layer9.conv1"]\nratio = 0.5\n'
UNKNOWN_KEY = '[model]\nname = "demo"\n[prune]\nstrategy = "P1"\nratio = 0.5\n'


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd)


def summary_row(stdout: str, session: str) -> str:
    """The summary table's row of a session (the table is printed unwrapped, in ASCII, to a pipe)."""
    rows = [line for line in stdout.splitlines() if line.startswith("|") and f" {session} " in line]
    assert len(rows) == 1, stdout[-3000:]
    return rows[0]


def test_queue_goes_on_after_failures_and_sums_up(tmp_path):
    shutil.copy(SESSIONS / "demo-p1.toml", tmp_path / "a.toml")
    shutil.copy(SESSIONS / "demo-a2.toml", tmp_path / "b.toml")
    (tmp_path / "bad.toml").write_text(BAD_LAYER)    # fails while planning, after opening the model
    (tmp_path / "typo.toml").write_text(UNKNOWN_KEY)  # fails while reading the file
    result = cli("replay", "a.toml", "bad.toml", "typo.toml", "b.toml", "--out", "runs", "--no-latency", cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    runs = tmp_path / "runs"
    # each good session in its own directory, complete; nothing written for the bad ones
    for name, last in (("a", "pruned"), ("b", "decomposed")):
        report = json.loads((runs / name / "report.json").read_text())
        assert report["steps"][-1]["name"] == last
        assert read_status(runs / name)["state"] == "done"
    assert sorted(p.name for p in runs.iterdir()) == ["a", "b"]
    # in the given order
    starts = [line for line in result.stdout.splitlines() if line.startswith("[") and "] " in line and " -> " in line]
    assert starts == [f"[1/4] a.toml -> {Path('runs/a')}", f"[2/4] bad.toml -> {Path('runs/bad')}",
                      f"[3/4] typo.toml -> {Path('runs/typo')}", f"[4/4] b.toml -> {Path('runs/b')}"]
    assert (runs / "a" / "report.json").stat().st_mtime < (runs / "b" / "report.json").stat().st_mtime
    # one error line per failure, on stderr, naming the session and what is wrong
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert "bad.toml" in errors[0] and "'layer9.conv1' is not a prunable layer" in errors[0]
    assert "typo.toml" in errors[1] and "prune.ratio: unknown key" in errors[1]
    # the summary: every session with its run directory, state, final step or error
    a, b = (json.loads((runs / n / "report.json").read_text())["steps"][-1] for n in ("a", "b"))
    row = summary_row(result.stdout, "a.toml")
    assert " ok " in row and " pruned " in row and f"{a['params']:,}" in row and f"{100 * a['accuracy']:.2f}%" in row
    assert str(Path("runs/a")) in row
    row = summary_row(result.stdout, "b.toml")
    assert " ok " in row and " decomposed " in row and f"{b['params']:,}" in row
    row = summary_row(result.stdout, "bad.toml")
    assert " failed " in row and "'layer9.conv1' is not a prunable layer" in row
    assert " failed " in summary_row(result.stdout, "typo.toml")
    table = result.stdout[result.stdout.index("4 sessions"):]
    assert [table.index(f" {n}.toml ") for n in ("a", "bad", "typo", "b")] == sorted(
        table.index(f" {n}.toml ") for n in ("a", "bad", "typo", "b"))


def test_same_stem_gets_its_own_directory(tmp_path):
    for folder, source in (("one", "demo-manual.toml"), ("two", "demo-p1.toml")):
        (tmp_path / folder).mkdir()
        shutil.copy(SESSIONS / source, tmp_path / folder / "demo.toml")
    result = cli("replay", "one/demo.toml", "two/demo.toml", "--no-latency", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # default parent: runs/
    first, second = tmp_path / "runs" / "demo", tmp_path / "runs" / "demo-2"
    assert json.loads((first / "report.json").read_text())["steps"][0]["accuracy"] is None  # demo-manual: no data
    assert json.loads((second / "report.json").read_text())["steps"][0]["accuracy"] > 0.9  # demo-p1: data
    assert load_session(first / "session.toml").prune.strategy == "manual"
    assert load_session(second / "session.toml").prune.strategy == "P1"
    assert " ok " in summary_row(result.stdout, str(Path("one/demo.toml")))


def test_queue_dirs_are_distinct():
    paths = [Path("x/a.toml"), Path("y/a.toml"), Path("a-2.toml"), Path("b.toml"), Path("x/a.toml")]
    dirs = queue_dirs(paths, Path("out"))
    assert [d.name for d in dirs] == ["a", "a-3", "a-2", "b", "a-4"]
    assert all(d.parent == Path("out") for d in dirs)


def test_queue_without_out_never_reuses_an_existing_run_folder(tmp_path):
    """A second queue of the same sessions, no --out: new folders runs/<stem>-2, the first
    queue's runs untouched."""
    for name in ("demo-p1.toml", "demo-manual.toml"):
        shutil.copy(SESSIONS / name, tmp_path / name)
    first = cli("replay", "demo-p1.toml", "demo-manual.toml", "--no-latency", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "runs" / "demo-p1" / "report.json").read_bytes()
    second = cli("replay", "demo-p1.toml", "demo-manual.toml", "--no-latency", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == \
        ["demo-manual", "demo-manual-2", "demo-p1", "demo-p1-2"]
    assert (tmp_path / "runs" / "demo-p1" / "report.json").read_bytes() == before
    assert (tmp_path / "runs" / "demo-p1-2" / "report.json").is_file()


def test_a_stopped_session_does_not_stop_the_queue(tmp_path):
    """SIGTERM while the first session trains: it checkpoints and stops (one line saying how to
    resume it), the next session still runs; only stops -> exit code 3."""
    (tmp_path / "long.toml").write_text('version = 1\n[model]\nname = "demo"\n[data]\nspec = "demo"\n'
                                        '[[finetune]]\nmode = "ce"\nepochs = 50\nmax_steps = 20\nlog_every = 1\n')
    shutil.copy(SESSIONS / "demo-manual.toml", tmp_path / "after.toml")
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "replay", "long.toml", "after.toml", "--out", "runs",
                             "--no-latency"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    long = tmp_path / "runs" / "long"
    deadline = time.monotonic() + 240
    while not ((long / "metrics.jsonl").exists() and any(e["event"] == "step" for e in read_events(long))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr
    errors = stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: stopped at stage 1 (ce)")
    assert f"`workbench replay long.toml --out {Path('runs/long')} --no-latency --resume`" in errors[0]
    assert read_status(long)["state"] == "stopped"
    assert (tmp_path / "runs" / "after" / "report.json").is_file()
    assert " stopped " in summary_row(stdout, "long.toml") and " ok " in summary_row(stdout, "after.toml")


# ---------------------------------------------------------------- --data / --checkpoint


def test_data_override_replaces_a_wrong_data_path(tmp_path):
    (tmp_path / "s.toml").write_text('version = 1\n[model]\nname = "demo"\n[data]\nspec = "cifar10:/no/such/dir"\n')
    without = cli("replay", "s.toml", "--out", "run", "--no-latency", cwd=tmp_path)
    assert without.returncode == 2 and "/no/such/dir" in without.stderr
    result = cli("replay", "s.toml", "--out", "run", "--no-latency", "--data", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frozen = load_session(tmp_path / "run" / "session.toml")
    assert frozen.data.spec == "demo"
    assert json.loads((tmp_path / "run" / "report.json").read_text())["steps"][0]["accuracy"] > 0.9
    assert load_session(tmp_path / "s.toml").data.spec == "cifar10:/no/such/dir"  # the file is not touched


def test_overrides_are_relative_to_the_current_folder(tmp_path):
    """A session with no [data] and no checkpoint gets both from the command line; the paths
    count from where the command runs, not from the session's folder."""
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "s.toml").write_text('version = 1\n[model]\nname = "resnet20"\nin_channels = 1\n')
    (tmp_path / "ckpt").mkdir()
    demo = load_model("demo")
    save_model(demo.model, demo.arch, tmp_path / "ckpt" / "m.safetensors")
    result = cli("replay", "sessions/s.toml", "--out", "run", "--no-latency", "--checkpoint", "ckpt/m.safetensors",
                 "--data", "demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frozen = load_session(tmp_path / "run" / "session.toml")
    assert frozen.model.checkpoint == str((tmp_path / "ckpt" / "m.safetensors").resolve())
    assert frozen.data.spec == "demo"
    baseline = json.loads((tmp_path / "run" / "report.json").read_text())["steps"][0]
    assert baseline["accuracy"] > 0.9  # the demo's trained weights, not a fresh resnet20

    # a data directory given relative to the current folder, with its format prefix
    (tmp_path / "fm").mkdir()
    write_fashion(tmp_path / "fm", gz=False)
    result = cli("replay", "sessions/s.toml", "--out", "run-fm", "--no-latency", "--checkpoint",
                 "ckpt/m.safetensors", "--data", "fashion-mnist:fm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frozen = load_session(tmp_path / "run-fm" / "session.toml")
    assert frozen.data.spec == f"fashion-mnist:{(tmp_path / 'fm').resolve()}"

    # a checkpoint that is not there: one line, before anything runs
    missing = cli("replay", "sessions/s.toml", "--out", "run-x", "--checkpoint", "nope.safetensors", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == "error: --checkpoint nope.safetensors does not exist"
    assert not (tmp_path / "run-x").exists()


def test_override_session_in_core(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    session = load_session(SESSIONS / "demo-manual.toml").resolved(SESSIONS)
    assert session.data is None
    assert override_session(session) is session
    changed = override_session(session, data="cifar10:d", checkpoint="m.pth")
    assert changed.data.spec == f"cifar10:{tmp_path.resolve() / 'd'}"
    assert changed.model.checkpoint == str(tmp_path.resolve() / "m.pth")
    assert (changed.model.name, changed.prune) == (session.model.name, session.prune)


def test_resume_needs_the_same_overrides(tmp_path):
    (tmp_path / "s.toml").write_text('version = 1\n[model]\nname = "demo"\n[data]\nspec = "/no/such/dir"\n'
                                     '[[finetune]]\nmode = "ce"\nepochs = 1\nmax_steps = 2\n')
    out = tmp_path / "run"
    replay(tmp_path / "s.toml", out, latency=False, data="demo")
    assert load_session(out / "session.toml").data.spec == "demo"
    with pytest.raises(WorkbenchError, match="different session"):
        replay(tmp_path / "s.toml", out, latency=False, resume=True)
    run = replay(tmp_path / "s.toml", out, latency=False, resume=True, data="demo")
    assert run.report["steps"][-1]["name"] == "finetune:ce"
