"""Higher-order statistics of conv weights: per-filter scores, layer normality tests, T values.

Conventions follow scipy (METHOD.md "Filter scores"): moments are biased central moments
m_r = mean((x - mean)^r); `std` is the population std (ddof=0, numpy's default); `skew` and
`kurt` are scipy.stats.skew / scipy.stats.kurtosis (biased, Fisher excess); `k3`, `k4` are
scipy.stats.kstat's unbiased k-statistics. All filters of a layer are computed at once in
float64 torch. Degenerate inputs give NaN plus a human note, never an exception or warning.
scipy is imported only by the tests (Shapiro-Wilk, the JB p-value, the fitted normal), which
`network_stats(..., tests=False)` leaves for `with_tests`: a table shows before scipy loads.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

FILTER_STATS = ("mean", "std", "skew", "kurt", "k3", "k4", "k34", "l1")
LAYER_STATS = ("mean", "std", "skew", "kurt", "k3", "k4", "k34")
SHAPIRO_EXACT_N = 5000  # scipy.stats.shapiro's p-value is approximate above this many values
NAN = float("nan")


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every nn.Conv2d of `model` with its qualified name, in named_modules order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two (rows, n) matrices (a batched matmul, no temporary)."""
    return torch.einsum("ij,ij->i", a, b)


