"""What a model costs and how well it does: parameters, FLOPs, latency, accuracy."""

from __future__ import annotations

import copy
import logging
import statistics
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import WorkbenchError
from core.models.arch import Arch
from core.models.family import family_of


def default_input_shape(arch: Arch) -> tuple[int, int, int]:
    """(C, H, W) the model expects, as its family says: 8x8 for the demo, 32x32 for CIFAR
    families, else 224x224."""
    return family_of(arch).input_shape(arch)


def count_params(model: nn.Module) -> int:
    """Number of parameters (weights and biases; BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one image, as torch.utils.flop_counter counts them
    (2 per multiply-add, convolutions and matrix products). The counter module (it imports
    triton) loads here, after the statistics table is on screen."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu")
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


MAX_SPREAD = 0.1   # interquartile range over median above which a latency is flagged as untrustworthy
BLOCK_S = 0.02     # each timed block runs the model this long at least (several calls on fast models)
FORMAT_BLOCKS = 3  # blocks per memory format, alternating, whose best picks the format a model is timed in


@dataclass
class Latency:
    median_ms: float   # per forward pass, median over the timed blocks
    min_ms: float
    repeats: int       # timed blocks
    batch: int
    device: str
    iqr_ms: float = 0.0
    channels_last: bool = False
    rounds_ms: tuple[float, ...] = ()  # each round's time, in the order of compare_latency's rounds

    @property
    def spread(self) -> float:
        """Interquartile range over median: how much the blocks disagree."""
        return self.iqr_ms / self.median_ms if self.median_ms else 0.0

    @property
    def noisy(self) -> bool:
        return self.spread > MAX_SPREAD

    def as_dict(self) -> dict:
        return {"device": self.device, "batch": self.batch, "median_ms": self.median_ms, "iqr_ms": self.iqr_ms,
                "min_ms": self.min_ms, "repeats": self.repeats, "channels_last": self.channels_last,
                "noisy": self.noisy, "rounds_ms": list(self.rounds_ms)}


@dataclass
class Ratio:
    """One model's time over another's: median and quartiles."""

    median: float
    low: float
    high: float

    @property
    def noisy(self) -> bool:
        """Its interquartile range is above MAX_SPREAD of the median."""
        return self.high - self.low > MAX_SPREAD * self.median


def ratio(a: Latency, b: Latency) -> Ratio:
    """`a`'s time over `b`'s, two models timed in the same `compare_latency` loop: the median and
    quartiles over the rounds of each round's ratio (the two blocks of a round run one after the
    other, so a slow moment of the machine slows both and cancels out: on this 2-core machine the
    ratio of a pruned ResNet-56 seed to the original varied over twelve runs with a standard
    deviation of 0.035 so, 0.119 as the ratio of the two medians). Without rounds (or with a
    different count), the ratio of the medians, its quartiles from the two interquartile ranges."""
    if a.rounds_ms and len(a.rounds_ms) == len(b.rounds_ms):
        values = [x / y for x, y in zip(a.rounds_ms, b.rounds_ms)]
        return Ratio(statistics.median(values), _quantile(values, 0.25), _quantile(values, 0.75))
    low, high = (a.median_ms - a.iqr_ms / 2) / (b.median_ms + b.iqr_ms / 2), \
        (a.median_ms + a.iqr_ms / 2) / max(b.median_ms - b.iqr_ms / 2, 1e-12)
    return Ratio(a.median_ms / b.median_ms, low, high)


def parse_device(text: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N`, checked against what this machine has."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise WorkbenchError(f"device {text!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise WorkbenchError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "use cpu or one of those")
    return device


def parse_batch_sizes(text: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """`1,64` (or a list) -> (1, 64): positive, without repeats."""
    try:
        sizes = [int(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise WorkbenchError(f"batch sizes {text!r}: give positive integers separated by commas, e.g. 1,64")
    return tuple(dict.fromkeys(sizes))


def _formats(model: nn.Module, input_shape: tuple[int, ...], channels_last: bool | None) -> list[tuple[bool, nn.Module]]:
    """The model as it is, and for image models a channels-last copy (the caller's model is
    untouched); `channels_last` True or False keeps only that one."""
    variants = [(False, model)]
    if len(input_shape) == 3 and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        if channels_last is not False:
            variants.append((True, copy.deepcopy(model).to(memory_format=torch.channels_last)))
        if channels_last:
            variants.pop(0)
    return variants


def _per_call(timer, number: int, warm: bool = True) -> float:
    """Seconds per call over one block of `number` calls, after one untimed call when `warm`: the
    first call after another model ran is cold (a ResNet-56 mostly of 1-channel convs timed 0.98 of
    the original so, 0.63-0.68 warmed); `Timer.timeit` would warm with max(number // 100, 2) calls,
    tripling the cost of a whole model's one-call blocks. A block that follows one of the same
    model needs no warm call."""
    if warm:
        timer._timeit(1)
    return timer._timeit(number) / number


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@torch.no_grad()
def compare_latency(models: dict[str, nn.Module], input_shape: tuple[int, ...], batch_sizes: tuple[int, ...] = (1,),
                    device: str | torch.device = "cpu", warmup: int = 3, repeats: int = 15,
                    block_s: float = BLOCK_S, channels_last: bool | None = None) -> dict[str, list[Latency]]:
    """Forward-pass time of each model at each batch size on `device`, with torch.utils.benchmark
    (CUDA synchronised): `warmup` untimed calls, then `repeats` rounds in which every model runs one
    timed block of calls in turn, so that a busy moment of the machine hurts all models alike and
    their ratios hold. Each model runs in the memory format (contiguous or channels-last) whose best
    of FORMAT_BLOCKS alternating blocks was faster (one block each once picked contiguous for a
    pruned ResNet-56 that ran 1.9x faster in channels-last); `channels_last` True or False: only
    that one. Median, minimum and interquartile range are over the rounds."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # its CUDA_HOME note on CPU machines
    from torch.utils import benchmark

    device = torch.device(device)
    homes = {name: (next((p.device for p in m.parameters()), None), m.training) for name, m in models.items()}
    results: dict[str, list[Latency]] = {name: [] for name in models}
    for batch in batch_sizes:
        timers = {}
        for name, model in models.items():
            model.to(device).eval()
            candidates = []
            for last, variant in _formats(model, input_shape, channels_last):
                variant.to(device).eval()
                fmt = torch.channels_last if last else torch.contiguous_format
                x = torch.randn(batch, *input_shape, device=device).contiguous(memory_format=fmt) \
                    if len(input_shape) == 3 else torch.randn(batch, *input_shape, device=device)
                timer = benchmark.Timer("model(x)", globals={"model": variant, "x": x})
                timer._timeit(warmup)
                number = max(1, int(block_s / _per_call(timer, 1, warm=False)))
                candidates.append([float("inf"), last, timer, number])
            if len(candidates) > 1:  # the faster format: the best of FORMAT_BLOCKS alternating blocks each
                for _ in range(FORMAT_BLOCKS):
                    for candidate in candidates:
                        candidate[0] = min(candidate[0], _per_call(candidate[2], candidate[3]))
            timers[name] = tuple(min(candidates, key=lambda c: c[0])[1:])
        times: dict[str, list[float]] = {name: [] for name in models}
        for i in range(repeats):  # a block warms up after another model's (or format's) blocks only
            for name, (_, timer, number) in timers.items():
                times[name].append(_per_call(timer, number, warm=len(timers) > 1 or i == 0) * 1e3)
        for name, (last, _, _) in timers.items():
            t = times[name]
            results[name].append(Latency(statistics.median(t), min(t), repeats, batch, str(device),
                                         _quantile(t, 0.75) - _quantile(t, 0.25), last, tuple(t)))
    for name, (home, training) in homes.items():  # the callers' models as they were
        models[name].train(training)
        if home is not None:
            models[name].to(home)
    return results


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1, warmup: int = 3,
                    repeats: int = 15, device: str | torch.device = "cpu") -> Latency:
    """One model's latency at one batch size (see `compare_latency`)."""
    return compare_latency({"model": model}, input_shape, (batch,), device, warmup, repeats)["model"][0]


