"""The Fashion-MNIST comparison grid (sessions/fashion-mnist): every session reads, gives every
run the same fine-tuning budget, and its pruning, decomposition and auxiliary pivots plan on the
baseline (the committed checkpoint when present, else a freshly initialised ResNet-20 with one
input channel); the criterion comparison keeps A1's per-layer counts and the peer lands on A1's
FLOPs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.finetune.segments import resolve_pivots
from core.models.checkpoint import Loaded, load_model
from core.models.zoo import Arch, build
from core.overview import Opened
from core.pipeline import run_session
from core.session import load_session

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "sessions" / "fashion-mnist"
BASELINE = ROOT / "results" / "fashion-mnist" / "baseline.safetensors"
SHAPE = (1, 28, 28)
RUNS = ["a1-p1-k34", "a1-p1-l1norm", "a1-p1-random", "a2-tucker2", "a3-aux-ce", "a3-ce", "peer-torch-pruning"]


def _session(name: str):
    return load_session(GRID / f"{name}.toml").resolved(GRID)


def _lr_per_epoch(stages) -> list[float]:
    """The learning rate of every epoch over the stages, as MultiStepLR sets it."""
    return [stage.lr * stage.gamma ** sum(epoch >= m for m in stage.milestones)
            for stage in stages for epoch in range(stage.epochs)]


@pytest.fixture(scope="module")
def baseline() -> Opened:
    if BASELINE.is_file():
        loaded = load_model("resnet20", BASELINE)
    else:
        torch.manual_seed(0)
        arch = Arch("resnet20", 10, 1)
        loaded = Loaded(build(arch).eval(), arch, "freshly initialised", [])
    return Opened(loaded, None, SHAPE)


def test_the_grid_compresses_the_committed_baseline_with_one_budget():
    assert sorted(p.stem for p in GRID.glob("*.toml")) == sorted(["baseline", *RUNS])
    schedules = set()
    for name in RUNS:
        session = _session(name)
        assert session.model.checkpoint == str(BASELINE)
        assert (session.model.name, session.model.in_channels, session.train) == ("resnet20", 1, None)
        assert session.data.spec == "fashion-mnist:/usr/share/datasets/fashion-mnist"
        assert all((s.batch_size, s.channels_last, s.momentum, s.weight_decay, s.max_steps) == (128, True, 0.9, 0.0, None)
                   for s in session.finetune)
        schedules.add(tuple(round(lr, 12) for lr in _lr_per_epoch(session.finetune)))
        modes = [s.mode for s in session.finetune]
        assert modes == (["aux", "ce"] if name == "a3-aux-ce" else ["ce"])
    assert schedules == {(1e-2,) * 6 + (1e-3,) * 3 + (1e-4,) * 3}
    a3, ablation = _session("a3-aux-ce"), _session("a3-ce")
    assert (a3.prune, a3.decompose) == (ablation.prune, ablation.decompose)


@pytest.mark.parametrize("name", RUNS)
def test_grid_session_plans_on_the_baseline(name, baseline):
    session = _session(name)
    run = run_session(session, latency=False, opened=baseline, measure=False)
    steps = [s["name"] for s in run.report["steps"]]
    assert steps == ["baseline", *(["pruned"] if session.prune else []), *(["decomposed"] if session.decompose else [])]
    model, arch = run.compressed.model, run.compressed.loaded.arch
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)
    for stage in session.finetune:
        if stage.mode == "aux":
            assert len(resolve_pivots(model, arch, stage).modules) == stage.n_losses


def _plan(name: str, baseline: Opened):
    return run_session(_session(name), latency=False, opened=baseline, measure=False)


def test_criterion_comparison_keeps_a1s_counts_and_the_peer_its_flops(baseline):
    from core.measure import count_flops

    layers = {name: _plan(name, baseline).report["steps"][1]["layers"] for name in RUNS[:3]}
    counts = {name: [layer["channels_after"] for layer in value] for name, value in layers.items()}
    assert counts["a1-p1-k34"] == counts["a1-p1-l1norm"] == counts["a1-p1-random"]
    assert any(c < layer["channels_before"] for c, layer in zip(counts["a1-p1-k34"], layers["a1-p1-k34"]))
    a1, peer = _plan("a1-p1-k34", baseline), _plan("peer-torch-pruning", baseline)
    a1_flops, peer_flops = (count_flops(run.compressed.model, SHAPE) for run in (a1, peer))
    assert abs(peer_flops / a1_flops - 1) <= 0.01
    assert [layer["source"] for layer in peer.report["steps"][1]["layers"]] == ["torch-pruning"] * 9
