"""Training batches built by DataLoader workers (ImageFolder JPEG decoding off the training
process) are the batches the training process builds itself: same images, same seeded
augmentation, same order, from any batch on (exact resume), with any number of workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core.data import load_data
from core.finetune.loader import EpochBatches, auto_workers, batch_seed
from core.pipeline import replay


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 3)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.jpg", quality=90)
    return root


def plan(n: int, steps: int = 5, batch: int = 4):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))[: steps * batch].view(steps, batch)
    return order, [batch_seed(0, 1, 2, s) for s in range(steps)]


def test_workers_build_the_very_batches_the_process_builds(jpeg_folder):
    train = load_data(f"imagefolder:{jpeg_folder}", image_size=32).train
    order, seeds = plan(len(train))
    here = EpochBatches(train, order, seeds, workers=0)
    ahead = EpochBatches(train, order, seeds, workers=2)
    resumed = EpochBatches(train, order, seeds, start=2, workers=2)  # a run resumed at batch 2
    for step in range(len(order)):
        x, y = here.take(step)
        x2, y2 = ahead.take(step)
        assert x.shape == (4, 3, 32, 32) and torch.equal(x, x2) and torch.equal(y, y2)
        if step >= 2:
            assert torch.equal(resumed.take(step)[0], x)
    # the augmentation is seeded per batch: another seed gives other crops
    other = EpochBatches(train, order, [s + 1 for s in seeds], workers=0)
    assert not torch.equal(other.take(0)[0], here.take(0)[0])


def test_batches_are_taken_in_order_only(jpeg_folder):
    train = load_data(f"imagefolder:{jpeg_folder}", image_size=32).train
    order, seeds = plan(len(train))
    ahead = EpochBatches(train, order, seeds, workers=1)
    with pytest.raises(RuntimeError, match="out of step"):
        ahead.take(1)


def test_rng_after_a_batch_is_the_seeded_state_whatever_the_workers(jpeg_folder):
    train = load_data(f"imagefolder:{jpeg_folder}", image_size=32).train
    order, seeds = plan(len(train))
    draws = []
    for workers in (0, 2):
        batches = EpochBatches(train, order, seeds, workers=workers)
        torch.manual_seed(seeds[0])
        batches.take(0)
        draws.append(torch.rand(3))
    torch.manual_seed(seeds[0])
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], torch.rand(3))


def test_auto_workers_only_for_data_read_from_disk(jpeg_folder):
    assert auto_workers(load_data("demo").train) == 0
    assert auto_workers(load_data(f"imagefolder:{jpeg_folder}", image_size=32).train) >= 1


SESSION = """version = 1
[model]
name = "tests.fixtures_models:tiny_net"
[data]
spec = "imagefolder:{root}"
[[finetune]]
mode = "ce"
epochs = 2
lr = 0.05
batch_size = 4
max_steps = 3
log_every = 1
workers = {workers}
"""


def test_training_with_workers_ends_with_the_same_weights(jpeg_folder, tmp_path):
    weights = []
    for workers in (0, 2):
        session = tmp_path / f"w{workers}.toml"
        session.write_text(SESSION.format(root=jpeg_folder, workers=workers))
        torch.manual_seed(0)  # the same random initial weights
        replay(session, tmp_path / f"run{workers}", latency=False, trust=True)
        weights.append(load_file(tmp_path / f"run{workers}" / "finetune-1-ce.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
