"""Open what the user named (model, checkpoint, data) and gather its overview: costs,
accuracy and per-layer statistics. Shared by `workbench inspect` and the TUI."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from core.data import DataSplits, load_data, make_loader
from core.errors import WorkbenchError
from core.measure import Latency, compare_latency, count_flops, count_params, default_input_shape, evaluate
from core.models.checkpoint import Loaded, load_model
from core.stats import NetworkStats, network_stats, with_tests
from core.target import Target, parse_input_size  # noqa: F401  (re-exported: what to open)


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
    latencies: list[Latency] = field(default_factory=list)   # one per batch size


def open_target(target: Target) -> Opened:
    """Load the model (and the data, if named) and check that they fit each other."""
    data = load_data(target.data, normalize=target.data_normalize, split=target.data_split) if target.data else None
    num_classes = target.num_classes or (data.num_classes if data and not target.checkpoint else None)
    loaded = load_model(target.model, target.checkpoint, num_classes=num_classes,
                        in_channels=target.in_channels, weights=target.weights, trust_pickle=target.trust_pickle)
    shape = target.input_size or default_input_shape(loaded.arch)
    first = next((m.in_channels for m in loaded.model.modules() if isinstance(m, nn.Conv2d)), None)
    if target.input_size and first is not None and target.input_size[0] != first:
        raise WorkbenchError(f"--input-size {'x'.join(map(str, target.input_size))} has {target.input_size[0]} "
                             f"channels but the model takes {first}: give {first}x{target.input_size[1]}x"
                             f"{target.input_size[2]}")
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


def measure_costs(opened: Opened, latency: bool = True, device: str = "cpu",
                  batch_sizes: tuple[int, ...] = (1,)) -> Costs:
    """Parameters, FLOPs per image and (optionally) latency on `device` at each batch size
    (`latency` holds the first)."""
    model, shape = opened.model, opened.input_shape
    lats = compare_latency({"model": model}, shape, tuple(batch_sizes), device)["model"] if latency else []
    return Costs(count_params(model), count_flops(model, shape), lats[0] if lats else None, lats)


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


def gather(opened: Opened, latency: bool = True, progress: Callable[[int, int, str], None] | None = None,
           device: str = "cpu", batch_sizes: tuple[int, ...] = (1,),
           stats_ready: Callable[[NetworkStats], None] | None = None) -> Overview:
    """Statistics of every conv layer, then costs (latency on `device` at `batch_sizes`) and test
    accuracy; `progress(done, total, what)` is called as each step finishes (the layers count as one
    step each). With `stats_ready`, it is called with the statistics as soon as they exist (before
    scipy's normality tests, see `with_tests`), then again with the tests: one more step."""
    report = progress or (lambda done, total, what: None)
    extra = 3 if stats_ready else 2
    stats = network_stats(opened.model, progress=lambda i, n, name: report(i, n + extra, name),
                          tests=stats_ready is None)
    total = len(stats.layers) + extra
    if stats_ready is not None:
        stats_ready(stats)
        report(total - 3, total, "normality tests (Shapiro-Wilk, Jarque-Bera)")
        stats = with_tests(stats, opened.model)
        stats_ready(stats)
    report(total - 2, total, "costs (params, FLOPs, latency)")
    costs = measure_costs(opened, latency, device, batch_sizes)
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
        "latency": [lat.as_dict() for lat in costs.latencies],
        "accuracy": accuracy,
        "t_range": {k: [_finite(a), _finite(b)] for k, (a, b) in stats.t_range.items()},
        "layers": [layer.summary() for layer in stats.layers],
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
