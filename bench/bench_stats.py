"""Per-filter statistics of every conv: core.stats.filter_stats (vectorised, float64 torch)
against the reference way (a Python loop over filters calling numpy/scipy per filter).

Run: python bench/bench_stats.py
Prints one line per model: `<model>: <speedup>x (ours .. s, reference .. s, max rel diff ..)`,
the max relative difference being on k34 over filters where both are finite and non-zero.
Run it on an idle machine: torch's multi-threaded ops slow down many times when another
process holds one of the cores, which the single-threaded reference barely notices.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.stats
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models.zoo import Arch, build  # noqa: E402
from core.stats import conv_layers, filter_stats  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2")
REPEATS = 5


def reference_stats(weight: torch.Tensor) -> dict[str, np.ndarray]:
    """One numpy/scipy call per filter and statistic, as the reference scripts do."""
    rows = weight.detach().reshape(weight.shape[0], -1).double().numpy()
    out: dict[str, list[float]] = {k: [] for k in ("mean", "std", "skew", "kurt", "k3", "k4", "k34", "l1")}
    for x in rows:
        k3, k4 = scipy.stats.kstat(x, 3), scipy.stats.kstat(x, 4)
        out["mean"].append(np.mean(x))
        out["std"].append(np.std(x))
        out["skew"].append(scipy.stats.skew(x))
        out["kurt"].append(scipy.stats.kurtosis(x))
        out["k3"].append(k3)
        out["k4"].append(k4)
        out["k34"].append(k3 * k4)
        out["l1"].append(np.abs(x).sum())
    return {k: np.asarray(v) for k, v in out.items()}


def max_rel_diff(ours: list[dict], ref: list[dict]) -> float:
    a = np.concatenate([o["k34"].numpy() for o in ours])
    b = np.concatenate([r["k34"] for r in ref])
    ok = np.isfinite(a) & np.isfinite(b) & (b != 0)
    return float(np.max(np.abs(a[ok] - b[ok]) / np.abs(b[ok])))


def best_time(weights: list[torch.Tensor]) -> tuple[float, list[dict]]:
    """Best of REPEATS runs of filter_stats over all convs."""
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        ours = [filter_stats(w) for w in weights]
        best = min(best, time.perf_counter() - t)
    return best, ours


def bench(name: str) -> str:
    torch.manual_seed(0)
    weights = [conv.weight.detach() for _, conv in conv_layers(build(Arch(name, 1000)))]
    before, ours = best_time(weights)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's precision warnings on depthwise 3x3 filters
        ref = [reference_stats(w) for w in weights]
    ref_time = time.perf_counter() - t
    best = min(before, best_time(weights)[0])  # repeats on both sides of the long baseline
    diff = max_rel_diff(ours, ref)
    return f"{name}: {ref_time / best:.1f}x (ours {best:.2f} s, reference {ref_time:.2f} s, max rel diff {diff:.0e})"


def main() -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    for name in MODELS:
        print(bench(name), flush=True)


if __name__ == "__main__":
    main()
