"""The compression chain (core.chain): prune, then decompose the pruned model, each step planned
once; what a session names is checked on the structure alone before a baseline is trained."""

from __future__ import annotations

import json

import pytest
import torch

from core.chain import check, check_pivots, compress
from core.decompose.plan import Decomposer
from core.errors import WorkbenchError
from core.models.checkpoint import load_model
from core.overview import Opened
from core.pipeline import replay
from core.prune.plan import Planner
from core.session import parse_session

DEMO = 'version = 1\n[model]\nname = "demo"\n'
A3 = '[prune]\nstrategy = "P4"\npercent = 0.3\n[decompose]\nmethod = "tucker2"\nx = 2.0\n'


def demo() -> Opened:
    return Opened(load_model("demo"), None, (1, 8, 8))


def counting(monkeypatch) -> dict:
    """Count Planner.plan and Decomposer.plan calls (the planning of each step)."""
    calls = {"prune": 0, "decompose": 0}
    for cls, key in ((Planner, "prune"), (Decomposer, "decompose")):
        original = cls.plan

        def plan(self, *args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(cls, "plan", plan)
    return calls


def test_a3_decomposes_the_pruned_model_planning_each_step_once(monkeypatch):
    calls = counting(monkeypatch)
    opened = demo()
    chain = compress(parse_session(DEMO + A3), opened)
    assert calls == {"prune": 1, "decompose": 1}
    pruned, decomposed = chain.steps
    assert (pruned.name, decomposed.name) == ("pruned", "decomposed")
    assert decomposed.plan.params[0] == pruned.plan.params[1]  # planned on the pruned model
    assert chain.compressed is decomposed.opened and set(chain.models) == {"pruned", "decomposed"}
    x = torch.randn(2, 1, 8, 8)
    assert decomposed.opened.model.eval()(x).shape == (2, 10)
    assert opened.model is chain.opened.model  # the network as opened is left as it was


def test_a2_decomposes_the_opened_model():
    opened = demo()
    chain = compress(parse_session(DEMO + '[decompose]\nmethod = "tucker2"\n'), opened)
    assert [step.name for step in chain.steps] == ["decomposed"]
    assert chain.steps[0].plan.params[0] == sum(p.numel() for p in opened.model.parameters())


def test_a_replay_that_trains_its_baseline_plans_the_compression_once(tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    (tmp_path / "s.toml").write_text(
        'version = 1\n[model]\nname = "resnet20"\nin_channels = 1\n[data]\nspec = "demo"\n'
        '[train]\nmode = "ce"\nepochs = 1\nmax_steps = 1\n' + A3)
    replay(tmp_path / "s.toml", tmp_path / "run", latency=False)
    assert calls == {"prune": 1, "decompose": 1}
    steps = json.loads((tmp_path / "run" / "report.json").read_text())["steps"]
    assert [s["name"] for s in steps] == ["baseline", "pruned", "decomposed"]


@pytest.mark.parametrize("body, words", [
    ('[prune]\nstrategy = "manual"\n[prune.layers."layer9.conv1"]\nratio = 0.5\n', "prune.layers: 'layer9.conv1'"),
    ('[prune]\nstrategy = "manual"\n[prune.layers."layer1.0.conv1"]\nkeep = 99\n',
     "prune.layers.layer1.0.conv1.keep: 99 is more than its 16 channels"),
    ('[prune]\nstrategy = "P5"\nstage_ratios = [0.5]\nstage_bounds = []\nskip = [99]\n', "prune.skip: [99]"),
    ('[decompose]\nlayers = ["layer9.conv1"]\n', "decompose.layers: 'layer9.conv1'"),
    ('[decompose]\n[decompose.ranks."layer1.0.conv1"]\nr_out = 40\nr_in = 4\n',
     "decompose.ranks.layer1.0.conv1.r_out: 40 is more than"),
    ('[data]\nspec = "demo"\n[prune]\nstrategy = "P4"\n[[finetune]]\nmode = "aux"\nn_losses = 1\npivots = [99]\n',
     "finetune.0: pivots [99]"),
])
def test_check_finds_what_does_not_fit_the_structure_without_planning(monkeypatch, body, words):
    calls = counting(monkeypatch)
    with pytest.raises(WorkbenchError, match="^" + words.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        check(parse_session(DEMO + body), demo())
    assert calls == {"prune": 0, "decompose": 0}


def test_pivot_modules_that_decomposition_creates_are_checked_on_the_decomposed_model():
    session = parse_session(DEMO + '[data]\nspec = "demo"\n[decompose]\nlayers = ["layer1.0.conv1"]\n'
                            '[decompose.ranks."layer1.0.conv1"]\nr_out = 4\nr_in = 4\n'
                            '[[finetune]]\nmode = "aux"\nn_losses = 1\npivot_modules = ["layer1.0.conv1.conv1-1"]\n')
    opened = demo()
    check(session, opened)  # not there before decomposing: left for later
    with pytest.raises(WorkbenchError, match=r"^finetune\.0: pivot_modules: .* no module 'layer1\.0\.conv1\.conv1-1'"):
        check_pivots(session, opened)
    check_pivots(session, compress(session, opened).compressed)
