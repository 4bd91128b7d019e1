"""Hardening, as a user meets it: every kind of bad input ends in one `error:` line and exit
code 2 with nothing in the output folder touched; kill -9 anywhere in a replay, then
`--resume`, damages no file and ends with the uninterrupted run's result; a second replay
into a folder another replay is writing is refused instead of interleaved.

The command runs in-process where one process is all the case needs (bad input), and as a
real `python -m workbench` subprocess wherever processes are the point (kill -9, a second
replay while the first runs)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.finetune.rundir import read_events, read_status
from tests.cli_runner import run_cli
from tests.replay_forks import ReplayServer

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the installed package
LOCKED = "is being written by another replay"


def workbench(*args: str) -> subprocess.CompletedProcess:
    """`workbench ARGS` from the repository root, in-process (see tests/cli_runner.py)."""
    return run_cli(*args, cwd=REPO)


def start(session: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench", "replay", str(session), "--out", str(out),
                             "--no-latency", *extra], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(result: subprocess.CompletedProcess, detail: bool = False) -> str:
    """The one `error:` line of a failed command (with `detail`, indented lines may follow it:
    the tensor-by-tensor list of a checkpoint that does not fit, as core.errors documents)."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), result.stderr[-3000:]
    extra = lines[1:]
    if detail:
        assert extra and all(line.startswith("  ") for line in extra), result.stderr[-3000:]
    else:
        assert not extra, f"more than one line on stderr:\n{result.stderr[-3000:]}"
    return lines[0]


# ----------------------------------------------------------------------------- the bad inputs

USER_NET = '''
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))
'''


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """One folder of bad files, made once: damaged and foreign checkpoints, bad data folders."""
    import pickle

    from core.models.checkpoint import load_model, save_model
    from core.models.zoo import Arch, build

    f = tmp_path_factory.mktemp("bad")
    demo = load_model("demo")
    save_model(demo.model, demo.arch, f / "demo.safetensors")
    torch.save(demo.model.state_dict(), f / "demo.pth")
    (f / "trunc.safetensors").write_bytes((f / "demo.safetensors").read_bytes()[:300])
    (f / "trunc.pth").write_bytes((f / "demo.pth").read_bytes()[:300])
    torch.manual_seed(0)
    torch.save(build(Arch("resnet20", 10, 3)).state_dict(), f / "resnet20.pth")
    torch.save(build(Arch("mobilenet_v1_cifar", 10, 3)).state_dict(), f / "mobilenet.pth")
    # a whole pickled model of a class only its author can import: saved with the class on the
    # saving process's path, read by a workbench that cannot import it
    code = f / "code"
    code.mkdir()
    (code / "wb_hardening_nets.py").write_text(USER_NET)
    save = "import sys, torch, wb_hardening_nets as m; torch.save(m.TinyNet(), sys.argv[1])"
    saved = subprocess.run([sys.executable, "-c", save, str(f / "user_model.pth")],
                           env={**ENV, "PYTHONPATH": str(code)}, capture_output=True, text=True, check=False)
    assert saved.returncode == 0, saved.stderr
    (f / "empty").mkdir()
    (f / "random").mkdir()
    rng = random.Random(0)
    for i in range(3):
        (f / "random" / f"part{i}.bin").write_bytes(rng.randbytes(500))
    (f / "cifar_text").mkdir()  # detected as CIFAR-10 by its file names; the batch is text
    (f / "cifar_text" / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    (f / "cifar_text" / "data_batch_1").write_text("airplane,automobile,bird\n1,2,3\n")
    (f / "fashion_random").mkdir()  # Fashion-MNIST names, random bytes
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (f / "fashion_random" / name).write_bytes(rng.randbytes(2000))
    for split in ("train", "test"):  # an image folder whose "images" are text
        for cls in ("cat", "dog"):
            (f / "text_images" / split / cls).mkdir(parents=True)
            for i in range(3):
                (f / "text_images" / split / cls / f"img{i}.png").write_text("not an image\n")
    (f / "notes.txt").write_text("a file, not a data folder\n")
    (f / "not_toml.toml").write_text("[model\nname = demo\n")
    return f


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory) -> Path:
    """A good previous run (`replay sessions/demo-p1.toml`) plus an inspect JSON: what a bad
    command pointed at this folder must leave exactly as it is."""
    out = tmp_path_factory.mktemp("previous") / "run"
    result = workbench("replay", "sessions/demo-p1.toml", "--out", str(out), "--no-latency")
    assert result.returncode == 0, result.stderr
    (out / "stats.json").write_text('{"kept": true}\n')
    assert {"report.json", "session.toml", "pruned.safetensors", "status.json", "metrics.jsonl"} <= set(os.listdir(out))
    return out


