"""core.prune.strategies against the reference formulas computed here with scipy/numpy, and
P5 against the widths the reference script stored in res56.pth.tar."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from core.errors import WorkbenchError
from core.models.checkpoint import load_model
from core.models.zoo import Arch, build
from core.prune.scores import filter_scores
from core.prune.strategies import (
    DEFAULT_COEF,
    P5_VARIANTS,
    STRATEGIES,
    StagePlan,
    default_coef,
    global_threshold_keep,
    keep_count,
    p5_plan,
    prune_ratio,
    round_keep,
    stage_ratios,
    strategy_t,
)
from core.stats import network_stats

SEED_FILES = ("res56.pth.tar", "res56_global.pth.tar", "res56_norm.pth.tar")
COEF = 3.7
# the reference scripts' constants for ResNet-56: (Tmin, Tmax - Tmin) as they are written there
REFERENCE_RANGE = {"P1": (0.905, 0.095), "P2": (0.01, 0.72), "P3": (0.03, 0.46)}
RES56_P5_C = [3, 3, 3, 3, 3, 3, 3, 16, 16, 32, 16, 16, 16, 16, 16, 16, 32, 16, 64, 44, 44, 44, 44, 44, 44, 44, 64]


def convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def scipy_t(w: torch.Tensor) -> dict[str, float]:
    """The reference scripts' layer statistics: Shapiro W, the JB and k34 transforms."""
    a = w.detach().numpy().astype(np.float64).ravel()
    jb = scipy.stats.jarque_bera(a).statistic
    k34 = scipy.stats.kstat(a, 4) * scipy.stats.kstat(a, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the p-value's accuracy above N = 5000; W is exact
        w = scipy.stats.shapiro(a).statistic
    return {"P1": w, "P2": 1 - np.log10(jb) / 4.2,
            "P3": np.log10(np.power(10, 13) * np.abs(k34)) / (2 * 10.5)}


def reference_keep(out: int, x: float, tmin: float, span: float) -> int:
    """num_keep as the reference computes it (x = W, 2T or T), clamped to [0, 1] and >= 1 filter."""
    r = np.ceil(10 * (x - tmin) / (COEF * span)) / 10
    return max(int(out * (1 - min(max(r, 0.0), 1.0))), 1)


@pytest.fixture(scope="module", params=SEED_FILES)
def seed_net(request, seeds):
    """A seed checkpoint's conv weights with scipy T values and core's network statistics."""
    model = load_model(checkpoint=seeds / request.param).model
    layers = convs(model)
    return {"layers": layers, "t": [scipy_t(m.weight) for _, m in layers], "core": network_stats(model)}


@pytest.mark.seed
@pytest.mark.parametrize("strategy", ["P1", "P2", "P3"])
@pytest.mark.parametrize("t_range", ["reference", "network"])
def test_p1_p3_keep_counts_match_reference_formula(seed_net, strategy, t_range):
    ts = [t[strategy] for t in seed_net["t"]]
    if t_range == "reference":
        tmin, span = REFERENCE_RANGE[strategy]
        ours_range = (tmin, tmin + span)
    else:
        tmin, span = min(ts), max(ts) - min(ts)
        ours_range = seed_net["core"].t_range[strategy]
        np.testing.assert_allclose(ours_range, (min(ts), max(ts)), rtol=1e-9)
    ours, ref = [], []
    for i, ((name, conv), core_layer, t) in enumerate(zip(seed_net["layers"], seed_net["core"].layers, ts), 1):
        if i % 2:
            continue
        assert name.endswith(".conv1") and core_layer.name == name
        out = conv.out_channels
        core_t = getattr(core_layer, f"t_{strategy.lower()}")
        ours.append(keep_count(out, prune_ratio(strategy_t(strategy, core_t), *ours_range, COEF)))
        ref.append(reference_keep(out, 2 * t if strategy == "P2" else t, tmin, span))
    assert len(ours) == 27 and ours == ref
    widths = [conv.out_channels for i, (_, conv) in enumerate(seed_net["layers"], 1) if i % 2 == 0]
    assert ours != widths  # something is pruned


@pytest.mark.seed
def test_p4_global_threshold_matches_numpy(seeds):
    model = load_model(checkpoint=seeds / "res56_global.pth.tar").model
    prunable = [(n, m.weight.detach()) for i, (n, m) in enumerate(convs(model), 1) if i % 2 == 0]
    ours = global_threshold_keep({n: filter_scores(w, "k34") for n, w in prunable}, 0.32)
    per_layer = [np.array([scipy.stats.kstat(f, 3) * scipy.stats.kstat(f, 4)
                           for f in w.numpy().astype(np.float64).reshape(w.shape[0], -1)]) for _, w in prunable]
    everything = np.sort(np.concatenate(per_layer))
    threshold = everything[int(everything.size * 0.32)]
    ref = {n: max(int((s > threshold).sum()), 1) for (n, _), s in zip(prunable, per_layer)}
    assert list(ours) == [n for n, _ in prunable] and ours == ref
    above = sum(int((s > threshold).sum()) for s in per_layer)
    assert above == everything.size - int(everything.size * 0.32) - 1  # no ties in real data


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_p4_hand_worked():
    scores = {"a": f64(1, 2, 3, 4), "b": f64(0.5, 5)}
    assert global_threshold_keep(scores, 0.5) == {"a": 1, "b": 1}  # sorted[3] = 3
    assert global_threshold_keep(scores, 0.0) == {"a": 4, "b": 1}  # sorted[0] = 0.5
    assert global_threshold_keep({"a": f64(1, 2), "b": f64(10, 11, 12, 13)}, 0.5) == {"a": 1, "b": 2}
    assert global_threshold_keep({"a": torch.tensor([1.0, 2.0, 3.0])}, 0.34) == {"a": 1}
    for percent in (1.0, -0.1, float("nan")):
        with pytest.raises(WorkbenchError, match=r"percent must be in \[0, 1\)"):
            global_threshold_keep(scores, percent)
    with pytest.raises(WorkbenchError, match="at least one layer"):
        global_threshold_keep({}, 0.3)


def resnet_layer_ids(depth: int) -> dict[str, int]:
    """Prunable convs (block conv1, the even ids) of an unpruned CIFAR ResNet -> conv id from 1."""
    ids = {n: i for i, (n, _) in enumerate(convs(build(Arch(f"resnet{depth}", 10))), 1)}
    prunable = {n: i for n, i in ids.items() if i % 2 == 0}
    assert ids["conv1"] == 1 and all(n.endswith(".conv1") for n in prunable)
    return prunable


def p5_cfg(depth: int, variant: str) -> list[int]:
    model = build(Arch(f"resnet{depth}", 10))
    ratios = stage_ratios(resnet_layer_ids(depth), p5_plan(f"resnet{depth}", variant))
    modules = dict(model.named_modules())
    return [keep_count(modules[n].out_channels, r) for n, r in ratios.items()]


@pytest.mark.seed
def test_p5_variant_c_reproduces_the_reference_cfg(seeds):
    stored = torch.load(seeds / "res56.pth.tar", map_location="cpu", weights_only=True)["cfg"]
    assert stored == RES56_P5_C
    assert p5_cfg(56, "C") == stored


def test_p5_other_variants():
    assert p5_cfg(56, "A") == [14] * 7 + [16, 14] + [32] + [28] * 8 + [64] + [57] * 7 + [64]
    assert p5_cfg(56, "B") == [6] * 7 + [16, 16] + [32] + [22] * 6 + [32, 22] + [64] + [57] * 7 + [64]
    assert p5_cfg(110, "A") == [8] * 17 + [16] + [32] * 18 + [64] * 18
    assert p5_cfg(110, "B") == [8] * 17 + [16] + [32] + [19] * 17 + [64] + [44] * 17
    for depth, variants in (("56", "ABC"), ("110", "AB")):
        ids = resnet_layer_ids(int(depth))
        for v in variants:
            plan = p5_plan(f"resnet{depth}", v)
            ratios = stage_ratios(ids, plan)
            assert all(ratios[n] == 0.0 for n, i in ids.items() if i in plan.skip)
            for n, i in ids.items():
                if i not in plan.skip:
                    stage = 0 if i <= plan.bounds[0] else 1 if i <= plan.bounds[1] else 2
                    assert ratios[n] == plan.ratios[stage]
    assert stage_ratios({"x": 18, "y": 19, "z": 36, "w": 37}, StagePlan([18, 36], [0.1, 0.2, 0.3], [])) == {
        "x": 0.1, "y": 0.2, "z": 0.2, "w": 0.3}


def test_p5_plans_and_errors():
    assert set(P5_VARIANTS) == {"resnet56", "resnet110"}
    c = p5_plan("resnet56", "C")
    assert (c.bounds, c.ratios, c.skip) == ([18, 36], [0.8, 0.5, 0.3], [16, 18, 20, 34, 38, 54])
    c.skip.append(2)
    assert p5_plan("resnet56", "C").skip == [16, 18, 20, 34, 38, 54]  # a copy
    with pytest.raises(WorkbenchError, match="use one of A, B$"):
        p5_plan("resnet110", "C")
    with pytest.raises(WorkbenchError, match="no predefined P5 variants for mobilenet_v2_cifar"):
        p5_plan("mobilenet_v2_cifar", "A")
    with pytest.raises(WorkbenchError, match="one ratio per stage"):
        StagePlan([18, 36], [0.1, 0.2], [])
    with pytest.raises(WorkbenchError, match="must increase"):
        StagePlan([36, 18], [0.1, 0.2, 0.3], [])
    with pytest.raises(WorkbenchError, match="between 0 and 1"):
        StagePlan([18], [0.1, 1.2], [])


def test_keep_count_clamps_and_rounds():
    assert keep_count(16, 1.0) == 1
    assert keep_count(16, 0.0) == 16
    assert keep_count(16, 0.8) == int(16 * (1 - 0.8)) == 3
    assert keep_count(64, 0.3) == 44
    for bad in (-0.1, 1.1, float("nan")):
        with pytest.raises(WorkbenchError, match="between 0 and 1"):
            keep_count(16, bad)
    assert keep_count(64, 0.3, multiple_of=8) == 48
    assert keep_count(16, 0.8, multiple_of=8) == 8
    assert keep_count(64, 0.0, multiple_of=8) == 64
    assert keep_count(20, 0.1, multiple_of=8) == 20  # 18 -> 24, capped at the channels
    assert keep_count(5, 0.5, multiple_of=8) == 5
    assert keep_count(64, 1.0, multiple_of=8) == 8
    assert round_keep(0, 16) == 1 and round_keep(20, 16) == 16 and round_keep(9, 64, 8) == 16
    with pytest.raises(WorkbenchError, match="multiple_of >= 1"):
        keep_count(16, 0.5, multiple_of=0)


def test_prune_ratio_hand_worked_and_bad_input():
    assert prune_ratio(0.95, 0.905, 1.0, 3.7) == 0.2  # 10 * 0.045 / (3.7 * 0.095) = 1.28 -> 2
    assert prune_ratio(0.905, 0.905, 1.0, 3.7) == 0.0
    low = prune_ratio(0.9, 0.905, 1.0, 3.7)
    assert low == 0.0 and math.copysign(1, low) == 1  # never negative, not even -0.0
    assert prune_ratio(5.0, 0.0, 1.0, 1.0) == 1.0
    assert prune_ratio(float("nan"), 0.905, 1.0, 3.7) == 0.0
    for tmin, tmax in ((1.0, 1.0), (1.0, 0.9), (float("nan"), 1.0), (0.0, float("inf"))):
        with pytest.raises(WorkbenchError, match="Tmax must be above Tmin"):
            prune_ratio(0.95, tmin, tmax, 3.7)
    with pytest.raises(WorkbenchError, match="coef must be a positive number"):
        prune_ratio(0.95, 0.905, 1.0, 0.0)


def test_strategy_t_and_defaults():
    assert strategy_t("P1", 0.93) == 0.93 and strategy_t("P3", 0.2) == 0.2 and strategy_t("P2", 0.3) == 0.6
    for s in ("P4", "P5", "P9"):
        with pytest.raises(WorkbenchError, match="only P1, P2, P3"):
            strategy_t(s, 0.5)
    assert STRATEGIES == ("P1", "P2", "P3", "P4", "P5")
    assert DEFAULT_COEF == {"resnet": 3.7, "mobilenet_v1_cifar": 2.52, "mobilenet_v2_cifar": 2.4}
    # METHOD.md (corrected): the ResNet-110 scripts use coef 3.159 (CIFAR-10 and -100), not 3.7
    assert default_coef("resnet110") == 3.159 and default_coef("vgg16") == 3.7
    assert default_coef("mobilenet_v1_cifar") == 2.52 and default_coef("mobilenet_v2_cifar") == 2.4
