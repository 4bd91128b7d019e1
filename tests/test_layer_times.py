"""Per-layer time and skip_slower (core/layer_times.py): real input shapes, stand-ins shaped like the
plan, and layers left whole with the reason when their decomposed form is not faster."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.decompose.plan import Decomposer, apply_decomposition
import core.layer_times as layer_times
from core.layer_times import FORMAT_NEAR, LatencyTable, LayerTimer, faster_whole, input_shapes, stand_in
from core.measure import Latency, count_flops, count_params
from core.models.checkpoint import load_model
from core.session import DecomposeSection


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def lat(median: float, iqr: float = 0.0) -> Latency:
    return Latency(median, median, 7, 1, "cpu", iqr_ms=iqr)


def test_input_shapes_are_each_layers_own(demo):
    shapes = input_shapes(demo.model, (1, 8, 8))
    assert shapes["conv1"] == (1, 8, 8) and shapes["layer2.0.conv1"] == (16, 8, 8)
    assert shapes["layer3.0.conv2"] == (64, 2, 2) and shapes["linear"] == (64,)


def test_stand_in_has_the_planned_shapes(demo):
    conv = demo.model.get_submodule("layer2.0.conv1")       # 16 -> 32, stride 2
    x = torch.randn(2, 16, 8, 8)
    for method, ranks in (("tucker2", (12, 10)), ("cp3", (20,))):
        module = stand_in(conv, method, ranks)
        assert module(x).shape == conv(x).shape
        assert module[1].groups == (1 if method == "tucker2" else 20)
    linear = demo.model.linear
    assert stand_in(linear, "svd", (5,))(torch.randn(3, 64)).shape == (3, 10)


def test_times_are_cached_per_layer_and_ranks(demo):
    timer = LayerTimer(demo.model, (1, 8, 8))
    first = timer.times("layer1.0.conv1", "tucker2", (8, 8))
    assert all(t > 0 for t in first) and timer.times("layer1.0.conv1", "tucker2", (8, 8)) == first
    assert ("layer1.0.conv1", "tucker2", (6, 6)) not in timer._cache


@pytest.mark.parametrize("faster_channels_last", [False, True])
def test_both_forms_are_timed_in_the_memory_format_the_model_runs_in(demo, monkeypatch, faster_channels_last):
    """A layer's two forms are compared in the whole model's faster format, not each in its own
    (a form faster alone in the other format would not be faster inside the model)."""
    formats = []

    def fake(models, shape, batches, device="cpu", *_, channels_last=None, **__):
        formats.append(channels_last)
        ms = 1.0 if channels_last == faster_channels_last else 2.0
        return {name: [Latency(ms, ms, 1, batches[0], str(device), channels_last=channels_last)] for name in models}
    monkeypatch.setattr(layer_times, "compare_latency", fake)
    decomposer = Decomposer(demo.model, demo.arch, (1, 8, 8))
    decomposer.plan(DecomposeSection(skip_slower=True))
    assert formats[:2] == [False, True] and len(formats) > 2  # the whole model in each format; then each layer
    assert set(formats[2:]) == {faster_channels_last}


@pytest.mark.parametrize("other_ms", [1.2, 1.3])
def test_skip_slower_leaves_slower_layers_whole_and_costs_agree(demo, monkeypatch, other_ms):
    """Layers not at least 10% faster decomposed stay whole; so does one slower in the other memory
    format when the whole model runs within FORMAT_NEAR (1.25x) of its faster format's time there
    (the format it runs in could flip), not when that format is clearly slower for the model."""
    decomposer = Decomposer(demo.model, demo.arch, (1, 8, 8))
    slow = {"layer1.0.conv1", "layer3.1.conv2"}   # measured times are not asserted: these two are made slower
    marginal = "layer2.1.conv1"                     # and this one 5% faster: within timing noise
    other_format = "layer2.0.conv2"                 # faster in the model's memory format, slower in channels-last

    def times(self, name, method, ranks, last=None):
        if name == other_format and last is True:
            return (0.3, 0.4)
        return (0.2, 0.3) if name in slow else (0.3, 0.285) if name == marginal else (0.3, 0.2)
    monkeypatch.setattr(LayerTimer, "times", times)
    monkeypatch.setattr(LatencyTable, "_model_times", lambda self: {False: 1.0, True: other_ms})
    monkeypatch.setattr(layer_times, "whole_times", lambda decomposer, layers: (lat(1.0), lat(0.8)))
    plain = decomposer.plan(DecomposeSection())
    plan = decomposer.plan(DecomposeSection(skip_slower=True))
    skipped = {layer.name: layer.skipped for layer in plan.layers if layer.skipped}
    near = other_ms <= FORMAT_NEAR
    assert set(skipped) == slow | {marginal} | ({other_format} if near else set())
    assert skipped["layer1.0.conv1"] == "not faster: 0.200 -> 0.300 ms (cpu, batch 1)"
    assert skipped[marginal] == "under 10% faster: 0.300 -> 0.285 ms (cpu, batch 1)"
    if near:
        assert skipped[other_format] == "not faster in channels-last format: 0.300 -> 0.400 ms (cpu, batch 1)"
    assert all(layer.time_ms == (0.3, 0.2) for layer in plan.decomposed)
    assert plan.flops[1] > plain.flops[1]
    model, _ = apply_decomposition(demo.model, demo.arch, plan, decomposer)
    assert isinstance(model.get_submodule("layer1.0.conv1"), nn.Conv2d)
    assert (count_params(model), count_flops(model, (1, 8, 8))) == (plan.params[1], plan.flops[1])


def test_faster_whole_needs_a_gain_beyond_the_spreads():
    assert faster_whole(lat(10.0, 1.0), lat(8.0, 1.0))          # 8.5 < 9.5
    assert not faster_whole(lat(10.0, 2.0), lat(8.5, 1.0))      # 9.0 = 9.0: the ranges touch
    assert not faster_whole(lat(10.0), lat(10.0))


def test_faster_whole_with_rounds_needs_three_of_four_rounds_faster():
    """Timed interleaved, each round's ratio counts: 10% faster in every round is faster though the
    machine doubled its times halfway (the two spreads overlap); faster in half the rounds is not."""
    def timed(*times: float) -> Latency:
        return Latency(sorted(times)[len(times) // 2], min(times), len(times), 1, "cpu", rounds_ms=times)
    before, after = timed(10, 10, 20, 20, 10), timed(9, 9, 18, 18, 9)
    assert faster_whole(before, after)
    assert not faster_whole(lat(before.median_ms, 10.0), lat(after.median_ms, 9.0))   # its medians and spreads alone
    assert not faster_whole(timed(10, 10, 10, 10), timed(9, 11, 9, 11))


def test_skip_slower_leaves_every_layer_whole_when_the_model_is_not_faster_timed_whole(demo, monkeypatch):
    """Layers faster alone need not make the model faster: the model with them decomposed (stand-ins
    of the planned shapes, so no decomposition is computed) is timed whole against the original, and
    when it is not faster beyond the spreads every layer stays whole, with the reason; the timing is
    cached per set of decomposed layers."""
    timed = []

    def clock(models, input_shape, batches=(1,), device="cpu", **kw):
        timed.append(dict(models))
        return {name: [lat(1.0 if name == "whole" else 0.95, 0.1)] for name in models}
    monkeypatch.setattr(layer_times, "compare_latency", clock)
    monkeypatch.setattr(LayerTimer, "times", lambda self, name, method, ranks, last=None: (0.3, 0.2))
    monkeypatch.setattr(LatencyTable, "_model_times", lambda self: {False: 1.0, True: 2.0})
    decomposer = Decomposer(demo.model, demo.arch, (1, 8, 8))
    planned = decomposer.plan(DecomposeSection())
    plan = decomposer.plan(DecomposeSection(skip_slower=True))
    assert plan.decomposed == [] and (plan.params[1], plan.flops[1]) == (decomposer.params, decomposer.flops)
    n = len(planned.decomposed)
    assert plan.layers[0].skipped == (f"the model with {n} layers faster alone decomposed is not faster timed "
                                      "whole: 1.000 -> 0.950 ms (cpu, batch 1)")
    (models,) = timed
    assert models["whole"] is demo.model and count_params(models["decomposed"]) == planned.params[1]
    decomposer.plan(DecomposeSection(skip_slower=True))
    assert len(timed) == 1                                          # cached
