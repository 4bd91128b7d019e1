"""Fine-tuning through `workbench replay`, as real processes: kill -9 then --resume, SIGTERM,
torchrun with two gloo processes, and the demo session's A3 pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.finetune.rundir import read_events, read_status
from core.pipeline import replay
from tests.cli_runner import run_cli
from tests.replay_forks import Forked, ReplayServer

REPO = Path(__file__).resolve().parents[1]
SESSIONS = REPO / "sessions"

SESSION = """version = 1
[model]
name = "demo"
[data]
spec = "demo"
[prune]
strategy = "P1"
[[finetune]]
mode = "aux"
epochs = 2
max_steps = 6
lr = 0.01
checkpoint_every = 2
log_every = 1
[[finetune]]
mode = "ce"
epochs = 2
max_steps = 4
lr = 0.01
log_every = 1
"""


@pytest.fixture(scope="module")
def replays():
    """Replays that get killed or stopped: forked processes of one server (tests/replay_forks.py)."""
    server = ReplayServer(REPO, {**os.environ, "PYTHONPATH": str(REPO)})
    yield server
    server.close()


def start(replays: ReplayServer, session: Path, out: Path, *extra: str) -> Forked:
    """`workbench replay SESSION --out OUT` in a process of its own (its stderr beside the session)."""
    return replays.start(["replay", session, "--out", out, "--no-latency", *extra], REPO, session.parent)


def wait_for(out: Path, predicate, proc: Forked, timeout: float = 240) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = read_events(out) if (out / "metrics.jsonl").exists() else []
        if any(predicate(e) for e in events):
            return events
        if proc.poll() is not None:
            pytest.fail(f"replay ended early ({proc.returncode}): {proc.stderr_text[-2000:]}")
        time.sleep(0.05)
    pytest.fail("timed out waiting for the run")


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "finetune-2-ce.safetensors")


@pytest.fixture(scope="module")
def straight(replays, tmp_path_factory):
    """The same session run without interruption, as the reference."""
    root = tmp_path_factory.mktemp("straight")
    (root / "s.toml").write_text(SESSION)
    proc = start(replays, root / "s.toml", root / "run")
    assert proc.wait(timeout=300) == 0, proc.stderr_text
    return root / "run"


def test_kill_9_then_resume_ends_with_the_same_weights(replays, tmp_path, straight):
    (tmp_path / "s.toml").write_text(SESSION)
    out = tmp_path / "run"
    proc = start(replays, tmp_path / "s.toml", out)
    # wait for a mid-epoch checkpoint of the second epoch, then kill without warning
    wait_for(out, lambda e: e["event"] == "checkpoint" and e["epoch"] == 1 and e["step"] == 2, proc)
    proc.kill()
    proc.wait()
    assert read_status(out)["state"] == "running"  # it never got to say otherwise
    resumed = start(replays, tmp_path / "s.toml", out, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr_text
    assert read_status(out)["state"] == "done"
    ours, reference = final_weights(out), final_weights(straight)
    assert ours.keys() == reference.keys()
    for key in ours:
        assert torch.equal(ours[key], reference[key]), key
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["baseline", "pruned", "finetune:aux", "finetune:ce"]
    assert report == json.loads((straight / "report.json").read_text())
    assert "| finetune:ce |" in (out / "report.md").read_text()


def test_sigterm_checkpoints_then_resume_finishes(replays, tmp_path, straight):
    (tmp_path / "s.toml").write_text(SESSION)
    out = tmp_path / "run"
    proc = start(replays, tmp_path / "s.toml", out)
    wait_for(out, lambda e: e["event"] == "step" and e["stage"] == 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 3
    err = proc.stderr_text.strip().splitlines()
    assert err[-1].startswith("error: stopped at stage 2 (ce)") and "--resume" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert read_status(out)["state"] == "stopped" and read_events(out)[-1]["event"] == "stopped"
    # a plain replay into this folder is refused: it would throw the run away
    again = run_cli("replay", str(tmp_path / "s.toml"), "--out", str(out), cwd=REPO)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    resumed = start(replays, tmp_path / "s.toml", out, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr_text
    for key, value in final_weights(straight).items():
        assert torch.equal(final_weights(out)[key], value), key


def test_resume_refusals(tmp_path, straight):
    (tmp_path / "s.toml").write_text(SESSION)
    with pytest.raises(Exception, match="nothing to resume"):
        replay(tmp_path / "s.toml", tmp_path / "empty", latency=False, resume=True)
    (tmp_path / "other.toml").write_text(SESSION.replace("lr = 0.01\nlog", "lr = 0.02\nlog", 1))
    with pytest.raises(Exception, match="different session"):
        replay(tmp_path / "other.toml", straight, latency=False, resume=True)


def test_torchrun_two_gloo_processes_match_one(tmp_path):
    """DDP on the same global batch (32 images per process) gives the single-process weights."""
    from core.models.checkpoint import save_model
    from core.models.zoo import Arch, build

    torch.manual_seed(0)
    arch = Arch("tests.fixtures_models:plain_digits_net", 10, 1)
    save_model(build(arch), arch, tmp_path / "start.safetensors")
    (tmp_path / "s.toml").write_text("""version = 1
[model]
checkpoint = "start.safetensors"
input_size = "1x8x8"
[data]
spec = "demo"
[[finetune]]
mode = "aux"
n_losses = 1
pivot_modules = ["1"]
epochs = 2
max_steps = 5
lr = 0.05
[[finetune]]
mode = "ce"
epochs = 1
max_steps = 5
lr = 0.05
""")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one = run_cli("replay", "s.toml", "--out", "one", "--no-latency", cwd=tmp_path)  # the single process: this one
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "workbench",
                          "replay", "s.toml", "--out", "two", "--no-latency"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 alone reports
    a, b = load_file(tmp_path / "one" / "finetune-2-ce.safetensors"), load_file(tmp_path / "two" / "finetune-2-ce.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    start_weights = load_file(tmp_path / "start.safetensors")
    assert any(not torch.equal(a[k], start_weights[k]) for k in a)  # it did train
    losses = [[e["loss"] for e in read_events(tmp_path / run) if e["event"] == "epoch"] for run in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_demo_session_ends_more_accurate_than_after_pruning(tmp_path):
    """sessions/demo.toml: the A3 pipeline (P1, Tucker-2, aux then ce) on the embedded demo."""
    run = replay(SESSIONS / "demo.toml", tmp_path, latency=False)
    steps = {s["name"]: s for s in run.report["steps"]}
    assert list(steps) == ["baseline", "pruned", "decomposed", "finetune:aux", "finetune:ce"]
    assert steps["finetune:ce"]["accuracy"] > steps["pruned"]["accuracy"] + 0.5
    assert steps["finetune:ce"]["accuracy"] >= steps["baseline"]["accuracy"] - 0.02
    assert steps["finetune:ce"]["params"] == steps["decomposed"]["params"]