Build = Callable[[Path, Path, Path], list]  # (bad files, output folder, tmp) -> CLI arguments


def inspect(*args: str) -> Build:
    """`workbench inspect ARGS --json OUT/stats.json` (@F: the bad-files folder)."""
    return lambda f, out, tmp: ["inspect", *(a.replace("@F", str(f)) for a in args),
                                "--json", str(out / "stats.json"), "--no-latency"]


def replay(session: str, name: str = "bad.toml") -> Build:
    """`workbench replay SESSION --out OUT` for a session file with this text (@F as above)."""
    def build(f: Path, out: Path, tmp: Path) -> list:
        path = tmp / name
        path.write_text(session.replace("@F", str(f)))
        return ["replay", str(path), "--out", str(out), "--no-latency"]
    return build


def replay_file(name: str) -> Build:
    """`workbench replay @F/NAME --out OUT` for a session file that is already there (or not)."""
    return lambda f, out, tmp: ["replay", str(f / name), "--out", str(out), "--no-latency"]


DEMO = 'version = 1\n[model]\nname = "demo"\n'
DEMO_DATA = DEMO + '[data]\nspec = "demo"\n'
CE = '[[finetune]]\nmode = "ce"\nepochs = 1\nmax_steps = 2\n'


@dataclass
class Case:
    build: Build
    culprit: tuple[str, ...]  # what the error line must name (@F: the bad-files folder)
    detail: bool = False      # indented detail lines may follow (a checkpoint that does not fit)


