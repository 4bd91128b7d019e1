"""core.stats against scipy, hand-worked k-statistics, and degenerate inputs."""

from __future__ import annotations

import json
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats
import torch

from core.models.cifar_resnet import CifarResNet
from core.stats import FILTER_STATS, conv_layers, filter_stats, layer_stats, network_stats

RNG = np.random.default_rng(1234)


def scipy_filter_stats(w: np.ndarray) -> dict[str, np.ndarray]:
    """The reference: one scipy call per filter and statistic."""
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    out = {k: [] for k in FILTER_STATS}
    for x in rows:
        out["mean"].append(np.mean(x))
        out["std"].append(np.std(x))
        out["skew"].append(scipy.stats.skew(x))
        out["kurt"].append(scipy.stats.kurtosis(x))
        out["k3"].append(scipy.stats.kstat(x, 3))
        out["k4"].append(scipy.stats.kstat(x, 4))
        out["k34"].append(out["k3"][-1] * out["k4"][-1])
        out["l1"].append(np.abs(x).sum())
    return {k: np.array(v) for k, v in out.items()}


def non_gaussian(shape: tuple[int, ...]) -> np.ndarray:
    """Skewed, heavy-tailed float32 weights: gamma minus laplace, filter scales varying."""
    x = RNG.gamma(0.7, 0.05, shape) - RNG.laplace(0.01, 0.02, shape)
    return (x * RNG.uniform(0.5, 2.0, (shape[0],) + (1,) * (len(shape) - 1))).astype(np.float32)


@pytest.fixture(autouse=True)
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (5, 7, 1, 1), (16, 1, 3, 3), (3, 64, 5, 5)])
def test_filter_stats_match_scipy(shape):
    w = non_gaussian(shape)
    ours = filter_stats(torch.from_numpy(w))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's own warnings are not under test
        ref = scipy_filter_stats(w)
    assert tuple(ours) == FILTER_STATS
    for k in FILTER_STATS:
        assert ours[k].dtype == torch.float64 and ours[k].shape == (shape[0],)
        np.testing.assert_allclose(ours[k].numpy(), ref[k], rtol=1e-6, atol=0, err_msg=k)


def hand_kstats(xs: list[int]) -> tuple[Fraction, Fraction]:
    """k3, k4 from METHOD.md's central-moment formulas in exact arithmetic."""
    n = len(xs)
    mean = Fraction(sum(xs), n)
    m2, m3, m4 = (sum((x - mean) ** r for x in xs) / n for r in (2, 3, 4))
    k3 = n**2 * m3 / ((n - 1) * (n - 2))
    k4 = n**2 * ((n + 1) * m4 - 3 * (n - 1) * m2**2) / ((n - 1) * (n - 2) * (n - 3))
    return k3, k4


def test_kstats_hand_worked():
    xs = [1, 2, 3, 4, 10]
    k3, k4 = hand_kstats(xs)
    # deviations from the mean 4: -3, -2, -1, 0, 6 -> m2 = 10, m3 = 36, m4 = 1394/5
    # k3 = 25 * 36 / 12 = 75; k4 = 25 * (6 * 1394/5 - 12 * 100) / 24 = 985/2
    assert (k3, k4) == (Fraction(75), Fraction(985, 2))
    ours = filter_stats(torch.tensor([xs], dtype=torch.float64))
    assert ours["k3"].item() == pytest.approx(float(k3), rel=1e-12)
    assert ours["k4"].item() == pytest.approx(float(k4), rel=1e-12)
    assert ours["k34"].item() == pytest.approx(float(k3 * k4), rel=1e-12)
    assert ours["k3"].item() == pytest.approx(scipy.stats.kstat(xs, 3), rel=1e-12)
    assert ours["k4"].item() == pytest.approx(scipy.stats.kstat(xs, 4), rel=1e-12)


