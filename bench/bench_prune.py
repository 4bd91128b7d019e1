"""Pruning benchmarks, each against a baseline measured in the same run.

1. Plan time for every strategy on torchvision resnet50 (seeded random init, 3x224x224):
   core.prune.plan.Planner (statistics vectorised, predicted cost from the cost model)
   against the reference way: per prunable layer the layer statistic with scipy, per filter
   a Python loop of scipy.stats.kstat (METHOD.md's scores), and the cost measured by
   applying the pruning to a copy and counting.
2. Measured CPU latency of ResNet-50 P4, kept channels as computed and rounded to a multiple of
   8 and of 16, against its FLOPs reduction, all timed interleaved in one loop: speed-up / FLOPs reduction
   (1.0 would mean the FLOPs saving turns fully into time).

Run: python bench/bench_prune.py [--quick]   (on an idle machine)
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.stats
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.measure import compare_latency, count_flops, count_params  # noqa: E402
from core.models.zoo import Arch, build  # noqa: E402
from core.prune.plan import Planner  # noqa: E402
from core.prune.surgery import apply_pruning  # noqa: E402
from core.session import PruneSection  # noqa: E402

SETTINGS = {
    "P1": PruneSection(strategy="P1"),
    "P2": PruneSection(strategy="P2"),
    "P3": PruneSection(strategy="P3"),
    "P4": PruneSection(strategy="P4", percent=0.32),
    "P5": PruneSection(strategy="P5", stage_bounds=[20, 40], stage_ratios=[0.3, 0.3, 0.3]),
}


def reference_plan(model, planner: Planner, strategy: str, shape) -> None:
    """The reference scripts' way: scipy per layer, a scipy loop per filter, cost by surgery."""
    modules = dict(model.named_modules())
    keep = {}
    for g in planner.groups:
        w = modules[g.name].weight.detach().double().numpy()
        flat = w.ravel()
        if strategy == "P1":
            scipy.stats.shapiro(flat)
        elif strategy == "P2":
            scipy.stats.jarque_bera(flat)
        elif strategy == "P3":
            scipy.stats.kstat(flat, 3) * scipy.stats.kstat(flat, 4)
        scores = np.array([scipy.stats.kstat(f, 3) * scipy.stats.kstat(f, 4) for f in w.reshape(len(w), -1)])
        n = max(1, int(len(w) * 0.7))
        keep[g.name] = sorted(np.argsort(scores)[::-1][:n].tolist())
    pruned, _ = apply_pruning(model, planner.arch, keep, shape)
    count_params(pruned), count_flops(pruned, shape)


def plan_times(quick: bool) -> None:
    torch.manual_seed(0)
    arch, shape = Arch("resnet50", 1000), (3, 224, 224)
    model = build(arch).eval()
    for strategy, settings in SETTINGS.items():
        start = time.perf_counter()
        planner = Planner(model, arch, shape)  # fresh: nothing cached between strategies
        plan = planner.plan(settings)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        planner.plan(settings.model_copy(update={"layers": {}}))
        again = time.perf_counter() - start
        start = time.perf_counter()
        reference_plan(model, planner, strategy, shape)
        ref = time.perf_counter() - start
        print(f"resnet50 plan {strategy}: {ref / ours:.1f}x (ours {ours:.2f} s, re-plan {again * 1e3:.0f} ms, "
              f"reference {ref:.2f} s; {len(plan.layers)} layers, params {plan.params[0] / plan.params[1]:.2f}x "
              f"fewer)")
        if quick:
            break


def latency(quick: bool) -> None:
    """ResNet-50 P4 with kept channels as computed and rounded to a multiple of 8 and of 16 (oneDNN's
    CPU convs cost about the same for every output count up to 16), timed interleaved with the
    unpruned network in one loop (the ResNet-56 seeds: bench/bench_latency.py)."""
    torch.manual_seed(0)
    arch, shape = Arch("resnet50", 1000), (3, 224, 224)
    model = build(arch).eval()
    planner = Planner(model, arch, shape)
    models = {"resnet50": model}
    for multiple in (1, 8, 16):
        plan = planner.plan(PruneSection(strategy="P4", percent=0.32, multiple_of=multiple))
        models[f"P4 0.32 multiple_of {multiple}"] = apply_pruning(model, arch, plan.keep(), shape)[0]
    flops = {name: count_flops(m, shape) for name, m in models.items()}
    measured = compare_latency(models, shape, (1,) if quick else (1, 8), repeats=5 if quick else 15)
    for name in list(models)[1:]:
        for base, pruned in zip(measured["resnet50"], measured[name]):
            reduction, speed_up = flops["resnet50"] / flops[name], base.median_ms / pruned.median_ms
            print(f"resnet50 {name} batch {base.batch}: FLOPs {reduction:.2f}x fewer, latency {base.median_ms:.2f} -> "
                  f"{pruned.median_ms:.2f} ms = {speed_up:.2f}x faster, speed-up/FLOPs = {speed_up / reduction:.2f} "
                  f"(spread {base.spread:.0%}, {pruned.spread:.0%})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one strategy, fewer batch sizes")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # scipy's "p-value may not be accurate" from the reference path
    plan_times(args.quick)
    latency(args.quick)
