"""The fine-tuning engine: settings, losses, the aux-mode gradient, the trainer's loop,
checkpoints and stops (in process; the subprocess kill/resume and torchrun tests are in
test_finetune_replay.py)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from core.data import load_data
from core.models.demo import demo_arch
from core.errors import WorkbenchError
from core.finetune.losses import aux_loss
from core.finetune.rundir import RunWriter, read_events
from core.finetune.segments import capture, resolve_pivots
from core.finetune.settings import FinetuneStage
from core.finetune.trainer import Placement, Stopped, Trainer, epoch_order, load_checkpoint, steps_per_epoch
from core.models.checkpoint import load_model

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    return load_data("demo")


@pytest.fixture(scope="module")
def teacher():
    return load_model("demo").model


def student_of(teacher, noise: float = 0.05, seed: int = 0):
    """A damaged copy of the teacher (what compression leaves), reproducibly."""
    torch.manual_seed(seed)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(noise * torch.randn_like(p))
    return student


def trainer(student, teacher, data, stages, tmp_path=None, events=None):
    emit = events.append if events is not None else (lambda e: None)
    return Trainer(student, teacher, demo_arch(), data, stages, SHAPE, emit,
                   tmp_path / "ft.ckpt" if tmp_path else None, Placement(torch.device("cpu")))


def test_settings_take_the_reference_values_per_mode():
    aux, ce = FinetuneStage(mode="aux"), FinetuneStage(mode="ce")
    assert (aux.lr, aux.epochs, aux.milestones, aux.batch_size, aux.momentum) == (1e-3, 140, [80, 120], 64, 0.9)
    assert (aux.mse_factor, aux.n_losses, aux.decay) == (5.0, 2, 3.0)
    assert (ce.lr, ce.epochs, ce.milestones) == (1e-4, 30, [])
    assert FinetuneStage(mode="mse", lr=0.5).lr == 0.5
    for bad in ({"mode": "adam"}, {"mode": "ce", "milestones": [5, 3]}, {"mode": "ce", "pivots": [1, 2]},
                {"mode": "aux", "pivots": [4]}, {"mode": "aux", "lr": -1.0}, {"mode": "ce", "lr": "high"}):
        with pytest.raises(ValidationError):
            FinetuneStage(**bad)


def test_epoch_order_is_seeded_per_stage_and_epoch():
    stage = FinetuneStage(mode="ce", batch_size=10)
    a, b = epoch_order(105, stage, 0, 3), epoch_order(105, stage, 0, 3)
    assert a.shape == (10, 10) and torch.equal(a, b) and len(set(a.flatten().tolist())) == 100
    assert not torch.equal(a, epoch_order(105, stage, 0, 4))
    assert not torch.equal(a, epoch_order(105, stage, 1, 3))
    assert steps_per_epoch(105, FinetuneStage(mode="ce", batch_size=10, max_steps=3)) == 3


def test_aux_gradient_is_the_hand_weighted_sum(teacher, digits):
    """Each parameter receives sum_k gamma_k dL_k/dtheta over the losses downstream of it."""
    student = student_of(teacher)
    stage = FinetuneStage(mode="aux", pivots=[3, 6], mse_factor=2.0)
    pivots = resolve_pivots(student, demo_arch(), stage)
    x, y = next(iter(torch.utils.data.DataLoader(digits.train, batch_size=16)))
    with torch.no_grad(), capture(teacher, pivots.modules) as t_out:
        t_logits = teacher(x)
    student.train()
    with capture(student, pivots.modules) as s_out:
        logits = student(x)
    total, terms = aux_loss(logits, y, t_logits, 2.0, list(s_out), list(t_out), pivots.gammas, pivots.modules)
    params = dict(student.named_parameters())
    got = dict(zip(params, torch.autograd.grad(total, list(params.values()), retain_graph=True)))
    losses = [F.mse_loss(s, t) for s, t in zip(s_out, t_out)]
    losses.append(F.cross_entropy(logits, y) + 2.0 * F.mse_loss(logits, t_logits))
    assert pivots.gammas == pytest.approx([(3 / 6) ** 3, 1.0, 1.0])  # METHOD.md: over the last aux pivot
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for gamma, loss in zip(pivots.gammas, losses):
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)):
            if g is not None:
                expected[n] += gamma * g
    for n in params:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-6)
    # the first block is reached by all three losses, the head by the last one only
    assert expected["layer1.0.conv1.weight"].abs().sum() > 0 and set(terms) == {"ce", "mse", "aux1", "aux2"}


def test_aux_step_equals_the_papers_optimizers(teacher, digits):
    """One SGD step on the weighted sum (weight decay counted per reaching loss) equals the
    paper's n_losses+1 SGD optimizers over nested segments, all gradients computed first."""
    # lr 0.01: with METHOD.md's gammas ([0.125, 1, 1] here) lr 0.05 diverges to weights ~100 on digits
    stage = FinetuneStage(mode="aux", pivots=[3, 6], lr=0.01, weight_decay=1e-3, epochs=1, max_steps=3,
                          batch_size=32, milestones=[])
    ours = student_of(teacher)
    paper = copy.deepcopy(ours)
    t = trainer(ours, teacher, digits, [stage])
    t.run()
    pivots = resolve_pivots(paper, demo_arch(), stage)
    segments = [["conv1", "bn1", "layer1.0", "layer1.1", "layer1.2"], ["layer2.0", "layer2.1", "layer2.2"],
                ["layer3", "linear"]]
    params = dict(paper.named_parameters())
    def in_segments(k):
        return [p for n, p in params.items() if any(n == s or n.startswith(s + ".") for seg in segments[:k + 1] for s in seg)]
    assert stage.nesterov  # the reference step-3 optimizers' (METHOD.md), the aux default
    optimizers = [torch.optim.SGD(in_segments(k), lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True)
                  for k in range(3)]
    order = epoch_order(len(digits.train), stage, 0, 0)
    for step in range(3):
        torch.manual_seed(stage.seed * 7_919 + step)
        idx = order[step].tolist()
        x, y = torch.utils.data.default_collate(digits.train.__getitems__(idx))
        paper.train()
        with torch.no_grad(), capture(teacher, pivots.modules) as t_out:
            t_logits = teacher(x)
        with capture(paper, pivots.modules) as s_out:
            logits = paper(x)
        losses = [F.mse_loss(s, t) for s, t in zip(s_out, t_out)]
        losses.append(F.cross_entropy(logits, y) + 5.0 * F.mse_loss(logits, t_logits))
        grads = []
        for k, opt in enumerate(optimizers):
            ps = [p for g in opt.param_groups for p in g["params"]]
            gs = torch.autograd.grad(losses[k], ps, retain_graph=True, allow_unused=True)
            grads.append([pivots.gammas[k] * g if g is not None else torch.zeros_like(p) for g, p in zip(gs, ps)])
        for opt, gs in zip(optimizers, grads):
            for p, g in zip((p for grp in opt.param_groups for p in grp["params"]), gs):
                p.grad = g
            opt.step()
    for (name, a), b in zip(ours.state_dict().items(), paper.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_loss_falls_and_best_model_is_kept(teacher, digits, tmp_path):
    events = []
    student = student_of(teacher, noise=0.08)
    stages = [FinetuneStage(mode="mse", epochs=3, lr=0.01, milestones=[2], log_every=5)]
    entries = trainer(student, teacher, digits, stages, tmp_path, events).run()
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert epochs[1]["lr"] == pytest.approx(0.001)  # MultiStepLR at milestone 2
    end = next(e for e in events if e["event"] == "stage_end")
    assert end["best_val"] == max(e["val_acc"] for e in epochs)
    assert entries == [{k: end[k] for k in ("mode", "epochs", "best_val", "best_epoch", "test_acc")}]
    steps = [e for e in events if e["event"] == "step"]
    assert steps and all({"ce", "mse"} == set(e["losses"]) and e["images_per_s"] > 0 for e in steps)
    assert steps[-1]["eta_s"] == 0


def test_stop_checkpoints_and_resume_continues_exactly(teacher, digits, tmp_path):
    stages = [FinetuneStage(mode="aux", epochs=2, max_steps=4, lr=0.01, n_losses=1, checkpoint_every=100, log_every=1),
              FinetuneStage(mode="ce", epochs=1, max_steps=3, lr=0.01)]
    whole = student_of(teacher)
    straight = trainer(whole, teacher, digits, stages).run()

    part = student_of(teacher)
    stopping = trainer(part, teacher, digits, stages, tmp_path)
    seen = []

    def stop_after_second_batch(event):  # the signal arrives while batch 3 trains
        seen.append(event)
        if event["event"] == "step" and event["epoch"] == 1 and event["step"] == 2:
            stopping.request_stop()
    stopping.emit = stop_after_second_batch
    with pytest.raises(Stopped, match="epoch 2, batch 3/4"):
        stopping.run()
    assert seen[-1]["event"] == "stopped"
    document = load_checkpoint(tmp_path / "ft.ckpt")
    assert (document["stage"], document["epoch"], document["step"]) == (0, 1, 3)

    resumed = student_of(teacher, seed=99)  # different weights: the checkpoint must restore them
    entries = trainer(resumed, teacher, digits, stages, tmp_path).run(document)
    assert entries == straight
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


class PoisonAfter:
    """Training images that turn NaN after `good` batches (a diverging run, reproducibly)."""

    def __init__(self, dataset, good: int):
        self.dataset, self.good, self.calls = dataset, good, 0

    def __len__(self):
        return len(self.dataset)

    def __getitems__(self, indices):
        self.calls += 1
        items = self.dataset.__getitems__(indices)
        return [(x * float("nan"), y) for x, y in items] if self.calls > self.good else items


def test_nan_loss_stops_with_the_last_good_checkpoint(teacher, digits, tmp_path):
    data = dataclasses.replace(digits, train=PoisonAfter(digits.train, good=2))
    stage = FinetuneStage(mode="ce", epochs=3, lr=0.01, max_steps=4, log_every=1, checkpoint_every=1)
    events = []
    with pytest.raises(WorkbenchError, match="became nan at stage 1, epoch 1, by batch 3.*lower finetune\\[0\\].lr"):
        trainer(student_of(teacher), teacher, data, [stage], tmp_path, events).run()
    assert events[-1]["event"] == "failed"
    document = load_checkpoint(tmp_path / "ft.ckpt")
    assert (document["epoch"], document["step"]) == (0, 2)
    assert all(torch.isfinite(v).all() for v in document["model"].values() if v.is_floating_point())


def test_checkpoint_loads_weights_only_and_refuses_damage(tmp_path, teacher, digits):
    trainer(student_of(teacher), teacher, digits, [FinetuneStage(mode="ce", epochs=1, max_steps=2)], tmp_path).run()
    document = torch.load(tmp_path / "ft.ckpt", weights_only=True)
    assert document["stage"] == 1 and document["completed"][0]["mode"] == "ce"
    (tmp_path / "bad.ckpt").write_bytes((tmp_path / "ft.ckpt").read_bytes()[:200])
    with pytest.raises(WorkbenchError, match="damaged"):
        load_checkpoint(tmp_path / "bad.ckpt")
    with pytest.raises(WorkbenchError, match="nothing to resume"):
        load_checkpoint(tmp_path / "none.ckpt")


def test_aux_pivot_shape_mismatch_is_one_line():
    """Pruning a block's output channels (possible with coupled pruning) breaks the pivot MSE."""
    with pytest.raises(WorkbenchError, match="layer1.2: the compressed network's output \\(12, 8, 8\\) differs"):
        aux_loss(torch.zeros(2, 10), torch.zeros(2, dtype=torch.long), torch.zeros(2, 10), 1.0,
                 [torch.zeros(2, 12, 8, 8)], [torch.zeros(2, 16, 8, 8)], [0.5, 1.0], ["layer1.2"])


def test_run_directory_lock_and_events(tmp_path):
    writer = RunWriter(tmp_path)
    with pytest.raises(WorkbenchError, match="being written by another replay"):
        RunWriter(tmp_path)
    writer.event({"event": "step", "loss": float("nan"), "losses": {"ce": float("inf")}})
    (tmp_path / "metrics.jsonl").open("a").write('{"event": "half')  # a line still being written
    writer.close("done")
    events = read_events(tmp_path)
    assert len(events) == 1 and events[0]["loss"] is None and events[0]["losses"] == {"ce": None}
    RunWriter(tmp_path).close("done")  # the lock is released
