"""The reliability battery (issue 14): crafted and careless inputs, as a user or a stranger's
files meet the workbench. Every bad case must end in exactly one `error:` line on stderr and
exit code 2 (no traceback, no warning before it) with the watched folder byte for byte as it
was; no code named by a file runs unless --trust-pickle is on the command line.

The cases are a table, run in groups: each group is one subprocess (`DRIVER`) that runs the
`workbench` command in-process (tests/cli_runner.py) once per case and prints one JSON line
per case, so a group costs one interpreter start and a guard that fails cannot take the test
process's memory with it. Real concurrent processes (the lock race) stay separate tests."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from core.finetune.rundir import read_events, read_status

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

DRIVER = r"""
import hashlib, json, sys, warnings
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from cli_runner import run_cli

def snapshot(folder):
    if not folder or not Path(folder).is_dir():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}

filters = warnings.filters[:]
for case in json.load(sys.stdin):
    before = snapshot(case["watch"])
    warnings.filters[:] = filters  # each case warns as in a fresh process
    warnings._filters_mutated()
    result = run_cli(*case["args"], cwd=case["cwd"])
    after = snapshot(case["watch"])
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    print(json.dumps({"name": case["name"], "code": result.returncode, "stderr": result.stderr,
                      "stdout": result.stdout[-3000:], "changed": changed}), flush=True)
"""

SESSION = """version = 1
[model]
name = "demo"
[data]
spec = "demo"
[prune]
strategy = "P4"
percent = 0.3
[[finetune]]
mode = "ce"
epochs = 1
max_steps = 2
log_every = 1
"""
OTHER = """version = 1
[model]
name = "demo"
[data]
spec = "demo"
[prune]
strategy = "P4"
percent = 0.5
"""
DEMO = 'version = 1\n[model]\nname = "demo"\n'
EVIL = '''
import os
from torch import nn
if os.environ.get("WB_MARKER"):
    open(os.environ["WB_MARKER"], "a").close()   # importing this module is running its code


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def make():
    return 42
'''


class _Shell:
    """Unpickling this runs a shell command (the classic crafted pickle)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@dataclass
class Case:
    """`workbench ARGS`; {F}: the bad-files folder, {O}: this case's output folder (a copy of
    `folder`, or a fresh path), {T}: its scratch folder. A bad case (`code` 2) must print one
    `error:` line holding every word of `words` and leave {O} as it was; a good one (`code` 0)
    may change {O}, and `check(out, result)` says whether it did the right thing."""

    args: list[str]
    words: tuple[str, ...] = ()
    code: int = 2
    folder: str | None = "finished"  # a prepared folder copied as {O}; None: a path that does not exist
    check: object = None
    cwd: str | None = None            # run from the scratch folder of this name (cases may share one)


def replay(session: str, *extra: str) -> list[str]:
    return ["replay", session, "--out", "{O}", "--no-latency", *extra]


