"""Per-script P1-P3 constants (METHOD.md's table): the reference rows, the P2/P3 smoothing of the
ResNet-56 and ResNet-110 scripts, and the planner's defaults from the model and data set, each
against the reference formulas written out here with scipy/numpy."""

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
from core.prune.plan import Planner
from core.prune.strategies import (
    REFERENCE_ROWS,
    RESNET56_SMOOTHING,
    RESNET110_SMOOTHING,
    Smoothing,
    default_coef,
    default_smoothing,
    layer_t,
    reference_row,
)
from core.session import PruneSection, parse_session
from core.stats import layer_stats

CIFAR = (3, 32, 32)
# METHOD.md: script -> coef, P1 (Tmin, span), P2 (Tmin, span), P3 (Tmin, span)
METHOD_TABLE = {
    ("resnet56", "cifar10"): (3.7, (0.905, 0.095), (0.01, 0.72), (0.03, 0.46)),
    ("resnet110", "cifar10"): (3.159, (0.875, 0.121), (0.0, 0.69), (0.02, 0.5)),
    ("mobilenet_v1_cifar", "cifar10"): (2.52, (0.55, 0.45), None, None),
    ("mobilenet_v2_cifar", "cifar10"): (2.4, (0.3, 0.7), None, None),
    ("resnet56", "cifar100"): (8.7, (0.75, 0.2), None, None),
    ("resnet110", "cifar100"): (3.159, (0.8, 0.2), None, None),
    ("mobilenet_v1_cifar", "cifar100"): (4.09, (0.25, 0.75), None, None),
    ("mobilenet_v2_cifar", "cifar100"): (2.2, (0.08, 0.92), None, None),
}


def test_rows_are_methods_table():
    assert set(REFERENCE_ROWS) == set(METHOD_TABLE)
    for key, (coef, *ranges) in METHOD_TABLE.items():
        row = REFERENCE_ROWS[key]
        assert row.coef == coef and reference_row(*key) is row and default_coef(*key) == coef
        expected = {s: (tmin, tmin + span) for s, r in zip(("P1", "P2", "P3"), ranges) if r for tmin, span in [r]}
        assert row.t_range == pytest.approx(expected)
    assert reference_row("resnet56", None) is None and reference_row("resnet56", "digits") is None
    assert default_coef("resnet56", "cifar100") == 8.7 and default_coef("mobilenet_v2_cifar", "cifar100") == 2.2
    assert default_coef("resnet56", "fashion-mnist") == 3.7  # no row: the family's CIFAR-10 row
    assert RESNET110_SMOOTHING == Smoothing(p2_divisor=4.67, p2_factor=1.0, p3_scale=1e15, p3_divisor=25.0)
    assert RESNET56_SMOOTHING == Smoothing(4.2, 2.0, 1e13, 21.0)
    assert default_smoothing("resnet110") == RESNET110_SMOOTHING
    assert default_smoothing("resnet56") == default_smoothing("mobilenet_v2_cifar") == RESNET56_SMOOTHING


