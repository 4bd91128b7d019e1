"""Several processes stop together: a failure injected on rank 1 only (out of memory in the
batch, the forward pass, the optimizer step or the evaluation; a NaN loss; a stop request)
ends both gloo processes at the same batch with the same one-line error, before anything
from it is saved; parameters no loss reaches and per-rank dropout (tests/ddp_cases.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.finetune.trainer import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_server():
    """One `tests.ddp_cases --serve` process for the module: it forks each case's ranks."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "tests.ddp_cases", "--serve"], cwd=REPO, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield server
    server.stdin.close()
    server.wait(timeout=60)


@pytest.fixture
def run_case(rank_server):
    def run(case: str, out: Path, world: int = 2, timeout: float = 180) -> list[dict]:
        """Run CASE on `world` gloo processes; a hang fails the test."""
        out.mkdir(parents=True, exist_ok=True)
        request = {"case": case, "out": str(out), "world": world, "port": free_port(), "timeout": timeout}
        rank_server.stdin.write(json.dumps(request) + "\n")
        rank_server.stdin.flush()
        answer = rank_server.stdout.readline()
        assert answer, "the rank server died"
        answer = json.loads(answer)
        if answer["hung"]:
            pytest.fail(f"{case}: the processes hung (one waits in a collective the other never joins)")
        for rank, code in enumerate(answer["codes"]):
            log = (out / f"rank{rank}.log").read_text()
            assert code == 0 and "Traceback" not in log, log[-3000:]
        return [json.loads((out / f"rank{r}-of-{world}.json").read_text()) for r in range(world)]
    return run


@pytest.mark.parametrize("case, batch", [("oom-batch", 3), ("oom-forward", 3), ("oom-step", 3)])
def test_out_of_memory_on_one_process_stops_both_at_the_same_batch(run_case, tmp_path, case, batch):
    ranks = run_case(case, tmp_path)
    assert ranks[0]["ended"] == ranks[1]["ended"]  # the same one line on every process
    line = ranks[0]["ended"]
    assert line.startswith("WorkbenchError: out of memory on process 1") and "\n" not in line
    assert f"stage 1, epoch 1, batch {batch}" in line
    assert "finetune[0].batch_size = 16" in line and "new --out" in line
    assert ranks[0]["events"][-1] == {"event": "failed", "message": line.removeprefix("WorkbenchError: "),
                                      "phase": "finetune"}
    document = load_checkpoint(tmp_path / "ft.ckpt")  # the last good one: nothing from the failed batch
    assert (document["epoch"], document["step"]) == (0, batch - 1)


def test_out_of_memory_while_evaluating_stops_both(run_case, tmp_path):
    ranks = run_case("oom-eval", tmp_path)
    assert ranks[0]["ended"] == ranks[1]["ended"]
    assert ranks[0]["ended"].startswith("WorkbenchError: out of memory on process 1 (cpu) while evaluating "
                                        "(batches of 16)")
    assert not any(e["event"] == "epoch" for e in ranks[0]["events"])


def test_nan_loss_on_one_process_stops_both(run_case, tmp_path):
    ranks = run_case("nan", tmp_path)
    assert ranks[0]["ended"] == ranks[1]["ended"]
    assert "loss became nan at stage 1, epoch 1, by batch 3" in ranks[0]["ended"]
    assert load_checkpoint(tmp_path / "ft.ckpt")["step"] == 2


def test_stop_on_one_process_stops_both_at_the_next_logged_batch(run_case, tmp_path):
    ranks = run_case("stop", tmp_path)
    assert ranks[0]["ended"] == ranks[1]["ended"] == "Stopped: stopped at stage 1 (ce), epoch 1, batch 2/4"
    assert ranks[0]["events"][-1]["event"] == "stopped"


def test_unused_parameters_train_as_in_one_process(run_case, tmp_path):
    """A parameter no loss reaches gets no gradient on any process (DistributedDataParallel
    without find_unused_parameters refuses this model); the weights match one process."""
    two = run_case("unused", tmp_path / "two")
    one = run_case("unused", tmp_path / "one", world=1)
    assert two[0]["ended"] == two[1]["ended"] == one[0]["ended"] == "done"
    assert two[0]["weights"] == two[1]["weights"]
    for key, value in one[0]["weights"].items():
        torch.testing.assert_close(torch.tensor(two[0]["weights"][key]), torch.tensor(value), rtol=1e-4, atol=1e-6)
    assert two[0]["weights"]["unused.weight"] == one[0]["weights"]["unused.weight"]  # never stepped


def test_each_process_draws_its_own_dropout(run_case, tmp_path):
    ranks = run_case("dropout", tmp_path)
    assert ranks[0]["ended"] == ranks[1]["ended"] == "done"
    assert len(ranks[0]["mask"]) == len(ranks[1]["mask"]) and ranks[0]["mask"] != ranks[1]["mask"]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # still one model
