"""Compression that pays off in measured time: every ratio from models timed interleaved in one
loop (core.measure.compare_latency), on the CPU at batch 1 and 64.

Each ratio is the median over the loop's rounds of each round's ratio, the two models' blocks timed
one after the other (`core.measure.ratio`), printed with its quartiles.

1. ResNet-56 decomposed (Tucker-2, X = 1.71) with `skip_slower = true` against the original
   (target: at least 1.0x), and A3 (P1, then Tucker-2 with skip_slower) against P1 alone
   (target: at least as fast); beside them the original against a copy of itself, timed in the
   same loop: any ratio closer to 1.0 than that one's distance is within this machine's noise.
2. The ResNet-56 seed checkpoints (pruned by the reference) and ResNet-50 P4 against their
   unpruned networks: speed-up / FLOPs reduction (target: at least 0.8).
3. `[target] flops = 0.5` for P1, P4, P5 and Tucker-2 x on ResNet-56: where the plan lands
   (target: within 1% of half the FLOPs); `latency = 0.8` for P4 (ResNet-56, ResNet-50) and P1
   (ResNet-56): the solve's time, first and in a new session on the timing cache, and the plan's
   measured time.

Models are seeded random inits where no checkpoint is named (times do not depend on weights).
Run: python bench/bench_latency.py [--quick]   (on an idle machine)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.budget import solve_decompose, solve_prune  # noqa: E402
from core.decompose.plan import Decomposer, apply_decomposition  # noqa: E402
from core.errors import WorkbenchError  # noqa: E402
from core.measure import compare_latency, count_flops, ratio  # noqa: E402
from core.models.checkpoint import load_model  # noqa: E402
from core.models.zoo import Arch, build  # noqa: E402
from core.prune.plan import Planner  # noqa: E402
from core.prune.surgery import apply_pruning  # noqa: E402
from core.session import DecomposeSection, PruneSection, TargetSection  # noqa: E402

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seed-checkpoints"
CIFAR = (3, 32, 32)


def decompose(model, arch, shape, batch: int):
    decomposer = Decomposer(model, arch, shape)
    decomposer.timing = ("cpu", batch)
    plan = decomposer.plan(DecomposeSection(x=1.71, skip_slower=True))
    whole = len(plan.layers) - len(plan.decomposed)
    checked = sum(bool(layer.skipped and layer.skipped.startswith("the model with ")) for layer in plan.layers)
    note = f"{whole} layers left whole, {checked} of them faster alone but not in the model timed whole" if checked \
        else f"{whole} layers left whole"
    return apply_decomposition(model, arch, plan, decomposer)[0], note


def line(label: str, measured: dict, a: str, b: str, flops: dict | None = None) -> None:
    """`b`'s speed-up over `a`: the median of the rounds' ratios (core.measure.ratio), its quartiles,
    and each model's own spread."""
    for x, y in zip(measured[a], measured[b]):
        r = ratio(x, y)
        extra = ""
        if flops is not None:
            reduction = flops[a] / flops[b]
            extra = f", FLOPs {reduction:.2f}x fewer, speed-up/FLOPs = {r.median / reduction:.2f}"
        print(f"{label} batch {x.batch}: {b} {y.median_ms:.2f} ms vs {a} {x.median_ms:.2f} ms = {r.median:.2f}x "
              f"(rounds {r.low:.2f}-{r.high:.2f}){extra} (spread {x.spread:.0%}/{y.spread:.0%})")