def central_moments(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Row means and biased central moments m2, m3, m4 of a (rows, n) float64 matrix."""
    n = x.shape[1]
    mean = x.mean(1)
    c = x - mean[:, None]
    c2 = c * c
    return mean, c2.sum(1) / n, _rowdot(c2, c) / n, _rowdot(c2, c2) / n


def is_flat(mean: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """Rows scipy treats as constant (skew/kurtosis NaN): m2 <= (eps * mean)^2."""
    return m2 <= (torch.finfo(torch.float64).eps * mean) ** 2


def skewness(m2: torch.Tensor, m3: torch.Tensor) -> torch.Tensor:
    """Fisher-Pearson skewness, biased (paper's `skew`, scipy.stats.skew): m3 / m2^1.5."""
    return m3 / m2**1.5


def excess_kurtosis(m2: torch.Tensor, m4: torch.Tensor) -> torch.Tensor:
    """Fisher excess kurtosis, biased (paper's `kur`, scipy.stats.kurtosis): m4 / m2^2 - 3."""
    return m4 / (m2 * m2) - 3.0


def kstat3(n: int, m3: torch.Tensor) -> torch.Tensor:
    """Unbiased 3rd k-statistic (paper's `k3`, scipy.stats.kstat(x, 3)): n^2 m3 / ((n-1)(n-2))."""
    return n * n * m3 / ((n - 1) * (n - 2))


def kstat4(n: int, m2: torch.Tensor, m4: torch.Tensor) -> torch.Tensor:
    """Unbiased 4th k-statistic (paper's `k4`, scipy.stats.kstat(x, 4)):
    n^2 ((n+1) m4 - 3 (n-1) m2^2) / ((n-1)(n-2)(n-3))."""
    return n * n * ((n + 1) * m4 - 3 * (n - 1) * m2 * m2) / ((n - 1) * (n - 2) * (n - 3))


def filter_stats(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """FILTER_STATS of every filter of `weight` (out, ...): float64 tensors of shape (out,).

    Each filter is its flattened in*kh*kw values. `std` is the population std (ddof=0).
    NaN where undefined: k3 with fewer than 3 values per filter, k4 and k34 with fewer than 4,
    skew/kurt of constant filters (whose k3/k4 are 0), every stat of a filter holding NaN/Inf.
    """
    return _row_stats(_rows(weight))[0]


def _rows(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out, ...) as a detached (out, n) float64 matrix."""
    return weight.detach().reshape(weight.shape[0], math.prod(weight.shape[1:])).to(torch.float64)


def _row_stats(x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """filter_stats of the rows of a (rows, n) float64 matrix, the mask of constant rows, and
    the mask of rows holding NaN/Inf (None when all is finite: a finite l1 proves it)."""
    n = x.shape[1]
    mean, m2, m3, m4 = central_moments(x)
    flat = is_flat(mean, m2)
    nan = torch.full_like(mean, NAN)
    stats = {
        "mean": mean,
        "std": m2.sqrt(),
        "skew": torch.where(flat, nan, skewness(m2, m3)),
        "kurt": torch.where(flat, nan, excess_kurtosis(m2, m4)),
        "k3": torch.where(flat, 0.0, kstat3(n, m3)) if n >= 3 else nan,
        "k4": torch.where(flat, 0.0, kstat4(n, m2, m4)) if n >= 4 else nan,
        "l1": x.abs().sum(1),
    }
    stats["k34"] = stats["k3"] * stats["k4"]
    bad = None if torch.isfinite(stats["l1"]).all() else ~torch.isfinite(x).all(1)
    if bad is not None and bad.any():
        stats = {k: torch.where(bad, nan, v) for k, v in stats.items()}
    else:
        bad = None  # all finite (an l1 may still overflow)
    return {k: stats[k] for k in FILTER_STATS}, flat, bad


def jarque_bera(n: int, skew: float, kurt: float) -> tuple[float, float]:
    """Jarque-Bera statistic and p-value (paper's P2 input, as scipy.stats.jarque_bera):
    jb = n/6 (skew^2 + kurt^2/4), p = chi2(2) survival of jb."""
    jb = jb_statistic(n, skew, kurt)
    return jb, _jb_p(jb)


def jb_statistic(n: int, skew: float, kurt: float) -> float:
    """The Jarque-Bera statistic alone (no scipy): n/6 (skew^2 + kurt^2/4)."""
    return n / 6.0 * (skew * skew + kurt * kurt / 4.0)


def _jb_p(jb: float) -> float:
    import scipy.stats

    return float(scipy.stats.chi2.sf(jb, 2))


def t_p1(shapiro_w: float) -> float:
    """Strategy P1 layer statistic T: the Shapiro-Wilk W itself."""
    return shapiro_w


def t_p2(jb: float) -> float:
    """Strategy P2 layer statistic T = 1 - log10(jb) / 4.2 (NaN where undefined)."""
    return 1.0 - math.log10(jb) / 4.2 if jb > 0 and math.isfinite(jb) else NAN


def t_p3(k3: float, k4: float) -> float:
    """Strategy P3 layer statistic T = log10(1e13 * |k3 k4|) / 21 (NaN where undefined)."""
    c = abs(k3 * k4)
    return math.log10(1e13 * c) / 21.0 if c > 0 and math.isfinite(c) else NAN


@dataclass
class Histogram:
    """Bin edges (bins+1), counts per bin, and the fitted N(mean, std)'s expected count per bin."""

    edges: list[float]
    counts: list[int]
    normal: list[float]


def _histogram(values: np.ndarray, bins: int, mean: float, std: float, fit: bool = True) -> Histogram:
    """Histogram of finite `values`; a range too narrow for `bins` distinct edges (e.g. all
    values equal) is widened to centre +- max(0.5, a few ulps per bin), as numpy does for zero.
    The fitted normal (`_normal`) is left empty without `fit`.
    """
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    fmax = float(np.finfo(np.float64).max)
    min_span = 4 * bins * float(np.spacing(max(abs(lo), abs(hi))))
    with np.errstate(all="ignore"):
        if hi - lo < min_span:
            centre, half = lo / 2 + hi / 2, max(0.5, min_span)
            lo, hi = max(centre - half, -fmax), min(centre + half, fmax)
        # explicit edges only where hi - lo overflows (values near the float64 limit)
        edges = bins if math.isfinite(hi - lo) else np.linspace(lo / 2, hi / 2, bins + 1) * 2
        counts, edges = np.histogram(values, bins=edges, range=(lo, hi))
    hist = Histogram(edges.tolist(), counts.tolist(), [])
    return _normal(hist, values.size, mean, std) if fit else hist


def _normal(hist: Histogram, n: int, mean: float, std: float) -> Histogram:
    """`hist` with the overlay of N(mean, std) fitted to its `n` values: n * (cdf(e[i+1]) -
    cdf(e[i])); for std == 0 the point mass, i.e. the counts themselves; with no values (or an
    overflowing std) all zeros."""
    import scipy.stats

    with np.errstate(all="ignore"):
        if 0 < std < math.inf:
            normal = n * np.diff(scipy.stats.norm.cdf(np.asarray(hist.edges), loc=mean, scale=std))
        elif std == 0 and n:
            normal = np.asarray(hist.counts, dtype=np.float64)
        else:
            normal = np.zeros(len(hist.counts))
    return Histogram(hist.edges, hist.counts, normal.tolist())


def _json(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class LayerStats:
    """Statistics of one conv layer: per-filter FILTER_STATS, layer-wide moments over all its
    finite weights, Shapiro-Wilk and Jarque-Bera tests, the P1-P3 T values, histograms of the
    finite weights and of the defined per-filter k34, and notes on degenerate cases.
    Undefined values (T values included) are NaN. Until `tested` (see `with_tests`), the
    Shapiro-Wilk W and p, the JB p-value and P1's T are NaN and the histograms have no normal."""

    name: str
    shape: tuple[int, ...]
    n_filters: int
    n_per_filter: int
    filters: dict[str, torch.Tensor]
    mean: float
    std: float
    skew: float
    kurt: float
    k3: float
    k4: float
    k34: float
    shapiro_w: float
    shapiro_p: float
    jb: float
    jb_p: float
    t_p1: float
    t_p2: float
    t_p3: float
    hist: Histogram
    k34_hist: Histogram
    notes: list[str]
    tested: bool = True

    def summary(self) -> dict:
        """JSON-ready dict: identity, layer stats, tests, T values, the mean over (defined)
        filters of each per-filter stat as `filter_<stat>_mean`, notes. NaN/Inf -> None."""
        out: dict = {"name": self.name, "shape": list(self.shape), "n_filters": self.n_filters,
                     "n_per_filter": self.n_per_filter}
        keys = (*LAYER_STATS, "shapiro_w", "shapiro_p", "jb", "jb_p", "t_p1", "t_p2", "t_p3")
        out.update({k: _json(getattr(self, k)) for k in keys})
        out.update({f"filter_{k}_mean": _json(torch.nanmean(self.filters[k]).item()) for k in FILTER_STATS})
        out["notes"] = list(self.notes)
        return out


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _filter_notes(n: int, flat: torch.Tensor, bad: torch.Tensor | None, nonfinite: int) -> list[str]:
    """Notes on per-filter degenerate cases: too few values, constant filters, NaN/Inf."""
    notes = []
    per = _plural(n, "weight") + " per filter"
    if n < 2:
        notes.append(f"skew/kurt undefined: {per} (needs >= 2)")
    if n < 3:
        notes.append(f"k3 undefined: {per} (needs >= 3)")
    if n < 4:
        notes.append(f"k4 undefined: {per} (needs >= 4)")
    constant = int(flat.sum())
    if n >= 2 and constant:
        notes.append(_plural(constant, "constant filter") + ": skew/kurt undefined")
    if bad is not None:
        notes.append(f"{_plural(nonfinite, 'NaN/Inf weight')} in {_plural(int(bad.sum()), 'filter')}: "
                     "their stats are NaN, layer stats use the finite weights")
    return notes


def _shapiro(x: np.ndarray, identical: bool, notes: list[str]) -> tuple[float, float]:
    """Shapiro-Wilk W and p of `x` (scipy.stats.shapiro); NaN for < 3 values or zero range."""
    import scipy.stats

    if x.size < 3:
        notes.append(f"Shapiro-Wilk undefined: {_plural(x.size, 'finite weight')} (needs >= 3)")
        return NAN, NAN
    if identical:
        return NAN, NAN
    if x.size > SHAPIRO_EXACT_N:
        notes.append(f"Shapiro-Wilk p-value approximate for N = {x.size} > {SHAPIRO_EXACT_N}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w, p = scipy.stats.shapiro(x)
    return float(w), float(p)


def _finite(weight: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor | None, np.ndarray]:
    """`weight` as rows, their filter stats, constant and NaN/Inf masks, and its finite values."""
    rows = _rows(weight).cpu()
    filters, flat, bad = _row_stats(rows)
    finite = rows.reshape(-1) if bad is None else rows[torch.isfinite(rows)]
    return rows, filters, flat, bad, finite.numpy()


def _k34(filters: dict) -> tuple[np.ndarray, tuple[float, float]]:
    """The defined per-filter k34 and their (mean, std)."""
    k34 = filters["k34"][torch.isfinite(filters["k34"])].numpy()
    with np.errstate(all="ignore"):
        return k34, ((float(np.mean(k34)), float(np.std(k34))) if k34.size else (NAN, NAN))


def layer_stats(name: str, weight: torch.Tensor, bins: int = 40, tests: bool = True) -> LayerStats:
    """All statistics of one conv weight (out, in, kh, kw); never raises on odd values. Without
    `tests`, the scipy parts are left for `with_tests` (see LayerStats)."""
    rows, filters, flat, bad, x = _finite(weight)
    notes = _filter_notes(rows.shape[1], flat, bad, rows.numel() - x.size)

    layer, layer_flat, _ = _row_stats(torch.from_numpy(x).view(1, -1))
    layer = {k: v.item() for k, v in layer.items()}
    identical = x.size >= 2 and bool(layer_flat)
    if identical:
        notes.append(f"all {x.size} weights identical: skew/kurt, Shapiro-Wilk and Jarque-Bera undefined")
    jb = jb_statistic(x.size, layer["skew"], layer["kurt"])
    k34, k34_fit = _k34(filters)
    stats = LayerStats(
        name=name, shape=tuple(weight.shape), n_filters=rows.shape[0], n_per_filter=rows.shape[1],
        filters=filters, **{k: layer[k] for k in LAYER_STATS},
        shapiro_w=NAN, shapiro_p=NAN, jb=jb, jb_p=NAN,
        t_p1=NAN, t_p2=t_p2(jb), t_p3=t_p3(layer["k3"], layer["k4"]),
        hist=_histogram(x, bins, layer["mean"], layer["std"], fit=False),
        k34_hist=_histogram(k34, bins, *k34_fit, fit=False), notes=notes, tested=False,
    )
    return _tested(stats, x, identical, k34, k34_fit) if tests else stats


def _tested(stats: LayerStats, x: np.ndarray, identical: bool, k34: np.ndarray,
            k34_fit: tuple[float, float]) -> LayerStats:
    notes = list(stats.notes)
    shapiro_w, shapiro_p = _shapiro(x, identical, notes)
    return replace(stats, shapiro_w=shapiro_w, shapiro_p=shapiro_p, jb_p=_jb_p(stats.jb), t_p1=t_p1(shapiro_w),
                   hist=_normal(stats.hist, x.size, stats.mean, stats.std),
                   k34_hist=_normal(stats.k34_hist, k34.size, *k34_fit), notes=notes, tested=True)


def with_tests(stats: NetworkStats, model: nn.Module) -> NetworkStats:
    """`stats` (of `model`, from `network_stats(..., tests=False)`) with the scipy parts added:
    the same figures `network_stats(model)` gives."""
    weights = dict(conv_layers(model))
    layers = []
    for layer in stats.layers:
        if not layer.tested:
            rows = _rows(weights[layer.name].weight).cpu()
            x = rows[torch.isfinite(rows)].numpy()
            identical = x.size >= 2 and bool(is_flat(*central_moments(torch.from_numpy(x).view(1, -1))[:2]))
            layer = _tested(layer, x, identical, *_k34(layer.filters))
        layers.append(layer)
    return NetworkStats(layers, _t_range(layers))


@dataclass
class NetworkStats:
    """Per-layer statistics of every conv and each strategy's T range {"P1": (Tmin, Tmax), ...}
    over the layers' finite T values ((nan, nan) when none is finite)."""

    layers: list[LayerStats]
    t_range: dict[str, tuple[float, float]]


def network_stats(
    model: nn.Module, bins: int = 40, progress: Callable[[int, int, str], None] | None = None, tests: bool = True
) -> NetworkStats:
    """LayerStats of every conv of `model`; calls progress(done, total, layer_name) after each.
    Without `tests`, the scipy parts are left for `with_tests`."""
    convs = conv_layers(model)
    layers = []
    for i, (name, conv) in enumerate(convs, 1):
        layers.append(layer_stats(name, conv.weight, bins, tests))
        if progress is not None:
            progress(i, len(convs), name)
    return NetworkStats(layers, _t_range(layers))


def _t_range(layers: list[LayerStats]) -> dict[str, tuple[float, float]]:
    t_range = {}
    for key in ("P1", "P2", "P3"):
        ts = [t for t in (getattr(s, f"t_{key.lower()}") for s in layers) if math.isfinite(t)]
        t_range[key] = (min(ts), max(ts)) if ts else (NAN, NAN)
    return t_range
