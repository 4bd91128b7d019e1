"""The fine-tune screen's reducer over typed run events: stages laid end to end on the plots."""

from __future__ import annotations

from core.finetune.events import Done, Epoch, Stage, Step, parse
from workbench.run_progress import RunProgress


def stage(i: int, epochs: int = 2, steps: int = 4) -> Stage:
    return Stage(stage=i, stages=2, mode="ce", epochs=epochs, steps_per_epoch=steps)


def step(i: int, epoch: int, n: int, steps: int = 4, **kw) -> Step:
    return Step(stage=i, mode="ce", epoch=epoch, step=n, steps_per_epoch=steps, global_step=epoch * steps + n,
                loss=kw.get("loss", 1.0), losses=kw.get("losses", {}), lr=0.1, images_per_s=kw.get("speed"),
                eta_s=kw.get("eta"))


def epoch(i: int, n: int, val: float | None, best: float | None = None) -> Epoch:
    return Epoch(stage=i, mode="ce", epoch=n, epochs=2, loss=1.0, losses={}, val_acc=val, best_val=best, lr=0.1)


def test_the_second_stage_continues_the_x_axes_of_the_first():
    run = RunProgress()
    first = run.apply(stage(0))
    assert first.bar == (8, 0) and first.line == (2, 0, None, None, None)
    change = run.apply(step(0, 1, 4, losses={"ce": 0.5, "mse": 0.25}, speed=900.0, eta=12.0))
    assert change.losses == [("ce", 8, 0.5), ("mse", 8, 0.25)]
    assert change.bar == (8, 8) and change.line[:4] == (2, 2, 900.0, 12.0)
    change = run.apply(epoch(0, 2, 0.9, best=0.9))
    assert change.accuracy == (2, 90.0) and change.line == (2, 2, 900.0, 12.0, None) and run.best_val == 0.9
    run.apply(stage(1))
    assert run.speed is None and run.best_val is None  # a new stage: no speed, no best yet
    assert run.apply(step(1, 0, 1)).losses == [("loss", 9, 1.0)]  # 8 steps of stage 1 before it
    assert run.apply(epoch(1, 1, None)).accuracy is None
    assert run.apply(epoch(1, 1, 0.5)).accuracy == (3, 50.0)
    assert run.apply(Done()) is None


def test_a_step_of_an_older_run_without_global_step_counts_from_its_epoch():
    run = RunProgress()
    run.apply(stage(0))
    old = parse({"event": "step", "stage": 0, "mode": "ce", "epoch": 1, "step": 2, "steps_per_epoch": 4,
                 "loss": 0.3, "losses": {}, "lr": 0.1, "images_per_s": None, "eta_s": None})
    assert run.apply(old).losses == [("loss", 6, 0.3)]


def test_the_latest_time_of_any_line_is_kept():
    run = RunProgress()
    run.saw({"event": "heartbeat-of-a-newer-version", "time": 20.0})
    run.saw({"event": "step", "time": 10.0})
    run.saw("not a record")
    assert run.last_time == 20.0
