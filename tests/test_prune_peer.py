"""The Torch-Pruning peer (`[prune] strategy = "torch-pruning"`): its global pruner lands on the
FLOPs target, the replay reports and saves the pruned model like any other plan, and bad
settings are one line."""

from __future__ import annotations

import json

import pytest
import torch

from core.errors import WorkbenchError
from core.measure import count_flops, count_params
from core.models.checkpoint import load_model
from core.models.zoo import Arch, build
from core.prune.peer import flops_target_keep
from core.prune.plan import Planner
from core.session import PruneSection, parse_session
from tests.cli_runner import run_cli

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def planner() -> Planner:
    torch.manual_seed(0)
    arch = Arch("resnet20", 10, 1)
    return Planner(build(arch).eval(), arch, SHAPE)


@pytest.mark.parametrize("importance", ["magnitude", "group-norm"])
@pytest.mark.parametrize("target", [0.35, 0.7])
def test_global_pruning_lands_within_one_percent_of_the_flops_target(planner, importance, target):
    plan = planner.plan(PruneSection(strategy="torch-pruning", importance=importance, flops=target))
    assert abs(plan.flops[1] / plan.flops[0] / target - 1) <= 0.01
    keeps = [layer.keep for layer in plan.layers]
    assert len(set(keeps)) > 3  # global ranking: layers lose different shares
    assert all(layer.kept == sorted(set(layer.kept)) and len(layer.kept) == layer.keep for layer in plan.layers)


def test_the_peer_model_costs_what_the_plan_says(planner):
    from core.prune.surgery import apply_pruning

    plan = planner.plan(PruneSection(strategy="torch-pruning", flops=0.5))
    model, arch = apply_pruning(planner.model, planner.arch, plan.keep(), SHAPE)
    assert (count_params(model), count_flops(model, SHAPE)) == (plan.params[1], plan.flops[1])
    assert arch.cfg == [layer.keep for layer in plan.layers]


def test_an_unreachable_target_is_one_line(planner):
    with pytest.raises(WorkbenchError, match=r"prune.flops: torch-pruning \(group-norm\) cannot reach 0.0100"):
        flops_target_keep(planner, 0.01, "group-norm")


@pytest.mark.parametrize("prune, message", [
    ('strategy = "torch-pruning"', "needs one of flops"),
    ('strategy = "torch-pruning"\nflops = 0.5\nflops_of = "a.toml"', "needs one of flops"),
    ('strategy = "torch-pruning"\nflops = 1.5', "prune.flops: Input should be less than 1"),
    ('strategy = "torch-pruning"\nflops = 0.5\nimportance = "taylor"', "prune.importance"),
])
def test_bad_peer_settings_are_one_line(prune, message):
    with pytest.raises(WorkbenchError, match=message):
        parse_session(f'version = 1\n[model]\nname = "demo"\n[prune]\n{prune}\n')


def test_replay_of_the_peer_reports_and_saves_a_reloadable_model(tmp_path):
    (tmp_path / "p1.toml").write_text('version = 1\n[model]\nname = "demo"\n[data]\nspec = "demo"\n'
                                      '[prune]\nstrategy = "P1"\nmetric = "k34"\n')
    (tmp_path / "peer.toml").write_text('version = 1\n[model]\nname = "demo"\n[data]\nspec = "demo"\n'
                                        '[prune]\nstrategy = "torch-pruning"\nimportance = "magnitude"\n'
                                        'flops_of = "p1.toml"\n')
    for name in ("p1", "peer"):
        done = run_cli("replay", f"{name}.toml", "--out", f"runs/{name}", "--no-latency", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    reports = {n: json.loads((tmp_path / "runs" / n / "report.json").read_text()) for n in ("p1", "peer")}
    p1, peer = (reports[n]["steps"][1] for n in ("p1", "peer"))
    assert abs(peer["flops"] / p1["flops"] - 1) <= 0.01 and peer["flops"] == peer["predicted"]["flops"]
    assert {layer["source"] for layer in peer["layers"]} == {"torch-pruning"}
    loaded = load_model(None, tmp_path / "runs" / "peer" / "pruned.safetensors")
    assert count_params(loaded.model) == peer["params"]
    assert loaded.arch.cfg == [layer["channels_after"] for layer in peer["layers"]]


def test_the_tui_refuses_to_edit_a_peer_session_in_one_line(tmp_path):
    (tmp_path / "peer.toml").write_text('version = 1\n[model]\nname = "demo"\n[prune]\nstrategy = "torch-pruning"\n'
                                        'flops = 0.5\n')
    done = run_cli("open", "--session", "peer.toml", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "does not edit [prune] strategy \"torch-pruning\"" in done.stderr and "workbench replay" in done.stderr