# ----------------------------------------------------------------------------- the bad files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Crafted and careless files, made once."""
    from core.models.checkpoint import load_model
    from core.models.zoo import Arch, build

    f = tmp_path_factory.mktemp("battery")
    (f / "s.toml").write_text(SESSION)
    (f / "other.toml").write_text(OTHER)
    code = f / "code"
    code.mkdir()
    (code / "wb_battery_evil.py").write_text(EVIL)
    saved = subprocess.run([sys.executable, "-c", "import sys, torch, wb_battery_evil as m; "
                            "torch.save(m.Net(), sys.argv[1])", str(f / "evil_net.pth")],
                           env={**ENV, "PYTHONPATH": str(code)}, capture_output=True, text=True, check=False)
    assert saved.returncode == 0, saved.stderr
    (f / "shell.pth").write_bytes(b"")
    torch.save(_Shell(f / "pwned"), f / "shell.pth")
    # checkpoints that declare sizes the file does not hold
    sd = load_model("demo").model.state_dict()
    stride0 = dict(sd, **{"linear.weight": torch.zeros(1, 64).expand(200_000_000, 64),
                          "linear.bias": torch.zeros(1).expand(200_000_000)})
    torch.save(stride0, f / "stride0.pth")
    assert (f / "stride0.pth").stat().st_size < 2 << 20  # 51 GB declared
    res56 = build(Arch("resnet56", 10, 3)).state_dict()
    torch.save({"cfg": [10**9] * 27, "state_dict": res56}, f / "cfg_huge.pth")
    torch.save({"cfg": [-5] * 27, "state_dict": res56}, f / "cfg_negative.pth")
    with zipfile.ZipFile(f / "bomb.pth", "w") as archive:  # a deflated 256 MiB record in a small zip
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
        deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
        chunk = bytes(1 << 20)
        body = b"".join(deflate.compress(chunk) for _ in range(256)) + deflate.flush()
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, b"")  # replaced below by the raw deflated body
    _replace_record(f / "bomb.pth", "archive/data/0", body, 256 << 20)
    # sessions
    sessions = {
        "inf.toml": DEMO + "[decompose]\nx = inf\n",
        "nan_lr.toml": DEMO + '[data]\nspec = "demo"\n[[finetune]]\nmode = "ce"\nlr = nan\n',
        "nosuchuser.toml": 'version = 1\n[model]\ncheckpoint = "~nosuchuser_wb/x.pth"\n',
        "deep.toml": "a = " + "[" * 100_000 + "]" * 100_000 + "\n",
        "huge_input.toml": DEMO + 'input_size = "1x20000x20000"\n',
        "channels.toml": DEMO + 'input_size = "3x8x8"\n',
        "skip.toml": DEMO + '[prune]\nstrategy = "P5"\nstage_bounds = [7]\nstage_ratios = [0.5, 0.3]\n'
                            'skip = [-3, 999]\n',
        "trust.toml": f'version = 1\n[model]\nname = "resnet20"\ncheckpoint = "{f}/evil_net.pth"\n'
                      'trust_pickle = true\n',
        "factory_exit.toml": 'version = 1\n[model]\nname = "sys:exit"\n',
        "factory_pid.toml": 'version = 1\n[model]\nname = "os:getpid"\n',
        "factory_evil.toml": 'version = 1\n[model]\nname = "wb_battery_evil:make"\n',
    }
    for name, text in sessions.items():
        (f / name).write_text(text)
    (f / "binary.toml").write_bytes(os.urandom(10 << 20))
    (f / "utf16.toml").write_text(DEMO, encoding="utf-16")
    (f / "a_file").write_text("not a folder\n")
    # a run folder someone sent, whose session asks to run its checkpoint's code
    (f / "sent_run").mkdir()
    shutil.copy(f / "trust.toml", f / "sent_run" / "session.toml")
    (f / "sent_run" / "status.json").write_text('{"pid": 1, "state": "done"}')
    return f


def _replace_record(path: Path, name: str, body: bytes, size: int) -> None:
    """Rewrite the zip so that record `name` holds the raw deflated `body` of `size` bytes."""
    with zipfile.ZipFile(path) as archive:
        others = [(i, archive.read(i)) for i in archive.infolist() if i.filename != name]
    with open(path, "wb") as raw, zipfile.ZipFile(raw, "w") as archive:
        for info, data in others:
            archive.writestr(info, data)
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size, info.compress_size, info.CRC = size, len(body), zlib.crc32(bytes(size))
        info.header_offset = raw.tell()
        raw.write(info.FileHeader(zip64=False))
        raw.write(body)
        archive.filelist.append(info)
        archive.NameToInfo[name] = info
        archive.start_dir = raw.tell()
        archive._didModify = True


