"""Batch-building benchmark: images/s of ImageFolder training batches (JPEG decoding,
RandomResizedCrop 224, flip, normalise) built in the training process (what the trainer did
before core.finetune.loader) against DataLoader workers, same batches, same run.

A synthetic ImageFolder of JPEGs (random photos-sized images) is written to a temp folder;
each contender builds the same epoch plan (`--batches` batches of `--batch`), alternating
`--rounds` times; the fastest round counts. The ratio is what matters: on a machine with
idle cores the workers' gain grows with their number.

Run: python bench/bench_loader.py [--workers 0 2 4] [--images 256]   (on an idle machine)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data import load_data  # noqa: E402
from core.finetune.loader import EpochBatches, batch_seed  # noqa: E402


def write_folder(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", images), ("test", 8)):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(count // 2):
                smooth = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # upscaled: photo-like JPEG sizes
                Image.fromarray(smooth).resize((400, 300), Image.BILINEAR).save(root / split / label / f"{i}.jpg",
                                                                                 quality=90)


def images_per_s(train, workers: int, batches: int, batch: int) -> float:
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: batches * batch]
    order = order.view(batches, batch)
    seeds = [batch_seed(0, 0, 0, s) for s in range(batches)]
    start = time.perf_counter()
    feed = EpochBatches(train, order, seeds, workers=workers)
    for step in range(batches):
        feed.take(step)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), args.images)
        train = load_data(f"imagefolder:{tmp}").train
        batches = len(train) // args.batch
        best = {w: 0.0 for w in args.workers}
        for _ in range(args.rounds):
            for w in args.workers:
                best[w] = max(best[w], images_per_s(train, w, batches, args.batch))
    base = best[args.workers[0]]
    for w, rate in best.items():
        print(f"workers {w}: {rate:7.1f} images/s ({rate / base:.2f}x workers {args.workers[0]})")


if __name__ == "__main__":
    main()