def reference_t(w: torch.Tensor, script: str) -> dict[str, float]:
    """The scripts' layer T values written out: ResNet-56 (4.2 / 1e13, 21) or ResNet-110 (4.67 / 1e15, 25)."""
    a = w.detach().numpy().astype(np.float64).ravel()
    jb = scipy.stats.jarque_bera(a).statistic
    k34 = scipy.stats.kstat(a, 3) * scipy.stats.kstat(a, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapiro = scipy.stats.shapiro(a).statistic
    if script == "resnet110":
        return {"P1": shapiro, "P2": 1 - np.log10(jb) / 4.67, "P3": np.log10(1e15 * np.abs(k34)) / 25}
    return {"P1": shapiro, "P2": 1 - np.log10(jb) / 4.2, "P3": np.log10(1e13 * np.abs(k34)) / 21}


@pytest.mark.parametrize("script", ["resnet56", "resnet110"])
def test_layer_t_is_the_scripts_formula(script):
    torch.manual_seed(0)
    w = torch.randn(16, 16, 3, 3) * 0.1 + 0.02 * torch.randn(16, 16, 3, 3) ** 3
    stats = layer_stats("x", w)
    ours = {s: layer_t(s, stats.shapiro_w, stats.jb, stats.k34, default_smoothing(script)) for s in ("P1", "P2", "P3")}
    assert ours == pytest.approx(reference_t(w, script), rel=1e-9)
    if script == "resnet56":  # the statistics views' T values are the ResNet-56 script's
        assert (ours["P2"], ours["P3"]) == pytest.approx((stats.t_p2, stats.t_p3), rel=1e-12)
    assert math.isnan(layer_t("P2", 0.5, 0.0, 1.0, RESNET56_SMOOTHING))
    assert math.isnan(layer_t("P3", 0.5, 1.0, 0.0, RESNET110_SMOOTHING))


def ref_keep(out: int, x: float, tmin: float, span: float, coef: float) -> int:
    r = np.ceil(10 * (x - tmin) / (coef * span)) / 10
    return max(int(out * (1 - min(max(r, 0.0), 1.0))), 1)


@pytest.fixture(scope="module")
def resnet110():
    torch.manual_seed(0)
    arch = Arch("resnet110", 10)
    model = build(arch).eval()
    with torch.no_grad():  # heavier tails than the init, so that layers differ in normality
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.add_(m.weight.pow(3) * 20)
    return model, arch, Planner(model, arch, CIFAR, dataset="cifar10")


@pytest.mark.parametrize("strategy, tmin, span", [("P1", 0.875, 0.121), ("P2", 0.0, 0.69), ("P3", 0.02, 0.5)])
def test_resnet110_cifar10_uses_its_scripts_row(resnet110, strategy, tmin, span):
    """P2 enters eq. 9 as T itself (no factor 2, no offset), P3 with 1e15, /25, 0.02, 0.5."""
    model, _, planner = resnet110
    plan = planner.plan(PruneSection(strategy=strategy))
    assert plan.coef == 3.159 and plan.t_range == pytest.approx((tmin, tmin + span))
    modules = dict(model.named_modules())
    expected = [ref_keep(modules[l.name].out_channels, reference_t(modules[l.name].weight, "resnet110")[strategy],
                         tmin, span, 3.159) for l in plan.layers]
    assert [l.keep for l in plan.layers] == expected and len(expected) == 54
    assert [l.keep for l in plan.layers] != [l.channels for l in plan.layers]  # something is pruned


@pytest.mark.seed
@pytest.mark.parametrize("strategy, tmin, span, factor", [
    ("P1", 0.905, 0.095, 1), ("P2", 0.01, 0.72, 2), ("P3", 0.03, 0.46, 1)])
def test_resnet56_cifar10_row_on_a_seed_checkpoint(seeds, strategy, tmin, span, factor):
    """res56_norm (the normality script's output) re-planned with the ResNet-56 CIFAR-10 row."""
    loaded = load_model(checkpoint=seeds / "res56_norm.pth.tar")
    plan = Planner(loaded.model, loaded.arch, CIFAR, dataset="cifar10").plan(PruneSection(strategy=strategy))
    modules = dict(loaded.model.named_modules())
    expected = [ref_keep(modules[l.name].out_channels, factor * reference_t(modules[l.name].weight, "resnet56")[strategy],
                         tmin, span, 3.7) for l in plan.layers]
    assert plan.coef == 3.7 and [l.keep for l in plan.layers] == expected


def test_unknown_data_set_keeps_the_network_range(resnet110):
    model, arch, _ = resnet110
    plain = Planner(model, arch, CIFAR)
    plan = plain.plan(PruneSection(strategy="P2"))
    ts = [layer_t("P2", s.shapiro_w, s.jb, s.k34, RESNET110_SMOOTHING) for s in plain.stats.layers]
    assert plan.t_range == pytest.approx((min(ts), max(ts))) and plan.coef == 3.159
    assert plan.smoothing == RESNET110_SMOOTHING


def test_session_keys_override_the_row(resnet110):
    model, _, planner = resnet110
    s = parse_session('version = 1\n[model]\nname = "resnet110"\n[prune]\nstrategy = "P2"\ntmin = 0.01\n'
                      'tmax = 0.73\ncoef = 3.7\np2_divisor = 4.2\np2_factor = 2.0\n').prune
    plan = planner.plan(s)
    modules = dict(model.named_modules())
    expected = [ref_keep(modules[l.name].out_channels, 2 * reference_t(modules[l.name].weight, "resnet56")["P2"],
                         0.01, 0.72, 3.7) for l in plan.layers]
    assert [l.keep for l in plan.layers] == expected
    assert plan.smoothing == Smoothing(4.2, 2.0, 1e15, 25.0)  # unset P3 keys stay the family's
    with pytest.raises(WorkbenchError, match="prune.p3_scale"):
        parse_session('version = 1\n[model]\nname = "resnet110"\n[prune]\np3_scale = 0\n')
