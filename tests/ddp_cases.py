"""Training cases run by two gloo processes for tests/test_ddp_failures.py.

`python -m tests.ddp_cases CASE OUT` with torchrun's variables set (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, LOCAL_RANK, LOCAL_WORLD_SIZE) trains a small model on the demo
digits; a failure is injected on rank 1 only, as CASE says. Each process writes
OUT/rank<r>.json: how its run ended (the error line, or "done"), and what the case observes.

`python -m tests.ddp_cases --serve` starts the rank processes of many cases: it imports torch
and the trainer once, then for each request forks the ranks (real separate processes joined
by gloo), so a case does not pay seconds of imports per process (see `serve`)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from core.data import load_data
from core.errors import WorkbenchError
from core.finetune.settings import FinetuneStage
from core.finetune.trainer import Placement, Stopped, Trainer, distributed
from core.models.checkpoint import load_model
from core.models.demo import demo_arch

CASES = ("oom-forward", "oom-step", "oom-batch", "oom-eval", "nan", "stop", "unused", "dropout")


class Poisoned:
    """Training images that turn NaN after `good` batches."""

    def __init__(self, dataset, good: int):
        self.dataset, self.good, self.calls = dataset, good, 0

    def __len__(self):
        return len(self.dataset)

    def __getitems__(self, indices):
        self.calls += 1
        items = self.dataset.__getitems__(indices)
        return [(x * float("nan"), y) for x, y in items] if self.calls > self.good else items


class WithUnused(nn.Module):
    """A digits net with a layer no loss reaches (what DDP without find_unused_parameters refuses)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, 10))
        self.unused = nn.Linear(8, 8)

    def forward(self, x):
        return self.body(x)


def dropout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))


def oom(*_):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def oom_on_call(function, call: int):
    """`function`, except that its call number `call` runs out of memory instead."""
    count = [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == call:
            oom()
        return function(*args, **kwargs)
    return wrapped


def train(case: str, out: Path, rank: int, world: int) -> dict:
    """Run CASE on this process; returns what rank<r>.json records."""
    data = load_data("demo")
    teacher = load_model("demo").model
    student = copy.deepcopy(teacher)
    stage = FinetuneStage(mode="ce", epochs=2, max_steps=4, lr=0.01, batch_size=32, log_every=2,
                          checkpoint_every=100 if case == "stop" else 1, milestones=[])
    if case == "unused":
        student, teacher = WithUnused(), None
    if case == "dropout":
        student, teacher = dropout_net(), None
    if case == "nan" and rank == 1:
        data = dataclasses.replace(data, train=Poisoned(data.train, good=2))
    events: list[dict] = []
    trainer = Trainer(student, teacher, demo_arch(), data, [stage], (1, 8, 8),
                      lambda event: events.append(event.to_dict()), out / "ft.ckpt", Placement.detect())
    seen: dict = {}
    if rank == 1:
        if case == "oom-forward":
            trainer._loss = oom_on_call(trainer._loss, 3)
        elif case == "oom-step":
            torch.optim.SGD.step = oom_on_call(torch.optim.SGD.step, 3)
        elif case == "oom-batch":
            trainer._batch = oom_on_call(trainer._batch, 3)
        elif case == "oom-eval":
            student.register_forward_pre_hook(lambda m, i: oom() if not m.training else None)
        elif case == "stop":
            original = trainer._loss

            def stop_then_loss(*a):
                trainer.request_stop()
                return original(*a)
            trainer._loss = stop_then_loss
    if case == "dropout":
        drop = student[3]
        drop.register_forward_hook(lambda m, i, o: None if "mask" in seen else
                                   seen.update(mask=(o == 0).flatten().tolist()))
    try:
        trainer.run()
        ended = "done"
    except (WorkbenchError, Stopped) as exc:
        ended = f"{type(exc).__name__}: {exc}"
    if case in ("unused", "dropout"):
        seen["weights"] = {k: v.flatten().tolist() for k, v in student.state_dict().items()}
    return {"rank": rank, "world": world, "ended": ended, "events": events, **seen}


def main() -> None:
    case, out = sys.argv[1], Path(sys.argv[2])
    assert case in CASES, case
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)
    with distributed():
        result = train(case, out, rank, world)
    (out / f"rank{rank}-of-{world}.json").write_text(json.dumps(result))


def serve() -> None:
    """Answer one JSON request per stdin line, {"case", "out", "world", "port", "timeout"}: fork
    `world` rank processes with torchrun's variables set, each running `main` with its stdout and
    stderr in OUT/rank<r>.log, and print one JSON line {"codes": exit codes, "hung": bool} once all
    ended, or once `timeout` seconds passed (the ones left are killed: a hang)."""
    for line in sys.stdin:
        request = json.loads(line)
        world, out = request["world"], Path(request["out"])
        pids = []
        for rank in range(world):
            pid = os.fork()
            if pid == 0:
                _rank_process(request["case"], out, rank, world, request["port"])
            pids.append(pid)
        codes: dict[int, int] = {}
        deadline = time.monotonic() + request["timeout"]
        while len(codes) < world and time.monotonic() < deadline:
            for pid in pids:
                if pid not in codes:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        codes[pid] = os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        hung = len(codes) < world
        for pid in pids:
            if pid not in codes:
                os.kill(pid, signal.SIGKILL)
                codes[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        print(json.dumps({"codes": [codes[pid] for pid in pids], "hung": hung}), flush=True)


def _rank_process(case: str, out: Path, rank: int, world: int, port: int) -> None:
    """A forked rank: set torchrun's variables, run the case, exit with its status (never returns)."""
    code = 1
    try:
        log = os.open(out / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        sys.argv = [sys.argv[0], case, str(out)]
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001  (the log shows it; the test fails on the exit code)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["--serve"] else main()
