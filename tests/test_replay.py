"""`workbench replay`: sessions run headless to a run directory with report.json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from core.measure import count_flops, count_params
from core.models.checkpoint import load_model
from core.pipeline import replay
from core.prune.plan import Planner
from core.session import load_session
from tests.cli_runner import run_cli

SESSIONS = Path(__file__).resolve().parents[1] / "sessions"


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd)


@pytest.mark.parametrize("name", sorted(p.name for p in SESSIONS.glob("demo-*.toml")))
def test_demo_sessions_replay(name, tmp_path):
    session = load_session(SESSIONS / name)
    run = replay(SESSIONS / name, tmp_path, latency=False)
    steps = json.loads((tmp_path / "report.json").read_text())["steps"]
    expected = ["baseline"] + ["pruned"] * (session.prune is not None) + ["decomposed"] * (session.decompose is not None)
    assert [s["name"] for s in steps] == expected
    for before, step in zip(steps, steps[1:]):
        assert step["params"] < before["params"] and step["flops"] < before["flops"]
        assert step["params"] == step["predicted"]["params"] and step["flops"] == step["predicted"]["flops"]
        # the saved model is the one measured, in our format and the reference one
        for file in (f"{step['name']}.safetensors", f"{step['name']}.pth.tar"):
            loaded = load_model(checkpoint=tmp_path / file)
            assert count_params(loaded.model) == step["params"]
            assert count_flops(loaded.model, (1, 8, 8)) == step["flops"]
        model, _ = run.models[step["name"]]
        x = torch.randn(4, 1, 8, 8)
        reloaded = load_model(checkpoint=tmp_path / f"{step['name']}.safetensors").model
        torch.testing.assert_close(reloaded(x), model.eval()(x), rtol=0, atol=0)
        if session.data is None:
            assert step["accuracy"] is None
        else:
            assert 0 <= step["accuracy"] <= 1
    for step in steps:
        if step["name"] == "pruned":
            assert all(1 <= x["channels_after"] <= x["channels_before"] for x in step["layers"])
        if step["name"] == "decomposed":
            done = [x for x in step["layers"] if x["skipped"] is None]
            assert done and all(0 <= x["error"] < 1 and x["params_after"] < x["params_before"] for x in done)
    assert steps[0]["accuracy"] is None if session.data is None else 0.9 < steps[0]["accuracy"] <= 1
    # the frozen copy replays from anywhere
    frozen = load_session(tmp_path / "session.toml")
    assert (frozen.prune, frozen.decompose) == (session.prune, session.decompose)


def test_replay_matches_the_plan(tmp_path):
    session = load_session(SESSIONS / "demo-p1.toml")
    loaded = load_model("demo")
    plan = Planner(loaded.model, loaded.arch, (1, 8, 8)).plan(session.prune)
    replay(SESSIONS / "demo-p1.toml", tmp_path, latency=False)
    layers = json.loads((tmp_path / "report.json").read_text())["steps"][1]["layers"]
    assert [(x["name"], x["channels_after"]) for x in layers] == [(x.name, x.keep) for x in plan.layers]


def test_cli_replay_prints_summary(tmp_path):
    result = cli("replay", str(SESSIONS / "demo-manual.toml"), "--out", str(tmp_path / "run"), "--no-latency")
    assert result.returncode == 0, result.stderr
    assert "baseline" in result.stdout and "pruned" in result.stdout
    assert "opening the model" in result.stdout  # plain progress lines when not a terminal
    assert (tmp_path / "run" / "report.json").is_file()


@pytest.mark.parametrize("body, words", [
    ('[model]\nname = "demo"\n[prune]\nstrategy = "manual"\n[prune.layers."layer9.conv1"]\nratio = 0.5\n',
     ("prune.layers", "layer9.conv1", "not a prunable layer")),
    ('[model]\nname = "demo"\n[prune]\nstrategy = "P1"\nratio = 0.5\n', ("prune.ratio: unknown key",)),
    ('[model]\nname = "demo"\n[prune]\nstrategy = "manual"\n[prune.layers."layer1.0.conv1"]\nratio = 1.0\n',
     ("ratio: Input should be less than 1",)),
    ('[model]\nname = "demo"\n[prune]\nstrategy = "manual"\n[prune.layers."layer1.0.conv1"]\nkeep = 99\n',
     ("keep: 99 is more than its 16 channels",)),
    ('[model]\nname = "resnet20"\ncheckpoint = "missing.pth"\n', ("model.checkpoint", "missing.pth")),
    ('[model]\nname = "demo"\nnum_classes = "ten"\n', ("model.num_classes",)),
    ('[model]\nname = "demo"\n[decompose]\n[decompose.ranks."layer1.0.conv1"]\nr_out = 0\nr_in = 4\n',
     ("decompose.ranks.layer1.0.conv1.r_out", "greater than or equal to 1")),
    ('[model]\nname = "demo"\n[decompose]\n[decompose.ranks."layer1.0.conv1"]\nr_out = 40\nr_in = 4\n',
     ("decompose.ranks.layer1.0.conv1.r_out", "40 is more than the layer's 16 output channels")),
    ('[model]\nname = "demo"\n[decompose]\nlayers = ["layer9.conv1"]\n', ("decompose.layers", "layer9.conv1")),
])
def test_bad_session_exit_2_and_nothing_written(tmp_path, body, words):
    session = tmp_path / "bad.toml"
    session.write_text(body)
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text('{"old": true}')
    result = cli("replay", str(session), "--out", str(out), "--no-latency")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert json.loads((out / "report.json").read_text()) == {"old": True}
