"""compare_latency's synthetic stand-in for the latency budget tests (tests/test_latency_target.py,
tests/test_timing_cache.py); its fixture `clock` is in conftest.py."""

from __future__ import annotations

from torch import nn

from core.measure import Latency, count_flops


class Clock:
    """compare_latency's stand-in: each model takes 0.01 ms per conv/linear plus 1e-6 ms per FLOP
    (the whole model the same, plus 0.05 ms for what is not a conv or linear); `slow` shapes
    (input channels, output channels) take 1 ms more. Counts the calls."""

    def __init__(self, slow: set[tuple[int, int]] = frozenset()):
        self.calls, self.slow = 0, slow

    def __call__(self, models: dict, input_shape, batch_sizes=(1,), device="cpu", **kw) -> dict:
        self.calls += 1
        out = {}
        for name, model in models.items():
            layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            ms = 0.01 * len(layers) + 1e-6 * count_flops(model, tuple(input_shape)) + 0.05 * (len(layers) > 1)
            if len(layers) == 1 and (layers[0].weight.shape[1] * getattr(layers[0], "groups", 1), layers[0].weight.shape[0]) \
                    in self.slow:
                ms += 1.0
            out[name] = [Latency(ms, ms, 1, b, str(device)) for b in batch_sizes]
        return out