def latency_entries(models: dict[str, nn.Module], input_shape: tuple[int, ...], device: str | torch.device = "cpu",
                    batch_sizes: tuple[int, ...] = (1,)) -> tuple[dict[str, dict], str | None]:
    """Report fields of each model, measured interleaved (`compare_latency`): `latency_ms` (the first
    batch size) and `latency` (one entry per batch size), and the spread warning, if any."""
    measured = compare_latency(models, input_shape, tuple(batch_sizes), device)
    entries = {name: {"latency_ms": lats[0].median_ms, "latency": [lat.as_dict() for lat in lats]}
               for name, lats in measured.items()}
    return entries, latency_warning(measured)


def latency_warning(measured: dict[str, list[Latency]]) -> str | None:
    """A line naming the measurements (model: device and batch) whose spread is too wide to trust, or None."""
    noisy = [f"{name + ' ' if name else ''}{lat.device} batch {lat.batch} ({lat.spread:.0%})"
             for name, lats in measured.items() for lat in lats if lat.noisy]
    if not noisy:
        return None
    return (f"latency spread (interquartile range) above {MAX_SPREAD:.0%} of the median for {', '.join(noisy)}: "
            "the machine is busy, so these times (less so their ratios) are unreliable; measure again when it is "
            "idle, or with fewer --threads")


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
