"""GPU proof: one command that shows, for ResNet-56 at 3x32x32 on one device,

1. fine-tuning images/s and peak memory of the `ce`, `mse` and `aux` stages, amp bf16 +
   channels_last against fp32 (on a CPU: channels_last against contiguous; autocast needs CUDA);
2. the teacher fed on the fly (the trainer, `mse`) against the seed's way: teacher logits for the
   whole training set computed first into float64 host arrays, then read per batch;
3. latency of the baseline, pruned (P1), decomposed (Tucker-2, X = 1.71) and A3 (both) models at
   batch 1, 64 and 256, measured interleaved (core.measure.compare_latency).

Models are seeded random inits (the costs do not depend on the weights' values). Meant to
finish within 8 minutes on one GPU; --quick runs the same code small enough for a CPU test.

Run: python bench/gpu_check.py [--device cuda:0] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data import DataSplits, TensorImages  # noqa: E402
from core.decompose.plan import Decomposer, apply_decomposition  # noqa: E402
from core.finetune.settings import FinetuneStage  # noqa: E402
from core.finetune.trainer import Placement, Trainer  # noqa: E402
from core.measure import compare_latency  # noqa: E402
from core.models.zoo import Arch, build  # noqa: E402
from core.prune.plan import Planner  # noqa: E402
from core.prune.surgery import apply_pruning  # noqa: E402
from core.session import DecomposeSection, PruneSection  # noqa: E402

ARCH = Arch("resnet56", 10, 3)
SHAPE = (3, 32, 32)


def images(n: int, gen: torch.Generator) -> TensorImages:
    return TensorImages(torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=gen),
                        torch.randint(0, 10, (n,), generator=gen), torch.full((3,), 0.5), torch.full((3,), 0.25))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def start_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:8.0f} MiB" if device.type == "cuda" else "     n/a"


def finetune(student, teacher, data: DataSplits, stage: FinetuneStage, place: Placement) -> float:
    """Seconds for one stage of `stage.max_steps` steps with the workbench's trainer."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(student, teacher, ARCH, data, [stage], SHAPE, lambda e: None, Path(tmp) / "ft.ckpt", place)
        sync(place.device)
        start = time.perf_counter()
        trainer.run()
        sync(place.device)
        return time.perf_counter() - start


def seed_way(student, teacher, train: TensorImages, batch: int, steps: int, device: torch.device) -> tuple[float, int]:
    """The seed's way of feeding the teacher: its logits for the whole training set first, as a
    float64 host array, then `mse` steps reading them per batch. Seconds (both parts) and bytes held."""
    sync(device)
    start = time.perf_counter()
    x_all, y_all = torch.utils.data.default_collate(train.__getitems__(list(range(len(train)))))
    with torch.no_grad():
        teacher.eval()
        held = torch.cat([teacher(x_all[i:i + 256].to(device)).double().cpu() for i in range(0, len(train), 256)])
    held = held.numpy()
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    student.train()
    for step in range(steps):
        rows = slice(step * batch, (step + 1) * batch)
        x, y = x_all[rows].to(device), y_all[rows].to(device)
        target = torch.from_numpy(held[rows]).float().to(device)
        out = student(x)
        loss = F.cross_entropy(out, y) + 5 * F.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start, held.nbytes


def compressed_models(base):
    planner = Planner(base, ARCH, SHAPE)
    pruned, pruned_arch = apply_pruning(base, ARCH, planner.plan(PruneSection(strategy="P1")).keep(), SHAPE)
    models = {"baseline": base, "pruned": pruned}
    for name, (model, arch) in (("decomposed", (base, ARCH)), ("A3", (pruned, pruned_arch))):
        decomposer = Decomposer(model, arch, SHAPE)
        models[name] = apply_decomposition(model, arch, decomposer.plan(DecomposeSection(x=1.71)), decomposer)[0]
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a few small steps: checks the script on a CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    place = Placement(device=device)
    batch, steps = (4, 2) if args.quick else (128, 60)
    sizes = (1, 2) if args.quick else (1, 64, 256)
    cuda = device.type == "cuda"
    print(f"resnet56 3x32x32 on {device} ({torch.cuda.get_device_name(device) if cuda else 'CPU'}), torch "
          f"{torch.__version__}, batch {batch}, {steps} steps per run")

    gen = torch.Generator().manual_seed(0)
    train, empty = images(batch * steps, gen), images(0, gen)
    data = DataSplits("random", train, empty, empty, 10, 3, 32, [str(i) for i in range(10)])
    torch.manual_seed(0)
    teacher = build(ARCH).to(device)

    print("\n1. fine-tuning (images/s, peak GPU memory)")
    fast = dict(amp="bf16", channels_last=True) if cuda else dict(channels_last=True)
    label = "bf16 + channels_last" if cuda else "channels_last"
    for mode in ("ce", "mse", "aux"):
        for name, extra in (("fp32", {}), (label, fast)):
            stage = FinetuneStage(mode=mode, epochs=1, max_steps=steps, batch_size=batch, lr=1e-3, milestones=[],
                                  log_every=10, **extra)
            start_peak(device)
            seconds = finetune(copy.deepcopy(teacher), teacher, data, stage, place)
            print(f"   {mode:3s} {name:21s} {batch * steps / seconds:9.1f} images/s  peak {peak(device)}")

    print("\n2. teacher outputs (mse stage, fp32)")
    stage = FinetuneStage(mode="mse", epochs=1, max_steps=steps, batch_size=batch, lr=1e-3, milestones=[])
    start_peak(device)
    seconds = finetune(copy.deepcopy(teacher), teacher, data, stage, place)
    print(f"   on the fly (trainer)      {batch * steps / seconds:9.1f} images/s  peak {peak(device)}  host arrays 0 B")
    start_peak(device)
    seconds, held = seed_way(copy.deepcopy(teacher).requires_grad_(True), teacher, train, batch, steps, device)
    print(f"   seed's float64 host array {batch * steps / seconds:9.1f} images/s  peak {peak(device)}  host arrays "
          f"{held:,} B for {len(train)} images ({held / len(train):.0f} B each; logits only)")

    print(f"\n3. latency on {device} (ms, median of interleaved rounds; x = speed-up over baseline)")
    models = {name: m.to(device).eval() for name, m in compressed_models(build(ARCH).eval()).items()}
    measured = compare_latency(models, SHAPE, sizes, device, **(dict(repeats=3, block_s=0.002) if args.quick else {}))
    for name, lats in measured.items():
        base = measured["baseline"]
        cells = "  ".join(f"b{lat.batch}: {lat.median_ms:8.3f} ({base[i].median_ms / lat.median_ms:4.2f}x"
                          f"{', noisy' if lat.noisy else ''})" for i, lat in enumerate(lats))
        print(f"   {name:10s} {cells}")


if __name__ == "__main__":
    main()