def test_layer_level_tests_and_t_values():
    w = non_gaussian((12, 6, 3, 3))
    s = layer_stats("conv", torch.from_numpy(w))
    x = w.astype(np.float64).ravel()
    sw = scipy.stats.shapiro(x)
    jb = scipy.stats.jarque_bera(x)
    assert s.shapiro_w == pytest.approx(sw.statistic, rel=1e-12)
    assert s.shapiro_p == pytest.approx(sw.pvalue, rel=1e-9)
    assert s.jb == pytest.approx(jb.statistic, rel=1e-9)
    assert s.jb_p == pytest.approx(jb.pvalue, rel=1e-6, abs=1e-300)
    k3, k4 = scipy.stats.kstat(x, 3), scipy.stats.kstat(x, 4)
    for name, ref in [("mean", np.mean(x)), ("std", np.std(x)), ("skew", scipy.stats.skew(x)),
                      ("kurt", scipy.stats.kurtosis(x)), ("k3", k3), ("k4", k4), ("k34", k3 * k4)]:
        assert getattr(s, name) == pytest.approx(ref, rel=1e-9), name
    assert s.t_p1 == pytest.approx(sw.statistic, rel=1e-12)
    assert s.t_p2 == pytest.approx(1 - math.log10(jb.statistic) / 4.2, rel=1e-9)
    assert s.t_p3 == pytest.approx(math.log10(1e13 * abs(k3 * k4)) / 21, rel=1e-9)
    assert (s.name, s.shape, s.n_filters, s.n_per_filter) == ("conv", (12, 6, 3, 3), 12, 54)
    assert s.notes == []


def test_histograms():
    w = non_gaussian((10, 3, 3, 3))
    w[0, 0, 0, 0] = np.nan
    s = layer_stats("c", torch.from_numpy(w), bins=25)
    finite = w[np.isfinite(w)].astype(np.float64)
    assert len(s.hist.counts) == 25 and len(s.hist.edges) == 26 and len(s.hist.normal) == 25
    assert sum(s.hist.counts) == finite.size
    assert sum(s.hist.normal) == pytest.approx(finite.size, rel=0.02)
    assert s.hist.edges[0] == pytest.approx(finite.min()) and s.hist.edges[-1] == pytest.approx(finite.max())
    cdf = scipy.stats.norm.cdf(s.hist.edges, loc=np.mean(finite), scale=np.std(finite))
    np.testing.assert_allclose(s.hist.normal, finite.size * np.diff(cdf), rtol=1e-9)
    assert sum(s.k34_hist.counts) == 9  # the NaN filter has no k34
    k34 = s.filters["k34"][1:].numpy()
    cdf = scipy.stats.norm.cdf(s.k34_hist.edges, loc=np.mean(k34), scale=np.std(k34))
    np.testing.assert_allclose(s.k34_hist.normal, 9 * np.diff(cdf), rtol=1e-9)


def test_too_few_values_per_filter():
    s = layer_stats("c", torch.from_numpy(non_gaussian((6, 3, 1, 1))))
    assert torch.isnan(s.filters["k4"]).all() and torch.isnan(s.filters["k34"]).all()
    assert torch.isfinite(s.filters["k3"]).all() and torch.isfinite(s.filters["skew"]).all()
    assert "k4 undefined: 3 weights per filter (needs >= 4)" in s.notes
    assert not any(n.startswith("k3 undefined") for n in s.notes)
    assert s.summary()["filter_k34_mean"] is None
    assert sum(s.k34_hist.counts) == 0
    s2 = layer_stats("c", torch.from_numpy(non_gaussian((6, 2, 1, 1))))
    assert torch.isnan(s2.filters["k3"]).all()
    assert "k3 undefined: 2 weights per filter (needs >= 3)" in s2.notes


def test_constant_filters():
    w = non_gaussian((5, 4, 3, 3))
    w[1] = 0.25
    w[3] = 0.0
    s = layer_stats("c", torch.from_numpy(w))
    f = s.filters
    for k in ("skew", "kurt"):
        assert torch.isnan(f[k][[1, 3]]).all() and torch.isfinite(f[k][[0, 2, 4]]).all()
    assert f["k3"][[1, 3]].tolist() == [0.0, 0.0] and f["k4"][[1, 3]].tolist() == [0.0, 0.0]
    assert f["std"][[1, 3]].tolist() == [0.0, 0.0]
    assert any(n.startswith("2 constant filters") for n in s.notes)
    assert math.isfinite(s.shapiro_w) and math.isfinite(s.t_p3)


