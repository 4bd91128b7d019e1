"""Typed run events (core.finetune.events): one dataclass per kind, written to metrics.jsonl
and read back by one module; the lines of runs written before stay readable as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.data import load_data
from core.models.demo import demo_arch
from core.finetune import events
from core.finetune.rundir import MetricsFollower, RunWriter, read_events
from core.finetune.settings import FinetuneStage
from core.finetune.trainer import Placement, Trainer
from core.models.checkpoint import load_model

RESULTS = Path(__file__).resolve().parent.parent / "results"
ONE_OF_EACH = [
    events.Stage(stage=0, stages=2, mode="aux", epochs=3, steps_per_epoch=5, device="cpu", processes=1,
                 phase="finetune"),
    events.Step(stage=0, mode="aux", epoch=0, step=2, steps_per_epoch=5, global_step=2, loss=1.5,
                losses={"ce": 1.0, "aux1": 0.5}, lr=0.001, images_per_s=120.0, eta_s=30.0, phase="finetune"),
    events.Epoch(stage=0, mode="aux", epoch=1, epochs=3, loss=1.2, losses={"ce": 1.0}, val_acc=0.9, best_val=0.9,
                 lr=0.001, phase="baseline"),
    events.Checkpoint(stage=0, epoch=1, step=0, phase="finetune"),
    events.StageEnd(stage=0, mode="aux", epochs=3, best_val=0.9, best_epoch=1, test_acc=0.88, phase="finetune"),
    events.Stopped(reason="signal", stage=1, epoch=0, step=3, phase="finetune"),
    events.Failed(message="out of memory", phase="finetune"),
    events.Steps(steps=[{"name": "baseline", "params": 10}]),
    events.Done(),
]


def test_every_kind_is_written_and_read_back_as_the_same_event(tmp_path):
    assert sorted(type(e).kind for e in ONE_OF_EACH) == sorted(events.KINDS)
    writer = RunWriter(tmp_path)
    for event in ONE_OF_EACH:
        writer.event(event)
    writer.close("done")
    read = events.parse_all(read_events(tmp_path))
    assert [type(e) for e in read] == [type(e) for e in ONE_OF_EACH]
    for written, back in zip(ONE_OF_EACH, read, strict=True):
        assert isinstance(back.time, float)
        assert back.to_dict() == {**written.to_dict(), "time": back.time}


def test_the_lines_of_runs_written_before_read_as_they_are():
    """The committed runs in results/ (written before events were typed): every line parses,
    and writing the event again gives the same JSON object, keys in the same order."""
    files = sorted(RESULTS.rglob("metrics.jsonl"))
    assert files, "results/ holds no run"
    kinds = set()
    for path in files:
        for line in path.read_bytes().splitlines():
            record = json.loads(line)
            event = events.parse(record)
            assert event is not None, record
            assert list(event.to_dict().items()) == list(record.items())
            kinds.add(event.kind)
    assert {"stage", "step", "epoch", "stage_end", "steps", "done"} <= kinds


@pytest.mark.parametrize("record", [
    {"event": "unknown", "stage": 0},                                          # a kind this version lacks
    {"event": "checkpoint", "stage": 0, "epoch": 1},                           # a field missing
    {"event": "checkpoint", "stage": "0", "epoch": 1, "step": 0},              # a wrong type
    {"event": "checkpoint", "stage": True, "epoch": 1, "step": 0},             # a bool is no count
    {"event": "steps", "steps": {"name": "baseline"}},                         # not a list
    {"event": "failed", "message": "x", "phase": 3},
    ["event", "done"],                                                         # not an object
])
def test_a_malformed_record_is_skipped_not_fatal(record):
    assert events.parse(record) is None
    assert events.parse_all([record, {"event": "done"}]) == [events.Done()]


def test_optional_fields_may_be_missing_and_are_not_written_unset():
    old = {"event": "stage", "stage": 0, "stages": 1, "mode": "ce", "epochs": 1, "steps_per_epoch": 4,
           "phase": "finetune", "time": 1.0}   # written before device and processes were
    event = events.parse(old)
    assert event == events.Stage(stage=0, stages=1, mode="ce", epochs=1, steps_per_epoch=4, phase="finetune",
                                 time=1.0)
    assert event.to_dict() == old
    assert events.parse({"event": "step", "stage": 0, "mode": "ce", "epoch": 0, "step": 1, "steps_per_epoch": 2,
                         "loss": None, "losses": {}, "lr": 0.1}).global_step is None  # a diverged loss: null


def test_the_follower_reads_complete_lines_and_skips_garbage(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "done", "time": 1.0}\nnot json\n[1, 2]\n{"event": "failed", "mess')
    follower = MetricsFollower(path)
    assert events.parse_all(follower.poll()) == [events.Done(time=1.0)]
    with path.open("a") as f:
        f.write('age": "boom"}\n')
    assert events.parse_all(follower.poll()) == [events.Failed(message="boom")]


def test_the_trainer_emits_typed_events_tagged_with_their_phase(tmp_path):
    data = load_data("demo")
    student = load_model("demo").model
    stage = FinetuneStage(mode="ce", epochs=1, max_steps=2, log_every=1, batch_size=32)
    seen: list = []
    writer = RunWriter(tmp_path)

    def emit(event):
        seen.append(event)
        writer.event(event)

    Trainer(student, None, demo_arch(), data, [stage], (1, 8, 8), emit, tmp_path / "ft.ckpt",
            Placement(torch.device("cpu")), phase="baseline").run()
    writer.close("done")
    assert all(isinstance(e, events.RunEvent) and e.phase == "baseline" for e in seen)
    assert [e.kind for e in seen] == ["stage", "step", "step", "epoch", "checkpoint", "stage_end", "checkpoint"]
    back = events.parse_all(read_events(tmp_path))
    assert [{**e.to_dict(), "time": None} for e in back] == [{**e.to_dict(), "time": None} for e in seen]
    assert seen[1]["event"] == "step" and seen[1].get("global_step") == 1  # the dict view, for untyped readers
