"""The `workbench` command run in-process, as `main(argv)`: the same exit code, stdout and
stderr a user sees, without a new interpreter paying seconds of imports. For tests in which
a separate process is not what is being tested (kill -9, SIGTERM, locks held by another
process and torchrun stay in real subprocesses)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path


@contextlib.contextmanager
def _environment(cwd: str | Path | None, env: dict[str, str] | None):
    before_cwd, before_env = Path.cwd(), dict(os.environ)
    try:
        if cwd is not None:
            os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        yield
    finally:
        os.chdir(before_cwd)
        os.environ.clear()
        os.environ.update(before_env)


def run_cli(*args: str, cwd: str | Path | None = None, env: dict[str, str] | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """`workbench ARGS` in this process (`timeout` is accepted for call compatibility with
    subprocess.run and not enforced: pytest's own timeout applies)."""
    from workbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    with _environment(cwd, env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(["workbench", *map(str, args)], code, out.getvalue(), err.getvalue())