CASES = {
    # --- checkpoints: damaged, of another architecture, a whole pickled model of unknown code
    "inspect-truncated-safetensors": Case(inspect("--checkpoint", "@F/trunc.safetensors"),
                                          ("@F/trunc.safetensors", "damaged")),
    "inspect-truncated-state-dict": Case(inspect("--checkpoint", "@F/trunc.pth"), ("@F/trunc.pth", "damaged")),
    "inspect-resnet20-weights-as-resnet32": Case(inspect("--model", "resnet32", "--checkpoint", "@F/resnet20.pth"),
                                                 ("resnet20.pth", "resnet32", "--model"), detail=True),
    "inspect-mobilenet-weights-into-resnet20": Case(
        inspect("--model", "resnet20", "--checkpoint", "@F/mobilenet.pth"), ("mobilenet.pth", "resnet20"),
        detail=True),
    "inspect-pickled-model-without-trust-pickle": Case(inspect("--checkpoint", "@F/user_model.pth"),
                                                       ("user_model.pth", "wb_hardening_nets.TinyNet",
                                                        "--trust-pickle")),
    # --- data
    "inspect-data-empty-dir": Case(inspect("--model", "demo", "--data", "@F/empty"), ("@F/empty", "empty")),
    "inspect-data-random-files": Case(inspect("--model", "demo", "--data", "@F/random"),
                                      ("@F/random", "no recognised layout")),
    "inspect-data-text-named-cifar-batch": Case(inspect("--model", "resnet20", "--data", "@F/cifar_text"),
                                                ("@F/cifar_text/data_batch_1",)),
    "inspect-data-forced-cifar10-on-empty-dir": Case(inspect("--model", "resnet20", "--data", "cifar10:@F/empty"),
                                                     ("@F/empty/batches.meta", "missing")),
    "inspect-data-fashion-names-random-bytes": Case(inspect("--model", "demo", "--data", "@F/fashion_random"),
                                                    ("@F/fashion_random/train-images-idx3-ubyte",)),
    "inspect-data-imagefolder-of-text": Case(inspect("--model", "resnet20", "--data", "@F/text_images"),
                                             ("@F/text_images/", "not a readable image")),
    "inspect-data-is-a-file": Case(inspect("--model", "demo", "--data", "@F/notes.txt"),
                                   ("@F/notes.txt", "not a directory")),
    # --- options of the wrong type or out of range
    "inspect-option-wrong-type": Case(inspect("--model", "demo", "--num-classes", "ten"), ("--num-classes",)),
    "inspect-option-out-of-range": Case(inspect("--model", "demo", "--num-classes", "0"), ("--num-classes",)),
    # --- replay of a session that names a bad checkpoint or bad data
    "replay-truncated-checkpoint": Case(replay('version = 1\n[model]\ncheckpoint = "@F/trunc.safetensors"\n'),
                                        ("@F/trunc.safetensors",)),
    "replay-resnet20-weights-as-resnet32": Case(
        replay('version = 1\n[model]\nname = "resnet32"\ncheckpoint = "@F/resnet20.pth"\n'),
        ("resnet20.pth", "resnet32"), detail=True),
    "replay-pickled-model-without-trust-pickle": Case(
        replay('version = 1\n[model]\ncheckpoint = "@F/user_model.pth"\n'),
        ("user_model.pth", "wb_hardening_nets.TinyNet", "trust_pickle")),
    "replay-missing-checkpoint": Case(replay('version = 1\n[model]\ncheckpoint = "@F/nope.pth"\n'),
                                      ("model.checkpoint", "@F/nope.pth")),
    "replay-data-empty-dir": Case(replay(DEMO + '[data]\nspec = "@F/empty"\n'), ("@F/empty",)),
    "replay-data-text-named-cifar-batch": Case(replay(DEMO + '[data]\nspec = "@F/cifar_text"\n'),
                                               ("@F/cifar_text/data_batch_1",)),
    "replay-train-on-imagefolder-of-text": Case(
        replay('version = 1\n[model]\nname = "resnet20"\n[data]\nspec = "@F/text_images"\n'
               '[train]\nmode = "ce"\nepochs = 1\nmax_steps = 1\nbatch_size = 2\n'),
        ("@F/text_images/", "not a readable image")),
    # --- session files: unknown keys, wrong types, out-of-range values, conflicting sections
    "session-unknown-key": Case(replay(DEMO_DATA + '[prune]\nstratgy = "P1"\n'), ("prune.stratgy", "unknown key")),
    "session-unknown-section": Case(replay(DEMO_DATA + '[finetuning]\nmode = "ce"\n'), ("finetuning", "unknown key")),
    "session-epochs-is-a-string": Case(replay(DEMO_DATA + '[[finetune]]\nmode = "ce"\nepochs = "ten"\n'),
                                       ("finetune.0.epochs", "'ten'")),
    "session-lr-is-a-string": Case(replay(DEMO_DATA + '[[finetune]]\nmode = "ce"\nlr = "0.1"\n'),
                                   ("finetune.0.lr", "'0.1'")),
    "session-negative-lr": Case(replay(DEMO_DATA + '[[finetune]]\nmode = "ce"\nlr = -1\n'),
                                ("finetune.0.lr", "greater than 0")),
    "session-second-stage-batch-size-0": Case(replay(DEMO_DATA + CE + '[[finetune]]\nmode = "ce"\nbatch_size = 0\n'),
                                              ("finetune.1.batch_size",)),
    "session-prune-percent-1.5": Case(replay(DEMO_DATA + '[prune]\nstrategy = "P4"\npercent = 1.5\n'),
                                      ("prune.percent", "1.5")),
    "session-layer-ratio-1.5": Case(replay(DEMO_DATA + '[prune]\n[prune.layers."layer1.0.conv1"]\nratio = 1.5\n'),
                                    ("prune.layers.layer1.0.conv1.ratio",)),
    "session-decompose-x-0.5": Case(replay(DEMO_DATA + '[decompose]\nx = 0.5\n'), ("decompose.x", "0.5")),
    "session-finetune-without-data": Case(replay(DEMO + CE), ("[[finetune]]", "[data]")),
    "session-train-with-mode-aux": Case(replay(DEMO_DATA + '[train]\nmode = "aux"\n'), ("train.mode",)),
    "session-P5-without-variant": Case(replay(DEMO_DATA + '[prune]\nstrategy = "P5"\n'), ("prune", "P5", "variant")),
    "session-tmax-not-above-tmin": Case(replay(DEMO_DATA + '[prune]\ntmin = 0.9\ntmax = 0.9\n'),
                                        ("prune", "tmax", "tmin")),
    "session-cp3-with-vbmf-ranks": Case(replay(DEMO_DATA + '[decompose]\nmethod = "cp3"\nrank_rule = "vbmf"\n'),
                                        ("decompose.rank_rule",)),
    "session-prune-unknown-layer": Case(replay(DEMO_DATA + '[prune]\n[prune.layers."layer9.conv1"]\nkeep = 3\n'),
                                        ("layer9.conv1",)),
    "session-aux-pivot-beyond-the-blocks": Case(
        replay(DEMO_DATA + '[prune]\nstrategy = "P4"\n[[finetune]]\nmode = "aux"\nn_losses = 1\npivots = [99]\n'
               'epochs = 1\nmax_steps = 1\n'),
        ("finetune.0", "pivots", "99")),
    "session-train-then-decompose-unknown-layer": Case(
        replay('version = 1\n[model]\nname = "resnet20"\nin_channels = 1\n[data]\nspec = "demo"\n'
               '[train]\nmode = "ce"\nepochs = 1\nmax_steps = 1\n[decompose]\nlayers = ["layer9.conv1"]\n'),
        ("decompose.layers", "layer9.conv1")),
    "session-not-toml": Case(replay_file("not_toml.toml"), ("@F/not_toml.toml", "not valid TOML")),
    "session-file-missing": Case(replay_file("nope.toml"), ("@F/nope.toml", "does not exist")),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
def test_bad_input_is_one_line_exit_2_and_overwrites_nothing(case: Case, bad, previous_run, tmp_path):
    import shutil

    out = tmp_path / "previous"
    shutil.copytree(previous_run, out)
    before = snapshot(out)
    result = workbench(*case.build(bad, out, tmp_path))
    line = error_line(result, case.detail)
    for word in case.culprit:
        assert word.replace("@F", str(bad)) in line, line
    after = snapshot(out)
    assert sorted(after) == sorted(before), "files appeared or vanished in the output folder"
    changed = [name for name in before if after[name] != before[name]]
    assert not changed, f"overwritten: {changed}"


# ----------------------------------------------------------------------------- kill -9, then --resume

KILL_SESSION = """version = 1
[model]
name = "demo"
[data]
spec = "demo"
[prune]
strategy = "P4"
percent = 0.3
[[finetune]]
mode = "aux"
epochs = 2
max_steps = 6
lr = 0.01
checkpoint_every = 2
log_every = 1
[[finetune]]
mode = "ce"
epochs = 1
max_steps = 4
lr = 0.01
log_every = 1
"""
FINAL = "finetune-2-ce.safetensors"


@dataclass
class Reference:
    run: Path
    starting: float   # seconds from launch to the first event in the run folder
    writing: float    # seconds from that first event to the last ("done")


@pytest.fixture(scope="module")
def replays():
    """The replays that get killed: forked processes of one server (tests/replay_forks.py)."""
    server = ReplayServer(REPO, ENV)
    yield server
    server.close()


@pytest.fixture(scope="module")
def reference(replays, tmp_path_factory) -> Reference:
    """The kill session run once without interruption, as the killed runs are run, and its timing."""
    root = tmp_path_factory.mktemp("reference")
    (root / "s.toml").write_text(KILL_SESSION)
    wall = time.time()
    proc = replays.start(["replay", root / "s.toml", "--out", root / "run", "--no-latency"], REPO, root)
    assert proc.wait(timeout=300) == 0, proc.stderr_text
    events = read_events(root / "run")
    return Reference(root / "run", events[0]["time"] - wall, events[-1]["time"] - events[0]["time"])


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def run_killed(replays: ReplayServer, session: Path, out: Path, resume: bool,
               kill: tuple[str, float] | None) -> tuple[int, str]:
    """Replay (with --resume) in a process of its own and, if `kill` is given, kill -9 it once:
    ("start", t) t seconds after launch, ("writing", t) t seconds after it wrote its first event
    into the folder."""
    before = lines(out / "metrics.jsonl")
    proc = replays.start(["replay", session, "--out", out, "--no-latency", *(["--resume"] if resume else [])],
                         REPO, session.parent)
    if kill is None:
        return proc.wait(timeout=300), proc.stderr_text
    phase, delay = kill
    if phase == "writing":
        deadline = time.monotonic() + 120
        while lines(out / "metrics.jsonl") == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    try:
        code = proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait(timeout=60)
    return code, proc.stderr_text


def assert_intact(out: Path) -> None:
    """No damaged file: every model loads, every JSON (and JSON line) parses, the training
    checkpoint loads, and no temp file of an atomic write is left."""
    for path in out.glob("*.safetensors"):
        load_file(path)
    for path in out.glob("*.json"):
        json.loads(path.read_text())
    if (out / "metrics.jsonl").exists():
        for number, line in enumerate((out / "metrics.jsonl").read_text().splitlines(), 1):
            assert isinstance(json.loads(line), dict), f"metrics.jsonl line {number}"
    if (out / "finetune.ckpt").exists():
        torch.load(out / "finetune.ckpt", map_location="cpu", weights_only=True)


def summary(report: dict) -> list:
    keys = ("name", "params", "flops", "accuracy", "best_val", "best_epoch", "test_acc")
    return [{k: step.get(k) for k in keys} for step in report["steps"]]


def test_kill_9_at_random_points_then_resume_gives_the_same_result(reference, replays, tmp_path):
    """Three runs, each killed at a seeded random moment (one while starting up, two while
    writing and training), then its first resume killed too, then resumed until it succeeds."""
    ref = reference
    session = tmp_path / "s.toml"
    session.write_text(KILL_SESSION)
    rng = random.Random(0)
    window = ref.writing
    plans = [[("start", rng.uniform(0.1, 0.9) * ref.starting), ("writing", rng.uniform(0, window))],
             [("writing", rng.uniform(0, window / 2)), ("writing", rng.uniform(0, window))],
             [("writing", rng.uniform(window / 2, window)), ("writing", rng.uniform(0, window))]]
    expected = load_file(ref.run / FINAL)
    for n, kills in enumerate(plans):
        out = tmp_path / f"run{n}"
        resume, trace = False, []
        for attempt in range(len(kills) + 3):  # killed at most once per attempt
            code, err = run_killed(replays, session, out, resume, kills[attempt] if attempt < len(kills) else None)
            trace.append(f"{'resume' if resume else 'fresh'}"
                         + (f" killed {kills[attempt][0]}+{kills[attempt][1]:.2f}s" if code == -signal.SIGKILL else
                            f" -> {code}"))
            if out.exists():
                assert_intact(out)  # after every kill too
            if code == 0:
                break
            if code == -signal.SIGKILL:
                resume = True
            elif resume and code == 2 and "nothing to resume" in err:
                resume = False  # killed before anything was written: start it again
            else:
                pytest.fail(f"{trace}: {err[-3000:]}")
        else:
            pytest.fail(f"no success: {trace}")
        assert_intact(out)
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        assert not leftovers, f"{trace}: temp files left {leftovers}"
        assert read_status(out)["state"] == "done", trace
        final = load_file(out / FINAL)
        assert final.keys() == expected.keys(), trace
        for key, value in expected.items():
            assert torch.equal(final[key], value), f"{trace}: {key} differs"
        assert summary(json.loads((out / "report.json").read_text())) == \
            summary(json.loads((ref.run / "report.json").read_text())), trace
        print(f"run{n}: {trace} (reference: starting {ref.starting:.2f} s, writing {ref.writing:.2f} s)")


def test_kill_9_in_the_middle_of_a_write_leaves_no_temp_once_the_file_is_written_again(tmp_path):
    """A writer killed between writing its temp file and renaming it leaves the old file whole;
    the next write of that file sweeps the dead writer's temp away."""
    from core.atomic import write_json

    target = tmp_path / "status.json"
    write_json(target, {"state": "old"})
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from pathlib import Path; from core.atomic import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as tmp:\n"
        "    tmp.write_text('{\"state\": \"ha')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"), str(target)], cwd=REPO, env=ENV, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads(target.read_text()) == {"state": "old"}
    assert len(list(tmp_path.glob(".status.json.*.tmp"))) == 1  # what the dead writer left
    write_json(target, {"state": "new"})
    assert json.loads(target.read_text()) == {"state": "new"}
    assert sorted(os.listdir(tmp_path)) == ["status.json"]


