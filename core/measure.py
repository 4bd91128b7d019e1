"""What a model costs and how well it does: parameters, FLOPs, latency, accuracy."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.models.zoo import Arch, is_cifar_family


def default_input_shape(arch: Arch) -> tuple[int, int, int]:
    """(C, H, W) the model expects: 8x8 for the demo, 32x32 for CIFAR families, else 224x224."""
    if arch.model == "demo" or (arch.model == "resnet20" and arch.in_channels == 1):
        return (1, 8, 8)
    size = 32 if is_cifar_family(arch.model) else 224
    return (arch.in_channels, size, size)


def count_params(model: nn.Module) -> int:
    """Number of parameters (weights and biases; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one image, as torch.utils.flop_counter counts them
    (2 per multiply-add, convolutions and matrix products)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu")
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


@dataclass
class Latency:
    median_ms: float
    min_ms: float
    repeats: int
    batch: int
    device: str


@torch.no_grad()
def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1, warmup: int = 5,
                    repeats: int = 30, device: str | torch.device = "cpu") -> Latency:
    """Wall-clock time of one forward pass: `warmup` untimed runs, then the median of `repeats`."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch, *input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return Latency(statistics.median(times), min(times), repeats, batch, str(device))


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy (fraction in [0, 1]) over every batch of `loader`."""
    model = model.to(device).eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += int((logits.argmax(1) == labels.to(device)).sum())
        total += labels.numel()
    return correct / max(total, 1)