@pytest.fixture(scope="module")
def folders(files, tmp_path_factory) -> dict[str, Path]:
    """Folders the cases start from: a finished fine-tuning run of s.toml, another session's
    run, someone's folder of results, and a run whose checkpoint is damaged."""
    from cli_runner import run_cli

    root = tmp_path_factory.mktemp("folders")
    finished = run_cli("replay", str(files / "s.toml"), "--out", str(root / "finished"), "--no-latency", cwd=REPO)
    assert finished.returncode == 0, finished.stderr
    other = run_cli("replay", str(files / "other.toml"), "--out", str(root / "other"), "--no-latency", cwd=REPO)
    assert other.returncode == 0, other.stderr
    someone = root / "someone"
    someone.mkdir()
    for name in ("report.json", "report.md", "session.toml", "pruned.safetensors", "notes.txt"):
        (someone / name).write_text(f"someone's {name}\n")
    damaged = root / "damaged"
    shutil.copytree(root / "finished", damaged)
    (damaged / "finetune.ckpt").write_bytes((damaged / "finetune.ckpt").read_bytes()[:500])
    status = json.loads((damaged / "status.json").read_text())
    (damaged / "status.json").write_text(json.dumps({**status, "state": "stopped"}))
    bare = root / "someone-bare"  # the same without a session.toml
    shutil.copytree(someone, bare)
    (bare / "session.toml").unlink()
    stale = root / "stale"  # a run whose writer died mid-write: status "running", its temp file left
    shutil.copytree(root / "finished", stale)
    (stale / ".report.json.999999.abcd_123.tmp").write_text("{half")
    (stale / "status.json").write_text(json.dumps({**status, "pid": 999999, "state": "running"}))
    return {"finished": root / "finished", "other": root / "other", "someone": someone, "someone-bare": bare,
            "damaged": damaged, "stale": stale}


def run_group(cases: dict[str, Case], files: Path, folders: dict[str, Path], tmp: Path,
              env: dict | None = None) -> dict[str, tuple[dict, Path]]:
    """Run every case of a group in one driver subprocess; name -> (result, its {O})."""
    todo, outs = [], {}
    for name, case in cases.items():
        scratch = tmp / name
        scratch.mkdir(parents=True)
        out = scratch / "out"
        if case.folder is not None:
            shutil.copytree(folders[case.folder], out)
        outs[name] = out
        args = [a.replace("{F}", str(files)).replace("{O}", str(out)).replace("{T}", str(scratch)) for a in case.args]
        cwd = tmp / f"cwd-{case.cwd}" if case.cwd else REPO
        cwd.mkdir(parents=True, exist_ok=True)
        todo.append({"name": name, "args": args, "watch": str(out) if case.folder else None, "cwd": str(cwd)})
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(REPO / "tests")], input=json.dumps(todo), cwd=REPO,
                          env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=1800, check=False)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["name"]] = result
    missing = set(cases) - set(results)
    assert not missing, f"the driver stopped before {sorted(missing)} ({proc.returncode}): {proc.stderr[-3000:]}"
    return {name: (results[name], outs[name]) for name in cases}


def judge(cases: dict[str, Case], results: dict[str, tuple[dict, Path]], files: Path) -> list[str]:
    """Every way each case went wrong (empty: all as they must be)."""
    problems = []
    for name, case in cases.items():
        result, out = results[name]
        where = f"{name}: exit {result['code']}, stderr {result['stderr'][-1500:]!r}"
        lines = [line for line in result["stderr"].splitlines() if line.strip()]
        if result["code"] != case.code:
            problems.append(f"{where}: expected exit {case.code}")
            continue
        if "Traceback" in result["stderr"] + result["stdout"]:
            problems.append(f"{where}: traceback")
        if case.code == 2:
            if len(lines) != 1 or not lines[0].startswith("error: "):
                problems.append(f"{where}: not exactly one `error:` line")
            words = [w.replace("{F}", str(files)).replace("{O}", str(out)) for w in case.words]
            missing = [w for w in words if w not in lines[0]] if lines else words
            if missing:
                problems.append(f"{where}: the error line lacks {missing}")
            if result["changed"]:
                problems.append(f"{where}: changed {result['changed']}")
        if case.check is not None:
            verdict = case.check(out, result)
            if verdict:
                problems.append(f"{name}: {verdict}")
    return problems


def assert_group(cases, files, folders, tmp, env=None) -> None:
    problems = judge(cases, run_group(cases, files, folders, tmp, env), files)
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- nothing lost


def _resumed_without_training(out: Path, result: dict) -> str | None:
    events = read_events(out)
    steps = [e for e in events if e.get("event") == "step"]
    if read_status(out)["state"] != "done":
        return "not done"
    return None if len(steps) == 2 else f"it trained again ({len(steps)} step events, one run has 2)"


