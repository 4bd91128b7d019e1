"""Fine-tuning benchmark: the trainer's time per step against a plain PyTorch loop, same run.

Both train a CIFAR ResNet-56 (3x32x32) on the same in-memory images with the same batch and
SGD settings (`ce` mode, so the work is identical: forward, cross-entropy, backward, step).
The plain loop is what a user would write by hand: index the tensors, forward, loss,
backward, step. The trainer adds what the workbench gives on top (seeded batch order and
augmentation RNG per batch, loss sums on the device, events, checkpoint at the end of the
epoch). Each contender runs ROUNDS times, alternating; the fastest run counts. Also the aux
mode (teacher forward + three losses) against the plain loop, for scale.

Run: python bench/bench_finetune.py [--quick]   (on an idle machine; CUDA if present)
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
from core.finetune.settings import FinetuneStage  # noqa: E402
from core.finetune.trainer import Placement, Trainer  # noqa: E402
from core.models.zoo import Arch, build  # noqa: E402

ROUNDS = 3


def images(n: int, gen: torch.Generator) -> TensorImages:
    return TensorImages(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
                        torch.randint(0, 10, (n,), generator=gen), torch.full((3,), 0.5), torch.full((3,), 0.25))


def plain_loop(model, data: TensorImages, batch: int, steps: int, device) -> float:
    """Seconds for `steps` SGD steps written by hand."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    order = torch.randperm(len(data))
    sync(device)
    start = time.perf_counter()
    for step in range(steps):
        x, y = torch.utils.data.default_collate(data.__getitems__(order[step * batch:(step + 1) * batch].tolist()))
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start


def trainer_run(model, teacher, data: DataSplits, mode: str, batch: int, steps: int, place) -> float:
    stage = FinetuneStage(mode=mode, epochs=1, max_steps=steps, batch_size=batch, lr=1e-3, milestones=[],
                          log_every=10)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, teacher, Arch("resnet56", 10, 3), data, [stage], (3, 32, 32), lambda e: None,
                          Path(tmp) / "ft.ckpt", place)
        sync(place.device)
        start = time.perf_counter()
        trainer.run()
        sync(place.device)
        return time.perf_counter() - start


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    args = parser.parse_args()
    place = Placement.detect()
    batch, steps = 64, 10 if args.quick else 40
    gen = torch.Generator().manual_seed(0)
    train = images(batch * steps, gen)
    empty = images(0, gen)
    data = DataSplits("random", train, empty, empty, 10, 3, 32, [str(i) for i in range(10)])
    torch.manual_seed(0)
    teacher = build(Arch("resnet56", 10, 3)).to(place.device)
    with torch.no_grad():  # set the BN statistics from data, as training would, so the random
        for m in teacher.modules():  # teacher's outputs keep a trained network's scale
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        x, _ = torch.utils.data.default_collate(train.__getitems__(list(range(batch))))
        teacher.train()(x.to(place.device))
    timings = {"plain": [], "ce": [], "aux": []}
    for _ in range(ROUNDS):
        timings["plain"].append(plain_loop(copy.deepcopy(teacher).requires_grad_(True), train, batch, steps, place.device))
        for mode in ("ce", "aux"):
            student = copy.deepcopy(teacher)  # as compression leaves it: close to the teacher
            timings[mode].append(trainer_run(student, teacher, data, mode, batch, steps, place))
    best = {k: min(v) for k, v in timings.items()}
    print(f"resnet56 3x32x32, batch {batch}, {steps} steps, {place.device}, best of {ROUNDS}")
    print(f"plain loop:      {1e3 * best['plain'] / steps:8.2f} ms/step")
    print(f"trainer ce:      {1e3 * best['ce'] / steps:8.2f} ms/step  overhead {best['ce'] / best['plain'] - 1:+.1%}")
    print(f"trainer aux:     {1e3 * best['aux'] / steps:8.2f} ms/step  ({best['aux'] / best['plain']:.2f}x the plain "
          "ce loop: teacher forward and pivot losses)")


if __name__ == "__main__":
    main()
