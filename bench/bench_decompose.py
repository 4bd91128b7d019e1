"""Decomposition benchmarks, each against a baseline measured in the same run.

1. Tucker-2 (HOOI) of every 3x3 conv of torchvision resnet50 at X = 2, ours
   (core.decompose.tucker.tucker2) against tensorly's `partial_tucker` with its default settings
   (SVD init, up to 100 sweeps, tol 1e-4) at the same ranks: total time and mean relative
   reconstruction error. Seeded random init has a flat spectrum that no low-rank method can
   exploit, so each weight is given the decaying channel spectra trained convs have: W is
   multiplied on its output and input channel modes by Q diag(exp(-4 i / n)) Q^T (Q random
   orthogonal). The same comparison on the trained convs of the res56_norm seed at X = 1.71.
2. CP3 of the res56_norm block convs at X = 1.71: ours (core.decompose.cp.cp3, CP-ALS in torch)
   against tensorly's `parafac(init="svd", linesearch=True, n_iter_max=100)` (what the workbench
   used before; ours builds layers in parallel as the Decomposer does, core.decompose.layers.
   in_parallel), alternating, the faster of ROUNDS runs each, as a ratio of wall and of CPU time
   (CPU time is steadier on a shared machine); mean relative errors beside the error of the
   seed's own CP3 model (res56_norm_cp3_model.pth.tar), the figure to match.
3. Measured CPU latency of Tucker-2 decomposed networks against their FLOPs reduction, the two
   models timed interleaved (core.measure.compare_latency): speed-up / FLOPs reduction (1.0 would
   mean the FLOPs saving turns fully into time).

Run: python bench/bench_decompose.py [--quick]   (on an idle machine)
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import tensorly as tl
import torch
from tensorly.decomposition import parafac, partial_tucker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.decompose.cp import cp3  # noqa: E402
from core.decompose.layers import composed_weight, in_parallel, relative_error  # noqa: E402
from core.decompose.plan import Decomposer, apply_decomposition  # noqa: E402
from core.decompose.ranks import cp_rank, tucker_ranks  # noqa: E402
from core.decompose.tucker import tucker2  # noqa: E402
from core.measure import compare_latency, count_flops  # noqa: E402
from core.models.checkpoint import load_model  # noqa: E402
from core.models.zoo import Arch, build  # noqa: E402
from core.session import DecomposeSection  # noqa: E402

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seed-checkpoints"
ROUNDS = 3  # each contender runs this many times, alternating; the fastest run counts


def structured(weight: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """`weight` with exponentially decaying spectra on both channel modes."""
    def mixer(n: int) -> torch.Tensor:
        q = torch.linalg.qr(torch.randn(n, n, generator=gen))[0]
        return q * torch.exp(-4 * torch.arange(n) / n) @ q.T
    cout, cin = weight.shape[:2]
    return torch.einsum("oa,abhw,ib->oihw", mixer(cout), weight, mixer(cin))


def ours(weight: torch.Tensor, ranks: tuple[int, int]) -> torch.Tensor:
    core, u_out, u_in = tucker2(weight, *ranks)
    return torch.einsum("abhw,oa,ib->oihw", core, u_out, u_in)


def tensorly_default(weight: torch.Tensor, ranks: tuple[int, int]) -> torch.Tensor:
    with tl.backend_context("pytorch", local_threadsafe=True):
        (core, (u_out, u_in)), _ = partial_tucker(weight.reshape(*weight.shape[:2], -1), ranks, modes=[0, 1])
    return torch.einsum("abk,oa,ib->oik", core, u_out, u_in).reshape(weight.shape)


def compare(label: str, weights: list[torch.Tensor], x: float) -> None:
    ranks = [tucker_ranks(w.shape[1], w.shape[0], w.shape[2], w.shape[3], x) for w in weights]
    best, errors = {}, {}
    for _ in range(ROUNDS):
        for name, fn in (("ours", ours), ("tensorly", tensorly_default)):
            start = time.perf_counter()
            approx = [fn(w, r) for w, r in zip(weights, ranks)]
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
            errors[name] = sum(float((a - w).norm() / w.norm()) for a, w in zip(approx, weights)) / len(weights)
    print(f"{label}: {best['tensorly'] / best['ours']:.1f}x faster (ours {best['ours']:.2f} s, tensorly default "
          f"{best['tensorly']:.2f} s; {len(weights)} convs), mean rel error ours {errors['ours']:.6f} vs "
          f"{errors['tensorly']:.6f}")


def hooi_times() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build(Arch("resnet50", 1000))
    convs = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    compare("resnet50 tucker2 X=2 (3x3 convs, decaying spectra)", [structured(w, gen) for w in convs], 2.0)
    seed = load_model(checkpoint=SEEDS / "res56_norm.pth.tar").model
    trained = [m.weight.detach() for n, m in seed.named_modules() if isinstance(m, torch.nn.Conv2d) and "." in n]
    compare("res56_norm tucker2 X=1.71 (trained block convs)", trained, 1.71)


def ours_cp3(weight: torch.Tensor, rank: int) -> torch.Tensor:
    first, depthwise, last = cp3(weight, rank)
    return torch.einsum("or,rhw,ri->oihw", last, depthwise[:, 0], first)


def tensorly_cp3(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """The workbench's CP3 before it had its own: tensorly's parafac with line search, 100 sweeps."""
    with tl.backend_context("pytorch", local_threadsafe=True):
        scale, (last, first, taps) = parafac(weight.reshape(*weight.shape[:2], -1), rank, n_iter_max=100,
                                             init="svd", random_state=0, linesearch=True)
    return torch.einsum("or,ir,kr->oik", last * scale, first, taps).reshape(weight.shape)


def cp3_times(quick: bool) -> None:
    seed = load_model(checkpoint=SEEDS / "res56_norm.pth.tar").model
    convs = {n: m.weight.detach() for n, m in seed.named_modules() if isinstance(m, torch.nn.Conv2d) and "." in n}
    reference = dict(load_model(checkpoint=SEEDS / "res56_norm_cp3_model.pth.tar").model.named_modules())
    names = list(convs)[::9] if quick else list(convs)
    ranks = {n: cp_rank(convs[n].shape[1], convs[n].shape[0], 3, 3, 1.71) for n in names}
    wall, cpu, errors = {}, {}, {}
    for _ in range(ROUNDS):
        for label, fn in (("ours", ours_cp3), ("tensorly", tensorly_cp3)):
            start, start_cpu = time.perf_counter(), time.process_time()
            if label == "ours":  # as the Decomposer builds them: layers in parallel, one thread per op
                approx = in_parallel(lambda n: fn(convs[n], ranks[n]), names)
            else:
                approx = [fn(convs[n], ranks[n]) for n in names]
            wall[label] = min(wall.get(label, float("inf")), time.perf_counter() - start)
            cpu[label] = min(cpu.get(label, float("inf")), time.process_time() - start_cpu)
            errors[label] = sum(relative_error(convs[n], a) for n, a in zip(names, approx)) / len(names)
    seed_error = sum(relative_error(convs[n], composed_weight(reference[n])) for n in names) / len(names)
    print(f"res56_norm cp3 X=1.71 ({len(names)} convs): {wall['tensorly'] / wall['ours']:.1f}x faster in wall time "
          f"(ours {wall['ours']:.2f} s, tensorly {wall['tensorly']:.2f} s), "
          f"{cpu['tensorly'] / cpu['ours']:.1f}x in CPU "
          f"time; mean rel error ours {errors['ours']:.5f}, tensorly {errors['tensorly']:.5f}, "
          f"seed cp3 model {seed_error:.5f}")


def speed_lines(label: str, model, arch: Arch, shape, x: float, batches: tuple[int, ...]) -> None:
    decomposer = Decomposer(model, arch, shape)
    plan = decomposer.plan(DecomposeSection(x=x))
    small, _ = apply_decomposition(model, arch, plan, decomposer)
    flops = count_flops(model, shape) / count_flops(small, shape)
    measured = compare_latency({"original": model, "decomposed": small}, shape, batches)  # interleaved
    for before, after in zip(measured["original"], measured["decomposed"]):
        t0, t1 = before.median_ms, after.median_ms
        print(f"{label} tucker2 X={x} batch {before.batch}: FLOPs {flops:.2f}x fewer, latency {t0:.2f} -> {t1:.2f} ms "
              f"= {t0 / t1:.2f}x faster, speed-up/FLOPs = {(t0 / t1) / flops:.2f} (spread {before.spread:.0%}, "
              f"{after.spread:.0%})")


def latency(quick: bool) -> None:
    torch.manual_seed(0)
    arch = Arch("resnet56", 10)
    speed_lines("resnet56 (random init)", build(arch).eval(), arch, (3, 32, 32), 1.71, (1, 64))
    seed = load_model(checkpoint=SEEDS / "res56_norm.pth.tar")
    speed_lines("res56_norm", seed.model, seed.arch, (3, 32, 32), 1.71, (1, 64))
    arch = Arch("resnet50", 1000)
    speed_lines("resnet50", build(arch).eval(), arch, (3, 224, 224), 2.0, (1,) if quick else (1, 8))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer layers and batches: checks the script runs")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # tensorly's "n_eigenvecs larger than the matrix" notes
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    hooi_times()
    cp3_times(args.quick)
    latency(args.quick)
