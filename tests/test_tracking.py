"""TensorBoard and CSV beside metrics.jsonl: `[log]` in a session or `replay --tensorboard --csv`
write every loss term, accuracy, lr and images/s of the events, and nothing by default."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.finetune.rundir import read_events
from core.pipeline import replay
from core.tracking import scalars
from tests.cli_runner import run_cli

SESSION = """version = 1
[model]
name = "demo"
[data]
spec = "demo"
[[finetune]]
mode = "aux"
epochs = 2
max_steps = 2
log_every = 1
[[finetune]]
mode = "ce"
epochs = 1
lr = 0.001
max_steps = 2
log_every = 1
"""


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tracking")
    (root / "s.toml").write_text(SESSION + "[log]\ntensorboard = true\ncsv = true\n")
    replay(root / "s.toml", root / "run", latency=False)
    return root / "run"


def test_tensorboard_holds_every_loss_term_accuracy_lr_and_throughput(logged_run):
    files = list(logged_run.glob("events.out.tfevents.*"))
    assert len(files) == 1
    board = EventAccumulator(str(logged_run))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    aux = "finetune/stage1-aux"
    for tag in ("train/loss", "train/ce", "train/mse", "train/aux1", "train/aux2", "lr", "images_per_s",
                "epoch/loss", "epoch/aux1", "val_acc", "best_val", "test_acc"):
        assert f"{aux}/{tag}" in tags
    assert {"finetune/stage2-ce/train/ce", "finetune/stage2-ce/test_acc"} <= tags
    events = read_events(logged_run)
    steps = [e for e in events if e["event"] == "step" and e["stage"] == 0]
    logged = board.Scalars(f"{aux}/train/aux2")
    assert [s.step for s in logged] == [e["global_step"] for e in steps]
    assert [s.value for s in logged] == pytest.approx([e["losses"]["aux2"] for e in steps])
    epochs = [e for e in events if e["event"] == "epoch" and e["stage"] == 0]
    assert [(s.step, s.value) for s in board.Scalars(f"{aux}/val_acc")] == \
        [(e["epoch"], pytest.approx(e["val_acc"])) for e in epochs]


def test_csv_has_a_row_per_training_event_and_a_column_per_loss_term(logged_run):
    with open(logged_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    events = [e for e in read_events(logged_run) if e["event"] in ("step", "epoch", "stage_end")]
    assert [r["event"] for r in rows] == [e["event"] for e in events]
    first = events[0]
    assert float(rows[0]["loss_aux1"]) == pytest.approx(first["losses"]["aux1"])
    assert float(rows[0]["images_per_s"]) == pytest.approx(first["images_per_s"])
    assert float(rows[0]["lr"]) == pytest.approx(first["lr"])
    ce_row = next(r for r in rows if r["mode"] == "ce" and r["event"] == "step")
    assert ce_row["loss_aux1"] == "" and float(ce_row["loss_ce"]) > 0
    assert any(r["test_acc"] for r in rows if r["event"] == "stage_end")


def test_cli_flags_and_nothing_by_default(tmp_path):
    (tmp_path / "s.toml").write_text(SESSION)
    plain = tmp_path / "plain"
    replay(tmp_path / "s.toml", plain, latency=False)
    assert not list(plain.glob("events.out.tfevents.*")) and not (plain / "metrics.csv").exists()
    result = run_cli("replay", str(tmp_path / "s.toml"), "--out", str(tmp_path / "flags"), "--no-latency",
                     "--tensorboard", "--csv")
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "flags").glob("events.out.tfevents.*")) and (tmp_path / "flags" / "metrics.csv").is_file()


def test_step_position_without_global_step():
    event = {"event": "step", "phase": "baseline", "stage": 0, "mode": "ce", "epoch": 2, "step": 3,
             "steps_per_epoch": 10, "loss": 1.5, "losses": {"ce": 1.5}, "lr": 0.1, "images_per_s": 100.0}
    x, values = scalars(event)
    assert x == 23 and values["baseline/stage1-ce/train/ce"] == 1.5
    assert scalars({"event": "checkpoint"}) is None