def skip_slower_lines(batches: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    arch = Arch("resnet56", 10)
    base = build(arch).eval()
    pruned, pruned_arch = apply_pruning(base, arch, Planner(base, arch, CIFAR).plan(PruneSection()).keep(), CIFAR)
    for batch in batches:  # layers are timed at the batch size the network is measured at
        small, skipped = decompose(base, arch, CIFAR, batch)
        a3, skipped_a3 = decompose(pruned, pruned_arch, CIFAR, batch)
        models = {"original": base, "copy": copy.deepcopy(base), "decomposed": small, "P1": pruned, "A3": a3}
        measured = compare_latency(models, CIFAR, (batch,))
        line("resnet56 against a copy of itself (how far this machine resolves a ratio)", measured, "original", "copy")
        line(f"resnet56 tucker2 skip_slower ({skipped})", measured, "original", "decomposed")
        line(f"resnet56 A3 skip_slower ({skipped_a3})", measured, "P1", "A3")


def pruned_lines(batches: tuple[int, ...], quick: bool) -> None:
    torch.manual_seed(0)
    full = build(Arch("resnet56", 10)).eval()
    models = {"resnet56": full}
    for name in ("res56.pth.tar", "res56_global.pth.tar", "res56_norm.pth.tar"):
        models[name.split(".")[0]] = load_model(checkpoint=SEEDS / name).model.eval()
    flops = {k: count_flops(m, CIFAR) for k, m in models.items()}
    measured = compare_latency(models, CIFAR, batches)
    for name in list(models)[1:]:
        line(f"{name} (reference pruning)", measured, "resnet56", name, flops)
    arch = Arch("resnet50", 1000)
    r50 = build(arch).eval()
    shape = (3, 224, 224)
    planner = Planner(r50, arch, shape)
    p4, _ = apply_pruning(r50, arch, planner.plan(PruneSection(strategy="P4")).keep(), shape)
    models = {"resnet50": r50, "resnet50 P4": p4}
    flops = {k: count_flops(m, shape) for k, m in models.items()}
    line("resnet50 P4", compare_latency(models, shape, (1,) if quick else (1, 8), repeats=5 if quick else 15),
         "resnet50", "resnet50 P4", flops)


def solve_line(label: str, solve, *args):
    """Run one budget solve, print where it lands and how long it took; return the solved settings
    (None, with the refusal printed, when the target cannot be met)."""
    start = time.perf_counter()
    try:
        settings, solved = solve(*args)
    except WorkbenchError as exc:  # the table says the target cannot be met: the line a user gets
        print(f"{label}: refused in {time.perf_counter() - start:.2f} s: {exc}")
        return None
    seconds = time.perf_counter() - start
    where = "predicted" if solved.metric == "latency" else "achieved"
    print(f"{label} [target] {solved.metric} = {solved.target:g}: {solved.knob} = {solved.value:.4g}, {where} "
          f"{solved.achieved:.4f} ({abs(solved.achieved / solved.target - 1):.2%} off), solved in {seconds:.2f} s")
    return settings


def planned(model, arch, shape) -> Planner:
    planner = Planner(model, arch, shape)
    planner.plan(PruneSection(strategy="P1"))  # the statistics, as the Weights screen has them
    return planner


def target_lines() -> None:
    """Where each `[target]` lands and how long its solve takes (the planner's statistics already
    computed, as in the TUI); a latency target (cpu, batch 1) is predicted from the per-layer time
    table, and its first solve includes timing the table's points (the bench's own timing cache, so
    none is kept from an earlier run); then a new session (planner) solves it again on the cache."""
    torch.manual_seed(0)
    flops, latency = TargetSection(flops=0.5), TargetSection(latency=0.8)
    for name, classes, shape in (("resnet56", 10, CIFAR), ("resnet50", 1000, (3, 224, 224))):
        arch = Arch(name, classes)
        model = build(arch).eval()
        planner = planned(model, arch, shape)
        p1, p4 = PruneSection(strategy="P1"), PruneSection(strategy="P4")
        cases = [(p1, flops), (p4, flops), (p4, latency)]
        if name == "resnet56":  # P5's predefined stages, and P1 on a table fitted to P4
            cases[2:2] = [(PruneSection(strategy="P5", variant="C"), flops)]
            cases += [(p1, latency)]
        for settings, target in cases:
            solved = solve_line(f"{name} {settings.strategy}", solve_prune, planner, settings, target)
            if target is latency and solved is not None:
                again = solve_line(f"    again in a new session, on the timing cache: {name} {settings.strategy}",
                                   solve_prune, planned(model, arch, shape), settings, target)
                print(f"    same plan as the first solve: {again is not None and again == solved}")
                # the pruned model against the original, interleaved
                pruned, _ = apply_pruning(model, arch, planner.plan(solved).keep(), shape)
                measured = compare_latency({"original": model, "pruned": pruned}, shape, (1,))
                r = ratio(measured["pruned"][0], measured["original"][0])
                print(f"    measured: {r.median:.4f} of the original's time (rounds {r.low:.3f}-{r.high:.3f}, spread "
                      f"{measured['pruned'][0].spread:.0%}/{measured['original'][0].spread:.0%})")
        if name == "resnet56":
            solve_line(f"{name} tucker2", solve_decompose, Decomposer(model, arch, shape), DecomposeSection(), flops)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, fewer rounds: checks the script runs")
    args = parser.parse_args()
    batches = (1,) if args.quick else (1, 64)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="bench-timing-cache-") as cache:
        os.environ["WORKBENCH_TIMING_CACHE"] = cache
        target_lines()
    skip_slower_lines(batches)
    pruned_lines(batches, args.quick)