def _restarted(out: Path, result: dict) -> str | None:
    old = out / "finetune.ckpt.old"
    if not old.is_file() or old.stat().st_size != 500:
        return "the damaged checkpoint was not kept as finetune.ckpt.old"
    torch.load(out / "finetune.ckpt", map_location="cpu", weights_only=True)
    return None if read_status(out)["state"] == "done" else "not done"


def _forced(out: Path, result: dict) -> str | None:
    return None if "percent = 0.3" in (out / "session.toml").read_text() else "the session was not replaced"


def _started_fresh(out: Path, result: dict) -> str | None:
    return None if read_status(out)["state"] == "done" and (out / "finetune.ckpt").is_file() else "no run"


def _swept(out: Path, result: dict) -> str | None:
    left = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    state = read_status(out)["state"]
    return f"left {left}, state {state}" if left or state != "done" else None


def _numbered(out: Path, result: dict) -> str | None:
    runs = out.parent.parent / "cwd-defaults" / "runs"
    made = sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []
    done = [name for name in made if (runs / name / "report.json").is_file()]
    return None if done == ["other", "other-2"] else f"run directories {made}, expected other, other-2"


LOST = {
    "someone's-results": Case(replay("{F}/s.toml"), ("{O}", "another session", "--force"), folder="someone"),
    "someone's-folder-without-session": Case(replay("{F}/s.toml"), ("{O}", "did not write", "--force"),
                                             folder="someone-bare"),
    "another-session's-run": Case(replay("{F}/s.toml"), ("{O}", "another session", "--force"), folder="other"),
    "another-session-into-a-training-run": Case(replay("{F}/other.toml"), ("{O}", "another session"),
                                                folder="finished"),
    "training-run-without-resume": Case(replay("{F}/s.toml"), ("{O}", "training run", "--resume", "--restart")),
    "resume-damaged-checkpoint": Case(replay("{F}/s.toml", "--resume"), ("finetune.ckpt", "damaged", "--restart"),
                                      folder="damaged"),
    "resume-auto-damaged-checkpoint": Case(replay("{F}/s.toml", "--resume", "auto"), ("damaged", "--restart"),
                                           folder="damaged"),
    "resume-and-restart": Case(replay("{F}/s.toml", "--resume", "--restart"), ("--restart", "--resume")),
    "resume-another-session": Case(replay("{F}/other.toml", "--resume"), ("different session",)),
    # what works instead
    "restart-damaged": Case(replay("{F}/s.toml", "--restart"), code=0, folder="damaged", check=_restarted),
    "force-over-another-session": Case(replay("{F}/s.toml", "--force"), code=0, folder="other", check=_forced),
    "resume-auto-on-a-finished-run": Case(replay("{F}/s.toml", "--resume", "auto"), code=0,
                                          check=_resumed_without_training),
    "resume-auto-on-a-new-folder": Case(replay("{F}/s.toml", "--resume", "auto"), code=0, folder=None,
                                        check=_started_fresh),
    "stale-temp-and-dead-running-status": Case(replay("{F}/s.toml", "--resume"), code=0, folder="stale",
                                               check=_swept),
    # no --out, twice from one folder: runs/other, then runs/other-2
    "default-out-first": Case(["replay", "{F}/other.toml", "--no-latency"], code=0, folder=None, cwd="defaults"),
    "default-out-second": Case(["replay", "{F}/other.toml", "--no-latency"], code=0, folder=None, cwd="defaults",
                               check=_numbered),
}


def test_nothing_is_lost(files, folders, tmp_path):
    assert_group(LOST, files, folders, tmp_path)


# ----------------------------------------------------------------------------- no code runs unasked


