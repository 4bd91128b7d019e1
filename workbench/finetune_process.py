"""A fine-tuning run as its own process: the `workbench replay ... --out RUN_DIR` command line,
starting it in a new session (an SSH drop that ends the app does not end the run), and the run
directory the app follows (ARCHITECTURE.md, "Long jobs")."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.finetune.rundir import METRICS, MetricsFollower, is_alive, read_status


def replay_command(session_file: Path, run_dir: Path, resume: bool = False, latency: bool = True,
                   trust: bool = False) -> list[str]:
    """The run's command line; latency is measured (the results' ms column) unless the app was
    opened without it; `trust` (the app was opened with code the user allowed) passes --trust-pickle."""
    return [sys.executable, "-m", "workbench", "replay", str(session_file), "--out", str(run_dir),
            *([] if latency else ["--no-latency"]), *(["--resume"] if resume else []),
            *(["--trust-pickle"] if trust else [])]


def replay_command_line(session_file: Path, run_dir: Path, trust: bool = False) -> str:
    """What a user types to resume the run from a shell."""
    return shlex.join(["workbench", "replay", str(Path(session_file).resolve()), "--out", str(Path(run_dir).resolve()),
                       "--resume", *(["--trust-pickle"] if trust else [])])


def launch(session_file: Path, run_dir: Path, resume: bool = False, latency: bool = True,
           trust: bool = False) -> subprocess.Popen:
    """Start `workbench replay` as its own process, in its own session: it outlives the app."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # the run imports the same code as this app, whatever the current folder
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with open(run_dir / "stdout.log", "ab") as log:
        return subprocess.Popen(replay_command(session_file, run_dir, resume, latency, trust), start_new_session=True,
                                env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@dataclass(eq=False)
class FollowedRun:
    """A run directory the app follows, and the process writing it when the app started it."""

    dir: Path
    process: subprocess.Popen | None = None
    follower: MetricsFollower = field(init=False)

    def __post_init__(self) -> None:
        self.dir = Path(self.dir)
        self.follower = MetricsFollower(self.dir / METRICS)

    @property
    def session_file(self) -> Path:
        """The session the run was started from (beside it), else the run's frozen copy."""
        beside = self.dir.parent / f"{self.dir.name}.toml"
        return beside if beside.is_file() else self.dir / "session.toml"

    def exit_code(self) -> int | None:
        """The exit status of the process this app started (None: running, or not ours)."""
        return self.process.poll() if self.process is not None else None

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return is_alive(read_status(self.dir))

    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid if self.process.poll() is None else None
        status = read_status(self.dir)
        return status["pid"] if is_alive(status) else None

    def terminate(self) -> int | None:
        """SIGTERM to the run (it checkpoints and exits with state "stopped"); its pid, if alive."""
        pid = self.pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return None
        return pid

    def resume(self, latency: bool = True) -> None:
        self.process = launch(self.session_file, self.dir, resume=True, latency=latency)
