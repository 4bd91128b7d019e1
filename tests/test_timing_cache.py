"""The latency table kept on disk (core/timing_cache.py): the next session on the same machine
solves a latency budget without timing anything, and reads nothing measured elsewhere (another
batch size, thread count or model structure, a file too old, broken or turned off).

Times come from the synthetic clock of tests/test_latency_target.py."""

from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path

import pytest
import torch

from core import budget, layer_times, timing_cache
from core.budget import Solved, solve_decompose, solve_prune
from core.chain import apply
from core.decompose.plan import Decomposer
from core.measure import Latency
from core.models.checkpoint import load_model
from core.overview import Opened
from core.pipeline import replay
from core.prune.plan import Planner
from core.session import DecomposeSection, PruneSection, TargetSection
from tests.latency_clock import Clock
from tests.test_latency_target import INPUT
from workbench import target_field

SESSIONS = Path(__file__).resolve().parents[1] / "sessions"


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("WORKBENCH_TIMING_CACHE", str(folder))
    return folder


def p4_solve(demo, goal: float = 0.7, batch: int = 1):
    planner = Planner(demo.model, demo.arch, INPUT)  # a new planner: a new session
    planner.timing = ("cpu", batch)
    return solve_prune(planner, PruneSection(strategy="P4"), TargetSection(latency=goal)), planner


def test_the_next_session_solves_a_latency_budget_without_timing_anything(demo, cache, clock):
    (settings, solved), planner = p4_solve(demo)
    assert clock.calls > 0 and len(list(cache.glob("latency-*.json"))) == 1
    fitted = layer_times.table_for(planner, planner.model, INPUT)
    assert fitted.anchor is not None and fitted.cached is None     # measured here, fitted to a plan timed whole
    calls = clock.calls
    (again, solved_again), planner = p4_solve(demo)
    assert clock.calls == calls                                    # nothing timed: layers, model and fit read back
    assert again == settings and solved_again.value == solved.value and solved_again.achieved == solved.achieved
    assert solved.cached is None and solved_again.cached is not None
    table = layer_times.table_for(planner, planner.model, INPUT)
    assert table.cached is not None and table.weight == fitted.weight and table.anchor == fitted.anchor
    assert table.model_ms() == fitted.model_ms() and table._points == fitted._points


def test_a_plan_far_from_the_kept_fit_is_still_timed_whole(demo, cache, clock):
    p4_solve(demo, 0.7)
    calls = clock.calls
    p4_solve(demo, 0.4)                  # far from the fitted plan: fitted again, as in one session
    assert clock.calls > calls


def test_layer_points_serve_another_model_but_its_own_time_is_measured(demo, cache, clock):
    p4_solve(demo)
    planner = Planner(demo.model, demo.arch, INPUT)
    pruned = apply(Opened(demo, None, INPUT), planner.plan(PruneSection(strategy="P4", percent=0.3))).model
    kept = layer_times.LatencyTable(demo.model, INPUT)
    other = layer_times.LatencyTable(pruned, INPUT)
    assert other._model is None and other.anchor is None and other.weight == {}   # another structure
    assert any(kept._points.values()) and other._points == kept._points              # the same machine's layers
    calls = clock.calls
    other.model_ms()
    assert clock.calls > calls


@pytest.mark.parametrize("change", ["batch", "threads", "off", "old", "undated", "broken"])
def test_times_from_another_context_or_a_bad_file_are_measured_afresh(demo, cache, clock, monkeypatch, change):
    p4_solve(demo)
    calls = clock.calls
    batch = 1
    if change == "batch":
        batch = 8
    elif change == "threads":
        torch.set_num_threads(2)          # conftest's fixture restores one thread
    elif change == "off":
        monkeypatch.setenv("WORKBENCH_TIMING_CACHE", "off")
    else:
        (path,) = cache.glob("latency-*.json")
        doc = json.loads(path.read_text())
        if change in ("old", "undated"):
            created = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=timing_cache.MAX_AGE_DAYS + 1)
            doc["created"] = created.isoformat() if change == "old" else "2026-12-01T10:00:00"  # no time zone
            path.write_text(json.dumps(doc))
        else:
            path.write_text(json.dumps({**doc, "points": {"0": {"not a point": 1.0}}}))
    (_, solved), planner = p4_solve(demo, batch=batch)
    assert clock.calls > calls and layer_times.table_for(planner, planner.model, INPUT).cached is None
    assert abs(solved.achieved - 0.7) < 0.03


