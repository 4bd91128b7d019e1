"""Open what the user named (model, checkpoint, data) and gather its overview: costs,
accuracy and per-layer statistics. Shared by `workbench inspect` and the TUI."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

from torch import nn

from core.data import DataSplits, load_data, make_loader
from core.errors import WorkbenchError
from core.measure import Latency, count_flops, count_params, default_input_shape, evaluate, measure_latency
from core.models.checkpoint import Loaded, load_model
from core.stats import NetworkStats, network_stats


@dataclass
class Target:
    """What to open, as the user gave it on the command line or in a session."""

    model: str | None = None
    checkpoint: Path | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    weights: str | None = None
    trust_pickle: bool = False
    data: str | None = None
    input_size: tuple[int, int, int] | None = None

    @classmethod
    def demo(cls) -> "Target":
        return cls(model="demo", data="demo")


@dataclass
class Opened:
    loaded: Loaded
    data: DataSplits | None
    input_shape: tuple[int, int, int]

    @property
    def model(self) -> nn.Module:
        return self.loaded.model


@dataclass
class Costs:
    params: int
    flops: int
    latency: Latency | None


def parse_input_size(text: str) -> tuple[int, int, int]:
    """'3x32x32' -> (3, 32, 32)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise WorkbenchError(f"--input-size '{text}' is not CxHxW (e.g. 3x32x32)")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def open_target(target: Target) -> Opened:
    """Load the model (and the data, if named) and check that they fit each other."""
    data = load_data(target.data) if target.data else None
    num_classes = target.num_classes or (data.num_classes if data and not target.checkpoint else None)
    loaded = load_model(target.model, target.checkpoint, num_classes=num_classes,
                        in_channels=target.in_channels, weights=target.weights, trust_pickle=target.trust_pickle)
    shape = target.input_size or default_input_shape(loaded.arch)
    if data is not None:
        shape = (data.in_channels, data.image_size, data.image_size)
        classes = loaded.arch.num_classes
        if classes is not None and classes != data.num_classes:
            raise WorkbenchError(
                f"the model has {classes} classes but data '{target.data}' has {data.num_classes}: "
                "pick the matching data set or --num-classes"
            )
        if loaded.arch.in_channels != data.in_channels:
            raise WorkbenchError(
                f"the model takes {loaded.arch.in_channels} input channels but data '{target.data}' "
                f"has {data.in_channels}"
            )
    return Opened(loaded, data, shape)


def measure_costs(opened: Opened, latency: bool = True) -> Costs:
    """Parameters, FLOPs per image and (optionally) CPU latency at batch 1."""
    model, shape = opened.model, opened.input_shape
    return Costs(count_params(model), count_flops(model, shape), measure_latency(model, shape) if latency else None)


def test_accuracy(opened: Opened, batch_size: int = 256) -> float | None:
    """Top-1 accuracy on the data's test split, or None without data."""
    if opened.data is None:
        return None
    return evaluate(opened.model, make_loader(opened.data.test, batch_size))


@dataclass
class Overview:
    """Everything the statistics views show about one opened model."""

    opened: Opened
    costs: Costs
    stats: NetworkStats
    accuracy: float | None


def gather(opened: Opened, latency: bool = True, progress: Callable[[int, int, str], None] | None = None) -> Overview:
    """Statistics of every conv layer, then costs and test accuracy; `progress(done, total, what)`
    is called as each step finishes (the layers count as one step each)."""
    report = progress or (lambda done, total, what: None)
    stats = network_stats(opened.model, progress=lambda i, n, name: report(i, n + 2, name))
    total = len(stats.layers) + 2
    report(total - 2, total, "costs (params, FLOPs, latency)")
    costs = measure_costs(opened, latency)
    report(total - 1, total, "test accuracy")
    accuracy = test_accuracy(opened)
    report(total, total, "done")
    return Overview(opened, costs, stats, accuracy)


def overview_json(ov: Overview) -> dict:
    """The `inspect --json` document: params, flops, latency, accuracy, T ranges and per-layer stats."""
    opened, costs, stats, accuracy = ov.opened, ov.costs, ov.stats, ov.accuracy
    return {
        "model": opened.loaded.arch.model,
        "source": opened.loaded.source,
        "input_shape": list(opened.input_shape),
        "params": costs.params,
        "flops": costs.flops,
        "latency_ms": costs.latency.median_ms if costs.latency else None,
        "accuracy": accuracy,
        "t_range": {k: [_finite(a), _finite(b)] for k, (a, b) in stats.t_range.items()},
        "layers": [layer.summary() for layer in stats.layers],
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
