"""Pruning benchmarks, each against a baseline measured in the same run.

1. Plan time for every strategy on torchvision resnet50 (seeded random init, 3x224x224):
   core.prune.plan.Planner (statistics vectorised, predicted cost from the cost model)
   against the reference way: per prunable layer the layer statistic with scipy, per filter
   a Python loop of scipy.stats.kstat (METHOD.md's scores), and the cost measured by
   applying the pruning to a copy and counting.
2. Measured CPU latency of pruned networks against their FLOPs reduction: speed-up /
   FLOPs reduction (1.0 would mean the FLOPs saving turns fully into time).

Run: python bench/bench_prune.py [--quick]   (on an idle machine)
"""

from __future__ import annotations

import argparse
import warnings
import copy
import sys
import time
from pathlib import Path

import numpy as np
import scipy.stats
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.measure import count_flops, count_params, measure_latency  # noqa: E402
from core.models.checkpoint import load_model  # noqa: E402
from core.models.zoo import Arch, build  # noqa: E402
from core.prune.plan import Planner  # noqa: E402
from core.prune.surgery import apply_pruning  # noqa: E402
from core.session import PruneSection  # noqa: E402

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seed-checkpoints"
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


def speed_line(label: str, base, pruned, shape, batch: int) -> None:
    f0, f1 = count_flops(base, shape), count_flops(pruned, shape)
    t0 = measure_latency(base, shape, batch=batch, repeats=30).median_ms
    t1 = measure_latency(pruned, shape, batch=batch, repeats=30).median_ms
    print(f"{label} batch {batch}: FLOPs {f0 / f1:.2f}x fewer, latency {t0:.2f} -> {t1:.2f} ms = {t0 / t1:.2f}x "
          f"faster, speed-up/FLOPs = {(t0 / t1) / (f0 / f1):.2f}")


def latency(quick: bool) -> None:
    torch.manual_seed(0)
    base = build(Arch("resnet56", 10)).eval()
    for name in ("res56.pth.tar", "res56_global.pth.tar", "res56_norm.pth.tar"):
        pruned = load_model(checkpoint=SEEDS / name).model
        for batch in (1, 64):
            speed_line(f"resnet56 {name}", base, pruned, (3, 32, 32), batch)
    arch, shape = Arch("resnet50", 1000), (3, 224, 224)
    model = build(arch).eval()
    planner = Planner(model, arch, shape)
    for multiple in (1, 8):
        plan = planner.plan(PruneSection(strategy="P4", percent=0.32, multiple_of=multiple))
        pruned, _ = apply_pruning(model, arch, plan.keep(), shape)
        for batch in (1,) if quick else (1, 8):
            speed_line(f"resnet50 P4 0.32 multiple_of {multiple}", model, copy.deepcopy(pruned), shape, batch)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one strategy, fewer batch sizes")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # scipy's "p-value may not be accurate" from the reference path
    plan_times(args.quick)
    latency(args.quick)
