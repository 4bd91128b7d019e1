"""`workbench replay` processes forked from one server that imported torch and the workbench once,
for the tests that kill a replay (kill -9, SIGTERM) and resume it: each replay is still its own
process, killed by a real signal at any moment, but it does not pay seconds of imports.

`python -m tests.replay_forks` says {"ready": true} once it has imported, then answers one JSON
request per stdin line:
- {"op": "start", "argv": [...], "cwd": DIR, "stderr": FILE}: fork a process that runs
  `workbench ARGV` in DIR with its stderr in FILE (stdout discarded); answers {"pid": PID}.
- {"op": "wait", "pid": PID, "timeout": SECONDS}: its exit code (negative: the signal that
  ended it) once it ends, or null if it is still running after SECONDS.

`ReplayServer` (a module fixture's object) starts one and hands out `Forked` processes that
offer what the tests use of subprocess.Popen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def serve() -> None:
    # what a replay imports (the CLI imports most of it only after checking its arguments), and
    # torch._dynamo, which the first backward pass imports; nothing has run torch's thread pools
    import torch._dynamo  # noqa: F401

    import core.finetune.rundir  # noqa: F401
    import core.session  # noqa: F401
    import workbench.cli  # noqa: F401
    import workbench.replay_view  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            pid = os.fork()
            if pid == 0:
                _replay(request["argv"], request["cwd"], request["stderr"])
            answer = {"pid": pid}
        else:
            answer = {"code": _wait(request["pid"], request["timeout"])}
        print(json.dumps(answer), flush=True)


def _wait(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _replay(argv: list[str], cwd: str, stderr: str) -> None:
    """The forked process: run the command, exit with its status (never returns)."""
    code = 1
    try:
        os.chdir(cwd)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        from workbench.cli import main

        sys.argv = ["workbench", *argv]
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001  (the stderr file shows it; the test fails on the exit code)
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Forked:
    """A forked replay, as much of subprocess.Popen as the tests use."""

    def __init__(self, server: ReplayServer, pid: int, stderr: Path):
        self.server, self.pid, self._stderr, self.returncode = server, pid, stderr, None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server.ask(op="wait", pid=self.pid, timeout=3600 if timeout is None else timeout)["code"]
            if self.returncode is None:
                raise subprocess.TimeoutExpired(f"replay {self.pid}", timeout)
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    @property
    def stderr_text(self) -> str:
        return self._stderr.read_text() if self._stderr.exists() else ""


class ReplayServer:
    """One `python -m tests.replay_forks` process (cwd `repo`, environment `env`)."""

    def __init__(self, repo: Path, env: dict[str, str]):
        self.process = subprocess.Popen([sys.executable, "-m", "tests.replay_forks"], cwd=repo, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.count = 0  # replays started: each gets its own stderr file
        assert json.loads(self.process.stdout.readline() or "{}").get("ready"), "the replay server did not start"

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, "the replay server died"
        return json.loads(answer)

    def start(self, argv: list[str], cwd: Path, logs: Path) -> Forked:
        """`workbench ARGV` in a forked process, run in `cwd`, its stderr in a new file in `logs`."""
        self.count += 1
        stderr = logs / f"stderr-{self.count}.txt"
        return Forked(self, self.ask(op="start", argv=[str(a) for a in argv], cwd=str(cwd), stderr=str(stderr))["pid"],
                      stderr)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


if __name__ == "__main__":
    serve()
