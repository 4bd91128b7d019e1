"""The reproduction sessions (sessions/repro): valid, pointing at CIFAR-10 and a baseline, and
their pruning, decomposition and auxiliary-loss pivots plan on the architecture they name
(a freshly initialised one: the trained baselines are the user's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.decompose.plan import Decomposer, apply_decomposition
from core.finetune.segments import resolve_pivots
from core.models.zoo import Arch, build
from core.prune.plan import Planner
from core.prune.surgery import apply_pruning
from core.session import load_session

REPRO = Path(__file__).resolve().parents[1] / "sessions" / "repro"
PIVOTS = {"resnet56": ["layer1.8", "layer2.8"], "resnet110": ["layer1.17", "layer2.17"],
          "mobilenet_v2_cifar": ["layers.6", "layers.13"]}  # 19 blocks: even pivots [7, 14]


@pytest.mark.parametrize("name", sorted(p.name for p in REPRO.glob("*.toml")))
def test_reproduction_session_plans(name):
    session = load_session(REPRO / name).resolved(REPRO)
    assert session.data.spec.startswith("cifar10:") and session.model.checkpoint.endswith(".pth.tar")
    assert [(s.mode, s.epochs, s.lr, s.milestones) for s in session.finetune] == [
        ("aux", 140, 1e-3, [80, 120]), ("ce", 30, 1e-4, [])]
    aux = session.finetune[0]
    assert (aux.n_losses, aux.decay, aux.mse_factor, aux.batch_size, aux.momentum) == (2, 3.0, 5.0, 64, 0.9)
    torch.manual_seed(0)
    arch = Arch(session.model.name, 10, 3)
    model, shape = build(arch).eval(), (3, 32, 32)
    if session.prune is not None:
        plan = Planner(model, arch, shape).plan(session.prune)
        assert plan.params[1] < plan.params[0]
        model, arch = apply_pruning(model, arch, plan.keep(), shape)
    if session.decompose is not None:
        decomposer = Decomposer(model, arch, shape)
        plan = decomposer.plan(session.decompose)
        assert plan.params[1] < plan.params[0]
        model, arch = apply_decomposition(model, arch, plan, decomposer)
    assert resolve_pivots(model, arch, aux).modules == PIVOTS[session.model.name]