def test_a_folder_that_cannot_be_written_leaves_timing_working(demo, tmp_path, clock, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("WORKBENCH_TIMING_CACHE", str(blocker / "cache"))   # under a file: never a folder
    (_, solved), _ = p4_solve(demo)
    assert abs(solved.achieved - 0.7) < 0.03


def test_decomposition_budgets_keep_their_points_too(demo, cache, clock):
    settings, solved = solve_decompose(Decomposer(demo.model, demo.arch, INPUT), DecomposeSection(),
                                       TargetSection(latency=0.8))
    calls = clock.calls
    again = solve_decompose(Decomposer(demo.model, demo.arch, INPUT), DecomposeSection(), TargetSection(latency=0.8))
    assert again[0] == settings and again[1].achieved == solved.achieved and clock.calls == calls


def test_a_point_key_reads_back_every_kind_of_layer():
    for spec in (layer_times.Spec("conv", (8, 8), (3, 3), (1, 1), "same", (1, 1)),
                 layer_times.Spec("depthwise", (16, 16), (3, 3), (2, 2), (1, 1), (1, 1)),
                 layer_times.Spec("linear", ())):
        assert layer_times._point(layer_times._point_key((spec, 3, 5))) == (spec, 3, 5)


def test_a_replay_after_another_solves_on_the_cached_times_and_says_so(tmp_path, cache, clock):
    session = tmp_path / "s.toml"
    session.write_text((SESSIONS / "demo-p4.toml").read_text() + "\n[measure]\n\n[target]\nlatency = 0.8\n")
    reports = []
    for run in ("first", "second"):
        replay(session, tmp_path / run)
        reports.append(json.loads((tmp_path / run / "report.json").read_text())["target"])
        if run == "first":
            calls = clock.calls
    assert clock.calls == calls and reports[0]["value"] == reports[1]["value"]
    assert reports[0]["cached"] is None and reports[1]["cached"] is not None
    assert "on cached times measured since" in (tmp_path / "second" / "report.md").read_text()
    assert "on cached times" not in (tmp_path / "first" / "report.md").read_text()
    solved = Solved(**{k: v for k, v in reports[1].items() if k != "measured"})
    assert target_field.solved_text(solved, ("cpu", 1)).endswith("(cpu b1, cached)")


def test_a_target_solved_before_is_the_same_plan_in_the_next_session(demo, cache, monkeypatch):
    """Timed whole, a pruned model runs at the square root of the fraction the clock gives its layers,
    so with one fit the first session ends on a table not fitted to the plan it solved, where a new
    session would fit again and land elsewhere: the solve kept for the same settings (its solved
    knob aside, as the TUI saves it) and target gives the first session's plan without timing."""
    def sqrt_whole(models, input_shape, batch_sizes=(1,), device="cpu", **kw):
        out = Clock()(models, input_shape, batch_sizes, device)
        if "pruned" in models:
            out["pruned"] = [Latency(o.median_ms * (p.median_ms / o.median_ms) ** 0.5, o.min_ms, 1, o.batch, o.device)
                             for o, p in zip(out["original"], out["pruned"])]
        calls.append(models)
        return out
    calls = []
    monkeypatch.setattr(layer_times, "compare_latency", sqrt_whole)
    monkeypatch.setattr(budget, "REFITS", 1)
    (first, solved), planner = p4_solve(demo, 0.5)
    table = layer_times.table_for(planner, planner.model, INPUT)
    assert planner.plan(table.anchor[0]).keep() != planner.plan(first).keep()      # fitted to another plan
    calls.clear()
    planner = Planner(demo.model, demo.arch, INPUT)
    again, solved_again = solve_prune(planner, first, TargetSection(latency=0.5))   # the TUI's saved settings
    assert again == first and solved_again.achieved == solved.achieved and calls == []
    retimed = layer_times.LatencyTable(demo.model, INPUT)
    retimed.solves.clear()   # without the kept solve, the fit moves the plan
    planner = Planner(demo.model, demo.arch, INPUT)
    planner._latency_table = retimed
    assert solve_prune(planner, first, TargetSection(latency=0.5))[0] != first and calls


def test_other_weights_of_the_same_structure_are_solved_afresh(demo, cache, clock):
    (first, _), planner = p4_solve(demo)
    other = copy.deepcopy(demo)
    with torch.no_grad():
        other.model.get_submodule("layer1.0.conv1").weight.mul_(-3.0)
    planner = Planner(other.model, other.arch, INPUT)
    solve_prune(planner, PruneSection(strategy="P4"), TargetSection(latency=0.7))
    assert len(layer_times.table_for(planner, other.model, INPUT).solves) == 2   # its own solve beside the first