def test_identical_layer_does_not_crash():
    s = layer_stats("c", torch.full((4, 2, 3, 3), 0.1))
    assert s.std == 0 and math.isnan(s.skew) and math.isnan(s.shapiro_w) and math.isnan(s.jb)
    assert math.isnan(s.t_p1) and math.isnan(s.t_p2) and math.isnan(s.t_p3)
    assert any("identical" in n for n in s.notes)
    assert sum(s.hist.counts) == 72 and sum(s.hist.normal) == pytest.approx(72)
    assert s.hist.edges[0] < 0.1 < s.hist.edges[-1]
    json.dumps(s.summary(), allow_nan=False)


def test_nan_and_inf_weights():
    w = non_gaussian((6, 4, 3, 3))
    w[0, 0, 0, :2] = np.nan
    w[2, 1, 1, 1] = np.inf
    w[2, 3, 2, 2] = -np.inf
    w[2, 0, 0, 0] = np.nan
    s = layer_stats("c", torch.from_numpy(w))
    for k in FILTER_STATS:
        assert torch.isnan(s.filters[k][[0, 2]]).all(), k
        assert torch.isfinite(s.filters[k][[1, 3, 4, 5]]).all(), k
    assert any(n.startswith("5 NaN/Inf weights in 2 filters") for n in s.notes)
    finite = w[np.isfinite(w)].astype(np.float64)
    assert s.shapiro_w == pytest.approx(scipy.stats.shapiro(finite).statistic, rel=1e-12)
    assert s.jb == pytest.approx(scipy.stats.jarque_bera(finite).statistic, rel=1e-9)
    assert sum(s.hist.counts) == finite.size
    summary = s.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["filter_k34_mean"] == pytest.approx(float(np.mean(s.filters["k34"][[1, 3, 4, 5]].numpy())))


def test_all_nan_layer():
    s = layer_stats("c", torch.full((3, 2, 1, 1), float("nan")))
    assert math.isnan(s.mean) and math.isnan(s.shapiro_w) and math.isnan(s.t_p2)
    assert sum(s.hist.counts) == 0 and sum(s.hist.normal) == 0
    json.dumps(s.summary(), allow_nan=False)


def test_large_layer_shapiro_note():
    w = torch.from_numpy(non_gaussian((64, 16, 3, 3)))
    s = layer_stats("big", w)
    assert any("Shapiro-Wilk p-value approximate" in n for n in s.notes)
    assert 0 < s.shapiro_w < 1


def test_summary_keys():
    s = layer_stats("c", torch.from_numpy(non_gaussian((4, 3, 3, 3))))
    d = s.summary()
    json.dumps(d, allow_nan=False)
    assert d["shape"] == [4, 3, 3, 3] and d["n_filters"] == 4
    for k in ("mean", "std", "skew", "kurt", "k3", "k4", "k34", "shapiro_w", "shapiro_p", "jb", "jb_p",
              "t_p1", "t_p2", "t_p3", "notes"):
        assert k in d
    for k in FILTER_STATS:
        assert d[f"filter_{k}_mean"] == pytest.approx(s.filters[k].mean().item())


def test_network_stats_cifar_resnet20():
    torch.manual_seed(0)
    model = CifarResNet(20)
    convs = conv_layers(model)
    assert len(convs) == 19 and convs[0][0] == "conv1" and convs[1][0] == "layer1.0.conv1"
    calls = []
    net = network_stats(model, progress=lambda i, total, name: calls.append((i, total, name)))
    assert [s.name for s in net.layers] == [n for n, _ in convs]
    assert calls == [(i + 1, 19, n) for i, (n, _) in enumerate(convs)]
    for key in ("P1", "P2", "P3"):
        ts = [getattr(s, f"t_{key.lower()}") for s in net.layers]
        assert net.t_range[key] == (min(ts), max(ts))
    assert net.layers[0].shape == (16, 3, 3, 3)
