"""Per-layer time: each planned layer's forward time before and after decomposition, measured
alone on its real input shape (captured once by forward hooks) at the chosen device and batch
size, the two forms timed interleaved (core.measure.compare_latency) and cached; and
`skip_slower`, which leaves whole every layer whose decomposed form is not faster.

The decomposed form is timed as a stand-in with the planned shapes and random weights, so no
decomposition has to be computed to know whether it would pay off."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from core.measure import compare_latency

REPEATS = 7        # interleaved rounds per layer
BLOCK_S = 0.005    # each timed block runs at least this long


def input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Per-image input shape of every Conv2d and Linear, from its first call in one forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, module: nn.Module, args: tuple, output) -> None:
        shapes.setdefault(name, tuple(args[0].shape[1:]))

    hooks = [m.register_forward_hook(partial(record, name))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    param = next(model.parameters(), None)
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu"))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def stand_in(module: nn.Module, method: str, ranks: tuple[int, ...]) -> nn.Module:
    """A module shaped like `module` decomposed by `method` at `ranks` (random weights)."""
    if method == "svd":
        return nn.Sequential(nn.Linear(module.in_features, ranks[0], bias=False),
                             nn.Linear(ranks[0], module.out_features, bias=module.bias is not None))
    r_out, r_in = ranks if method == "tucker2" else (ranks[0], ranks[0])
    middle = nn.Conv2d(r_in, r_out, module.kernel_size, stride=module.stride, padding=module.padding,
                       dilation=module.dilation, groups=1 if method == "tucker2" else ranks[0], bias=False,
                       padding_mode=module.padding_mode)
    return nn.Sequential(nn.Conv2d(module.in_channels, r_in, 1, bias=False), middle,
                         nn.Conv2d(r_out, module.out_channels, 1, bias=module.bias is not None))


class LayerTimer:
    """Before/after times of planned layers of one model, at one device and batch size, cached."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], device: str = "cpu", batch: int = 1):
        self.model, self.device, self.batch = model, device, batch
        self.shapes = input_shapes(model, input_shape)
        self._cache: dict[tuple, tuple[float, float]] = {}

    def times(self, name: str, method: str, ranks: tuple[int, ...]) -> tuple[float, float]:
        """(before, after) in ms of layer `name` decomposed by `method` at `ranks`."""
        key = (name, method, tuple(ranks))
        if key not in self._cache:
            module = self.model.get_submodule(name)
            after = stand_in(module, method, ranks).to(next(module.parameters()).device)
            measured = compare_latency({"before": module, "after": after}, self.shapes[name], (self.batch,),
                                       self.device, repeats=REPEATS, block_s=BLOCK_S)
            self._cache[key] = (measured["before"][0].median_ms, measured["after"][0].median_ms)
        return self._cache[key]


def skip_slower(decomposer, layers: list) -> None:
    """Fill `time_ms` of every planned layer and leave whole (skipped, costs unchanged) each one
    whose decomposed form is not faster, at the decomposer's `timing` (device, batch size)."""
    device, batch = decomposer.timing
    timer = getattr(decomposer, "_layer_timer", None)
    if timer is None or (timer.device, timer.batch) != (device, batch):
        timer = decomposer._layer_timer = LayerTimer(decomposer.model, decomposer.input_shape, device, batch)
    for layer in layers:
        if layer.skipped is not None:
            continue
        layer.time_ms = timer.times(layer.name, layer.method, layer.ranks)
        before, after = layer.time_ms
        if after >= before:
            layer.skipped = f"not faster: {before:.3f} -> {after:.3f} ms ({device}, batch {batch})"
            layer.params, layer.flops = (layer.params[0],) * 2, (layer.flops[0],) * 2