CODE = {
    "session-trust_pickle-replay": Case(replay("{F}/trust.toml"), ("trust_pickle = true", "--trust-pickle")),
    "session-trust_pickle-open-session": Case(["open", "--session", "{F}/trust.toml"], ("--trust-pickle",)),
    "run-folder-trust_pickle-open": Case(["open", "{F}/sent_run"], ("trust_pickle = true", "--trust-pickle")),
    "session-factory-sys-exit": Case(replay("{F}/factory_exit.toml"), ("sys:exit", "--trust-pickle")),
    "session-factory-getpid": Case(replay("{F}/factory_pid.toml"), ("os:getpid", "--trust-pickle")),
    "session-factory-of-a-package": Case(replay("{F}/factory_evil.toml"), ("wb_battery_evil:make",
                                                                           "--trust-pickle")),
    "open-session-factory": Case(["open", "--session", "{F}/factory_evil.toml"], ("--trust-pickle",)),
    "command-line-factory-sys-exit": Case(["inspect", "--model", "sys:exit", "--no-latency"],
                                          ("sys:exit", "SystemExit"), folder=None),
    "command-line-factory-not-a-module": Case(["inspect", "--model", "os:getpid", "--no-latency"],
                                              ("os:getpid", "not a torch.nn.Module"), folder=None),
    "crafted-pickle": Case(["inspect", "--checkpoint", "{F}/shell.pth", "--no-latency"],
                           ("shell.pth", "code that would run", "posix.system", "do not pass --trust-pickle"),
                           folder=None),
    "pickled-class-of-a-package": Case(["inspect", "--checkpoint", "{F}/evil_net.pth", "--no-latency"],
                                       ("wb_battery_evil.Net", "--trust-pickle"), folder=None),
    # the positive control: asked on the command line, the file's code does run
    "trusted-on-the-command-line": Case(replay("{F}/factory_evil.toml", "--trust-pickle"),
                                        ("wb_battery_evil:make", "not a torch.nn.Module"), folder=None),
}


def test_no_code_runs_unless_the_command_line_asks(files, folders, tmp_path):
    marker = tmp_path / "ran"
    env = {"PYTHONPATH": str(files / "code"), "WB_MARKER": str(marker)}
    control = {"trusted-on-the-command-line": CODE["trusted-on-the-command-line"]}
    unasked = {k: v for k, v in CODE.items() if k not in control}
    assert_group(unasked, files, folders, tmp_path / "unasked", env)
    assert not marker.exists(), "a file's code ran without --trust-pickle"
    assert not (files / "pwned").exists()
    assert_group(control, files, folders, tmp_path / "control", env)
    assert marker.exists(), "the control did not run the factory: the marker proves nothing"


# ----------------------------------------------------------------------------- no tracebacks


def inspect(*args: str) -> list[str]:
    return ["inspect", *args, "--no-latency"]


SHAPES = {
    "stride-0-linear-200M-x-64": Case(inspect("--checkpoint", "{F}/stride0.pth"),
                                      ("stride0.pth", "linear.weight", "200000000"), folder=None),
    "cfg-10**9": Case(inspect("--checkpoint", "{F}/cfg_huge.pth"), ("resnet56", "parameters"), folder=None),
    "cfg-negative": Case(inspect("--checkpoint", "{F}/cfg_negative.pth"), ("cfg_negative.pth", "resnet56"),
                         folder=None),
    "zip-with-a-deflated-256MiB-record": Case(inspect("--checkpoint", "{F}/bomb.pth"),
                                              ("bomb.pth", "archive/data/0", "crafted"), folder=None),
    "num-classes-10**9": Case(inspect("--model", "resnet20", "--num-classes", "1000000000"),
                              ("resnet20", "parameters", "--num-classes"), folder=None),
}
SESSIONS = {  # into a finished run of another session without a training run: checked as deep as they go
    "x-inf": Case(replay("{F}/inf.toml"), ("inf.toml", "decompose.x", "finite"), folder="other"),
    "lr-nan": Case(replay("{F}/nan_lr.toml"), ("nan_lr.toml", "finetune.0.lr", "finite"), folder="other"),
    "home-of-no-such-user": Case(replay("{F}/nosuchuser.toml"), ("model.checkpoint", "~nosuchuser_wb"), folder="other"),
    "10MB-binary": Case(replay("{F}/binary.toml"), ("binary.toml", "not a session file"), folder="other"),
    "utf-16": Case(replay("{F}/utf16.toml"), ("utf16.toml", "UTF-8"), folder="other"),
    "100000-deep-array": Case(replay("{F}/deep.toml"), ("deep.toml", "nest"), folder="other"),
    "input-size-1x20000x20000": Case(replay("{F}/huge_input.toml"), ("1x20000x20000", "too large"), folder="other"),
    "input-size-3-channels-on-1": Case(replay("{F}/channels.toml"), ("3x8x8", "takes 1"), folder="other"),
    "option-input-size-3-channels-on-1": Case(inspect("--model", "demo", "--input-size", "3x8x8"),
                                              ("3x8x8", "takes 1"), folder=None),
    "P5-skip-outside-the-model": Case(replay("{F}/skip.toml"), ("prune.skip", "-3", "999"), folder="other"),
}
OUT = {
    "out-is-a-file": Case(["replay", "{F}/other.toml", "--out", "{F}/a_file", "--no-latency"],
                          ("{F}/a_file", "is a file"), folder=None),
    "out-under-a-file": Case(["replay", "{F}/other.toml", "--out", "{F}/a_file/run", "--no-latency"],
                             ("{F}/a_file", "under the file"), folder=None),
    "out-under-proc": Case(["replay", "{F}/other.toml", "--out", "/proc/wb-run", "--no-latency"],
                           ("/proc/wb-run", "system folder"), folder=None),
}


