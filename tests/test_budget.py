"""Budgets ([target], core/budget.py): each method's knob solved on the exact cost model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.budget import solve_decompose, solve_prune
from core.decompose.plan import Decomposer
from core.errors import WorkbenchError
from core.measure import count_flops, count_params
from core.models.checkpoint import load_model
from core.models.zoo import Arch, build
from core.pipeline import replay
from core.prune.plan import Planner
from core.session import DecomposeSection, PruneSection, TargetSection

SESSIONS = Path(__file__).resolve().parents[1] / "sessions"
CIFAR = (3, 32, 32)


@pytest.fixture(scope="module")
def resnet56():
    arch = Arch("resnet56", 10)
    return build(arch), arch


@pytest.mark.parametrize("settings, knob", [
    (PruneSection(strategy="P1"), "coef"), (PruneSection(strategy="P3"), "coef"),
    (PruneSection(strategy="P4"), "percent"), (PruneSection(strategy="P5", variant="C"), "stage_scale"),
])
def test_prune_knob_lands_on_half_the_flops(resnet56, settings, knob):
    planner = Planner(*resnet56, CIFAR)
    solved, result = solve_prune(planner, settings, TargetSection(flops=0.5))
    plan = planner.plan(solved)
    assert result.knob == knob and result.achieved == plan.flops[1] / plan.flops[0]
    assert abs(result.achieved - 0.5) <= 0.01 * 0.5 + 0.005   # whole filters: within a step of the target
    assert getattr(solved, "coef" if knob == "coef" else "percent" if knob == "percent" else "strategy") is not None


def test_params_target_and_monotone_knob(resnet56):
    planner = Planner(*resnet56, CIFAR)
    a = solve_prune(planner, PruneSection(strategy="P4"), TargetSection(params=0.6))[1]
    b = solve_prune(planner, PruneSection(strategy="P4"), TargetSection(params=0.4))[1]
    assert a.metric == "params" and a.value < b.value and b.achieved < a.achieved


def test_decomposition_x_from_the_opened_networks_budget(seeds):
    norm = load_model(checkpoint=seeds / "res56_norm.pth.tar")   # A3: decompose the pruned network
    original = build(Arch("resnet56", 10))
    baseline = (count_params(original), count_flops(original, CIFAR))
    decomposer = Decomposer(norm.model, norm.arch, CIFAR)
    settings, result = solve_decompose(decomposer, DecomposeSection(), TargetSection(flops=0.3), baseline)
    plan = decomposer.plan(settings)
    assert result.knob == "x" and settings.x == result.value > 1
    assert result.achieved == pytest.approx(plan.flops[1] / baseline[1]) and abs(result.achieved - 0.3) < 0.003
    with pytest.raises(WorkbenchError, match="target: even at"):
        solve_decompose(decomposer, DecomposeSection(layers=["layer1.0.conv1"]), TargetSection(flops=0.3), baseline)


def test_decomposition_closes_the_rank_step_layer_by_layer(resnet56):
    """ResNet-56's 18 convs of a stage change rank with x together: x alone stops at 0.48 of the FLOPs."""
    decomposer = Decomposer(*resnet56, CIFAR)
    settings, result = solve_decompose(decomposer, DecomposeSection(), TargetSection(flops=0.5))
    plan = decomposer.plan(settings)
    assert abs(result.achieved - 0.5) <= 0.005 and result.achieved == plan.flops[1] / plan.flops[0]
    assert settings.ranks and set(settings.ranks) <= {layer.name for layer in plan.decomposed}
    assert abs(decomposer.plan(DecomposeSection(x=settings.x)).flops[1] / plan.flops[0] - 0.5) > 0.005


def test_replay_reports_the_solved_knob(tmp_path):
    session = tmp_path / "s.toml"
    session.write_text((SESSIONS / "demo-p1.toml").read_text() + "\n[target]\nflops = 0.6\n")
    replay(session, tmp_path / "run", latency=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    pruned = report["steps"][1]
    assert report["target"]["knob"] == "coef"
    assert report["target"]["achieved"] == pytest.approx(pruned["flops"] / report["steps"][0]["flops"])
    assert abs(report["target"]["achieved"] - 0.6) < 0.05
    assert "[target] flops = 0.6 of the baseline: solved coef" in (tmp_path / "run" / "report.md").read_text()


def test_a_cost_that_rises_again_at_the_compressing_end_is_scanned():
    """Measured time can rise again as the knob compresses most (very narrow convs run slower on
    oneDNN): a V-shaped cost over P4's percent (larger compresses more), lowest 0.5 at 0.6."""
    from core.budget import _bisect

    def cost(v: float) -> float:
        return abs(v - 0.6) + 0.5
    with pytest.raises(WorkbenchError, match="target: even at 1 the plan keeps 0.9000"):
        _bisect(cost, 0.0, 1.0, 0.7, increasing=False)
    value = _bisect(cost, 0.0, 1.0, 0.7, increasing=False, scan=9)   # 0.4 is the first of 0.1 .. 0.9 that fits
    assert value == pytest.approx(0.4) and cost(value) == pytest.approx(0.7)
    with pytest.raises(WorkbenchError, match=r"target: the fastest plan found \(at 0.6\) keeps 0.5000 .* 0.4 asked") as out:
        _bisect(cost, 0.0, 1.0, 0.4, increasing=False, scan=9)
    assert out.value.best == pytest.approx(0.6)   # where a latency budget times a plan whole before giving up