# ----------------------------------------------------------------------------- two replays, one folder

LONG_SESSION = """version = 1
[model]
name = "demo"
[data]
spec = "demo"
[[finetune]]
mode = "ce"
epochs = 2
max_steps = 15
lr = 0.01
log_every = 1
"""
EPOCHS, STEPS = 2, 15  # checkpoint_every (200) > STEPS: the first checkpoint is at the end of epoch 1


def wait_for(out: Path, proc: subprocess.Popen, predicate, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "metrics.jsonl").exists() and any(predicate(e) for e in read_events(out)):
            return
        if proc.poll() is not None:
            pytest.fail(f"the first replay ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    pytest.fail("timed out waiting for the first replay")


def refused_while_paused(first: subprocess.Popen, session: Path, out: Path, *extra: str, checkpointed: bool) -> str:
    """Pause the first replay (it keeps its lock, as a slow one would), run a second replay into
    the same folder; return its error line after checking it changed nothing."""
    first.send_signal(signal.SIGSTOP)
    try:
        assert (out / "finetune.ckpt").exists() == checkpointed  # the situation the caller means to test
        before = snapshot(out)
        second = workbench("replay", str(session), "--out", str(out), "--no-latency", *extra)
        assert snapshot(out) == before, "the second replay wrote into the folder"
        return error_line(second)
    finally:
        first.send_signal(signal.SIGCONT)


def assert_clean_metrics(out: Path, first: subprocess.Popen) -> None:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    times = [e["time"] for e in events]
    assert times == sorted(times)
    steps = [(e["stage"], e["epoch"], e["step"]) for e in events if e["event"] == "step"]
    assert steps == [(0, epoch, step) for epoch in range(EPOCHS) for step in range(1, STEPS + 1)]  # once, in order
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == list(range(1, EPOCHS + 1))
    assert events[-1]["event"] == "done"
    status = read_status(out)
    assert status["state"] == "done" and status["pid"] == first.pid


@pytest.fixture
def first_replay(tmp_path):
    (tmp_path / "s.toml").write_text(LONG_SESSION)
    out = tmp_path / "run"
    proc = start(tmp_path / "s.toml", out)
    yield proc, tmp_path / "s.toml", out
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_second_replay_into_a_running_folder_is_refused(first_replay):
    first, session, out = first_replay
    wait_for(out, first, lambda e: e["event"] == "step")
    status = read_status(out)
    assert status["state"] == "running" and status["pid"] == first.pid
    # before the first training checkpoint: a plain replay gets as far as the lock
    line = refused_while_paused(first, session, out, checkpointed=False)
    assert LOCKED in line and str(out) in line, line
    # after it: a --resume (the same session, so it passes every other check) is refused too
    wait_for(out, first, lambda e: e["event"] == "checkpoint")
    line = refused_while_paused(first, session, out, "--resume", checkpointed=True)
    assert LOCKED in line and str(out) in line, line
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    assert_clean_metrics(out, first)
    for path in out.glob("*.safetensors"):
        load_file(path)


def test_plain_replay_into_a_running_checkpointed_folder_names_the_other_replay(first_replay):
    """Not "holds a training run already: pass --resume", which would only meet the lock."""
    first, session, out = first_replay
    wait_for(out, first, lambda e: e["event"] == "checkpoint")
    line = refused_while_paused(first, session, out, checkpointed=True)
    assert LOCKED in line and str(out) in line, line