def test_bad_input_is_one_line_and_touches_nothing(files, folders, tmp_path):
    cases = {**SHAPES, **SESSIONS, **OUT}
    if os.geteuid() != 0:  # root writes anywhere: this case needs an ordinary user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases["out-not-writable"] = Case(["replay", "{F}/other.toml", "--out", str(locked / "run"), "--no-latency"],
                                         (str(locked), "permission denied"), folder=None)
    assert_group(cases, files, folders, tmp_path)
    assert not (files / "a_file" / "run").exists() and (files / "a_file").read_text() == "not a folder\n"


def test_the_battery_figures():
    """The README's reliability figures are this table's (keep them in step)."""
    cases = {**LOST, **CODE, **SHAPES, **SESSIONS, **OUT}
    bad = sum(case.code == 2 for case in cases.values())
    readme = (REPO / "README.md").read_text()
    assert f"{len(cases)} cases" in readme and f"{bad} bad inputs" in readme, (len(cases), bad)


# ----------------------------------------------------------------------------- real processes


def test_two_replays_of_different_sessions_into_one_folder_never_replace_each_other(files, tmp_path):
    """Started 0.5 s apart: the lock is taken before the folder is checked, so one of them
    is refused in one line, and the folder holds the other's whole run."""
    out = tmp_path / "run"
    procs = []
    for session in ("s.toml", "other.toml"):
        procs.append(subprocess.Popen([sys.executable, "-m", "workbench", "replay", str(files / session), "--out",
                                       str(out), "--no-latency"], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
        time.sleep(0.5)
    codes = [p.wait(timeout=600) for p in procs]
    errors = [p.stderr.read() for p in procs]
    assert sorted(codes) == [0, 2], (codes, errors)
    loser = errors[codes.index(2)].strip().splitlines()
    assert len(loser) == 1 and loser[0].startswith("error: ") and str(out) in loser[0], errors
    winner = ("s.toml", "other.toml")[codes.index(0)]
    assert f"percent = {0.3 if winner == 's.toml' else 0.5}" in (out / "session.toml").read_text()
    assert read_status(out)["state"] == "done"
    assert ("finetune.ckpt" in os.listdir(out)) == (winner == "s.toml")
    report = json.loads((out / "report.json").read_text())
    assert report["steps"][-1]["name"] == ("finetune:ce" if winner == "s.toml" else "pruned")


# ----------------------------------------------------------------------------- small parts


def test_the_resume_command_is_the_exact_command():
    from workbench.replay_view import resume_command

    line = resume_command(Path("my session.toml"), Path("runs/a"), False, "cifar10:/d", Path("c.pth"), True)
    assert line == ("workbench replay 'my session.toml' --out runs/a --no-latency --data cifar10:/d "
                    "--checkpoint c.pth --trust-pickle --resume")


def test_resume_auto_is_read_as_a_mode_and_resume_alone_stays_a_flag():
    from workbench.cli import _resume_auto

    assert _resume_auto(["replay", "s.toml", "--resume", "auto"]) == ["replay", "s.toml", "--resume-auto"]
    assert _resume_auto(["replay", "--resume=auto", "s.toml"]) == ["replay", "--resume-auto", "s.toml"]
    assert _resume_auto(["replay", "--resume", "s.toml"]) == ["replay", "--resume", "s.toml"]


def test_a_failed_run_whose_status_cannot_be_written_still_reports_its_error(tmp_path, monkeypatch):
    """The folder turned read-only mid-run: closing as failed must not hide the first error,
    and must release the folder (a next replay can take it)."""
    import core.finetune.rundir as rundir
    from core.errors import WorkbenchError

    writer = rundir.RunWriter(tmp_path / "run")

    def refuse(*_a, **_k):
        raise WorkbenchError("cannot write status.json: Read-only file system")

    monkeypatch.setattr(rundir, "write_json", refuse)
    writer.close("failed", "the first error")  # no exception: the caller re-raises the first one
    monkeypatch.undo()
    rundir.RunWriter(tmp_path / "run").close("done")
    assert read_status(tmp_path / "run")["state"] == "done"


def test_a_refused_folder_is_left_as_it_was(tmp_path):
    """The lock file and the folder a refused claim made are removed again."""
    import core.finetune.rundir as rundir
    from core.errors import WorkbenchError

    def refuse():
        raise WorkbenchError("no")

    with pytest.raises(WorkbenchError):
        rundir.RunWriter(tmp_path / "new", refuse)
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "x").write_text("x")
    with pytest.raises(WorkbenchError):
        rundir.RunWriter(tmp_path / "kept", refuse)
    assert os.listdir(tmp_path / "kept") == ["x"]


def test_torchrun_ranks_agree_on_the_folder(tmp_path):
    """Rank 0 checks the run folder and every rank gets its verdict: `--resume auto` starts a
    new run, resumes a finished one without training again, and a damaged checkpoint is one
    refusal on every rank (no rank waits forever, nothing written)."""
    from core.models.checkpoint import save_model
    from core.models.zoo import Arch, build

    torch.manual_seed(0)
    arch = Arch("tests.fixtures_models:plain_digits_net", 10, 1)
    save_model(build(arch), arch, tmp_path / "start.safetensors")
    (tmp_path / "s.toml").write_text('version = 1\n[model]\ncheckpoint = "start.safetensors"\ninput_size = "1x8x8"\n'
                                     '[data]\nspec = "demo"\n[[finetune]]\nmode = "ce"\nepochs = 1\nmax_steps = 3\n'
                                     'log_every = 1\n')
    env = {**ENV, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def torchrun(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                               "workbench", "replay", "s.toml", "--out", "run", "--no-latency", *extra],
                              cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)

    out = tmp_path / "run"
    first = torchrun("--resume", "auto")
    assert first.returncode == 0, first.stderr[-3000:]
    steps = [e for e in read_events(out) if e["event"] == "step"]
    again = torchrun("--resume", "auto")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [e for e in read_events(out) if e["event"] == "step"] == steps  # resumed: nothing trained again
    (out / "finetune.ckpt").write_bytes((out / "finetune.ckpt").read_bytes()[:300])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    damaged = torchrun("--resume", "auto")
    assert damaged.returncode != 0
    errors = {line for line in damaged.stderr.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1 and "finetune.ckpt is damaged" in errors.pop(), damaged.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_malformed_steps_line_falls_back_to_report_json(folders, monkeypatch, tmp_path):
    """The results table of `open RUN_DIR` keeps the report's steps when the last `steps` event
    of metrics.jsonl is malformed, and the app says that a line was skipped."""
    from textual.widgets import DataTable

    from tests.tui import drive, settle
    from workbench.app import Workbench
    from workbench.cli import main

    run = tmp_path / "run"
    shutil.copytree(folders["finished"], run)
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write(json.dumps({"event": "steps", "steps": [{"params": 1}], "time": time.time()}) + "\n")
    apps = []
    monkeypatch.setattr(Workbench, "run", lambda self, *a, **k: apps.append(self))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["open", str(run)])
    assert exited.value.code == 0
    app = apps[0]
    expected = [step["name"] for step in json.loads((run / "report.json").read_text())["steps"]]

    async def script(pilot):
        await settle(pilot)
        table = app.screen.query_one("#ft-results", DataTable)
        assert [table.get_row_at(i)[0] for i in range(table.row_count)] == expected
        assert any("malformed" in n.message and "report.json" in n.message for n in app._notifications)

    drive(app, script)
