"""The reproduction sessions (sessions/repro): valid, pointing at CIFAR-10 and a baseline, stating
their reference script's constants as METHOD.md gives them, and their pruning, decomposition and
auxiliary-loss pivots plan on the architecture they name (a freshly initialised one: the trained
baselines are the user's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.chain import compress, planner
from core.finetune.segments import resolve_pivots
from core.models.checkpoint import Loaded
from core.models.zoo import Arch, build
from core.overview import Opened
from core.prune.strategies import REFERENCE_ROWS, default_smoothing
from core.session import load_session

REPRO = Path(__file__).resolve().parents[1] / "sessions" / "repro"
SESSIONS = sorted(p.name for p in REPRO.glob("*.toml"))
PIVOTS = {"resnet56": ["layer1.8", "layer2.8"], "resnet110": ["layer1.17", "layer2.17"],
          "mobilenet_v2_cifar": ["layers.6", "layers.13"]}  # 19 blocks: even pivots [7, 14]


def test_the_sessions_cover_the_paper():
    assert SESSIONS == ["mobilenet_v2-a1-p1.toml", "resnet110-a1-p1.toml", *(f"resnet56-a1-p{i}.toml" for i in range(1, 6)),
                        "resnet56-a2-tucker.toml", "resnet56-a3.toml"]
    a1 = {load_session(REPRO / f"resnet56-a1-p{i}.toml").prune.strategy for i in range(1, 6)}
    assert a1 == {"P1", "P2", "P3", "P4", "P5"}
    a2, a3 = load_session(REPRO / "resnet56-a2-tucker.toml"), load_session(REPRO / "resnet56-a3.toml")
    assert (a2.prune, a2.decompose.method, a2.decompose.x) == (None, "tucker2", 2.32)  # the script's X_FACTOR
    assert (a3.prune.strategy, a3.decompose.method, a3.decompose.x) == ("P2", "tucker2", 1.71)  # as res56_norm, 1.71x
    p4, p5 = (load_session(REPRO / f"resnet56-a1-p{i}.toml").prune for i in (4, 5))
    assert (p4.metric, p4.percent) == ("k34", 0.32) and (p5.metric, p5.variant) == ("k34", "C")


@pytest.mark.parametrize("name", SESSIONS)
def test_reproduction_session_states_its_scripts_constants(name):
    session = load_session(REPRO / name).resolved(REPRO)
    data, model = session.data, session.model.name
    assert data.spec.startswith("cifar10:") and session.model.checkpoint.endswith(".pth.tar")
    assert (data.normalize, data.split) == ("reference", "reference")
    aux, ce = session.finetune
    assert (aux.mode, aux.epochs, aux.lr, aux.milestones, aux.gamma, aux.nesterov) == ("aux", 140, 1e-3, [80, 120], 0.1, True)
    assert (aux.n_losses, aux.decay, aux.mse_factor, aux.batch_size, aux.momentum, aux.weight_decay) == (2, 3.0, 5.0, 64, 0.9, 0.0)
    assert aux.aux_target == ("teacher" if model == "mobilenet_v2_cifar" else "zeros")
    step4 = (40, 1e-3, [20]) if session.decompose is not None else (30, 1e-4, [])
    assert (ce.mode, ce.epochs, ce.lr, ce.milestones) == ("ce", *step4)
    assert (ce.nesterov, ce.momentum, ce.weight_decay, ce.batch_size) == (False, 0.9, 0.0, 64)
    p = session.prune
    if p is not None and p.strategy in ("P1", "P2", "P3"):
        row = REFERENCE_ROWS[model, "cifar10"]
        assert (p.tmin, p.tmax) == pytest.approx(row.t_range[p.strategy]) and p.coef == row.coef
        smoothing = default_smoothing(model)
        if p.strategy == "P2":
            assert (p.p2_divisor, p.p2_factor) == (smoothing.p2_divisor, smoothing.p2_factor)
        if p.strategy == "P3":
            assert (p.p3_scale, p.p3_divisor) == (smoothing.p3_scale, smoothing.p3_divisor)


@pytest.mark.parametrize("name", SESSIONS)
def test_reproduction_session_plans(name):
    session = load_session(REPRO / name).resolved(REPRO)
    torch.manual_seed(0)
    arch = Arch(session.model.name, 10, 3)
    opened = Opened(Loaded(build(arch).eval(), arch, "initialised", []), None, (3, 32, 32))
    chain = compress(session, opened, dataset="cifar10")
    assert [step.name for step in chain.steps] == ["pruned"] * (session.prune is not None) + \
        ["decomposed"] * (session.decompose is not None)
    for step in chain.steps:
        assert step.plan.params[1] < step.plan.params[0]
    if session.prune is not None:
        plan = chain.steps[0].plan
        # the constants the session states are the defaults a CIFAR-10 session of this model gets
        bare = session.prune.model_copy(update=dict.fromkeys(
            ("tmin", "tmax", "coef", "p2_divisor", "p2_factor", "p3_scale", "p3_divisor")))
        assert [layer.keep for layer in planner(opened, bare, "cifar10").plan(bare).layers] == \
            [layer.keep for layer in plan.layers]
    pivots = resolve_pivots(chain.compressed.model, chain.compressed.loaded.arch, session.finetune[0])
    assert pivots.modules == PIVOTS[session.model.name]
    assert pivots.gammas == pytest.approx([0.125, 1.0, 1.0])  # every pivot pair is (p, 2p): (1/2)^3, 1, final 1
