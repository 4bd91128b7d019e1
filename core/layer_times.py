"""Per-layer time: each planned layer's forward time before and after decomposition, measured
alone on its real input shape (captured once by forward hooks) at the chosen device and batch
size, the two forms timed interleaved (core.measure.compare_latency) and cached; and
`skip_slower`, which leaves whole every layer whose decomposed form is not faster.

The decomposed form is timed as a stand-in with the planned shapes and random weights, so no
decomposition has to be computed to know whether it would pay off.

`LatencyTable` is the per-layer time table of `[target] latency` and of the prune plan's
per-layer times: every Conv2d and Linear timed alone at the channel counts a plan gives it
(grid points measured once and interpolated between; exact shapes on request)."""

from __future__ import annotations

import bisect
import copy
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from core import timing_cache
from core.measure import Latency, compare_latency, ratio
from core.prune.settings import PruneSection

REPEATS = 7        # interleaved rounds per layer
TABLE_REPEATS = 3  # rounds per point of the latency table (a budget's first solve times dozens)
BLOCK_S = 0.005    # each timed block runs at least this long
MIN_GAIN = 0.1     # skip_slower keeps a decomposed form only if it is at least this much faster alone
FORMAT_NEAR = 1.25  # skip_slower: that gain also in a memory format where the whole model is within this factor of its fastest
TABLE_BLOCK_S = 0.002  # a table point's blocks
WHOLE_BLOCK_S = 0.01   # the blocks of whole models timed (the table's model times and fits, skip_slower's check)
WHOLE_WARMUP = 1       # their untimed calls first: each round warms its block with one more
REFIT_NEAR = 0.05     # a latency budget refits the table unless its plan is this near the last fitted one


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
    """Before/after times of planned layers of one model, at one device and batch size, cached;
    both forms in one memory format: the one asked for, by default `channels_last` (None: each
    form in the format it is faster in)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], device: str = "cpu", batch: int = 1,
                 channels_last: bool | None = None):
        self.model, self.device, self.batch, self.channels_last = model, device, batch, channels_last
        self.shapes = input_shapes(model, input_shape)
        self._cache: dict[tuple, tuple[float, float]] = {}

    def times(self, name: str, method: str, ranks: tuple[int, ...], last: bool | None = None) -> tuple[float, float]:
        """(before, after) in ms of layer `name` decomposed by `method` at `ranks`, in format `last`
        (None: the timer's)."""
        last = self.channels_last if last is None else last
        key = (name, method, tuple(ranks), last)
        if key not in self._cache:
            module = self.model.get_submodule(name)
            after = stand_in(module, method, ranks).to(next(module.parameters()).device)
            measured = compare_latency({"before": module, "after": after}, self.shapes[name], (self.batch,),
                                       self.device, repeats=REPEATS, block_s=BLOCK_S, channels_last=last)
            self._cache[key] = (measured["before"][0].median_ms, measured["after"][0].median_ms)
        return self._cache[key]


def _layer_timer(decomposer) -> LayerTimer:
    """The decomposer's layer timer at its `timing`, in the memory format the whole model is faster
    in there (a layer faster alone in the other format would not be faster inside the model)."""
    device, batch = decomposer.timing
    timer = getattr(decomposer, "_layer_timer", None)
    if timer is None or (timer.device, timer.batch) != (device, batch):
        table = table_for(decomposer, decomposer.model, decomposer.input_shape)
        timer = decomposer._layer_timer = LayerTimer(decomposer.model, decomposer.input_shape, device, batch,
                                                     table.channels_last())
    return timer


def time_decomposed(decomposer, layers: list) -> None:
    """Fill `time_ms` (before, after) of every planned, not skipped layer at the decomposer's
    `timing` (device, batch size), in the memory format the whole model is faster in there."""
    timer = _layer_timer(decomposer)
    for layer in layers:
        if layer.skipped is None:
            layer.time_ms = timer.times(layer.name, layer.method, layer.ranks)


def pays_off(before: float, after: float) -> bool:
    """Whether a decomposed form timed alone at `after` ms is worth putting in place of the layer's
    `before` ms: faster by at least MIN_GAIN, as a smaller gain measured alone is within the timing
    noise, and such layers made the whole model slower in bench/bench_latency.py."""
    return after < before * (1 - MIN_GAIN)


def skip_slower(decomposer, layers: list) -> None:
    """Fill `time_ms` of every planned layer and leave whole (skipped, costs unchanged) each one
    whose decomposed form does not pay off (`pays_off`) at the decomposer's `timing` (device, batch
    size), in the whole model's faster memory format, and also in the other one when the model's
    time there is within FORMAT_NEAR of it: which format a model runs faster in can then flip with
    the machine's noise (ResNet-56 at batch 1 on a 2-core CPU: 0.97-1.53x apart; 12 of its convs
    paid off alone in contiguous format, none in channels-last, and a run that decomposed 21 made
    the model 0.74x as fast). Then the model with the layers left decomposed is timed whole against
    the original (`whole_times`): unless it is faster beyond the noise (`faster_whole`), every layer
    is left whole, as layers faster alone need not make the model faster (a ResNet-56
    at batch 64 with three such layers decomposed ran 0.97x as fast)."""
    device, batch = decomposer.timing
    time_decomposed(decomposer, layers)
    timer = _layer_timer(decomposer)
    table = table_for(decomposer, decomposer.model, decomposer.input_shape)
    others = [f for f in table.formats
              if f != timer.channels_last and table.model_ms(f) <= FORMAT_NEAR * table.model_ms(timer.channels_last)]
    for layer in layers:
        if layer.skipped is not None:
            continue
        where = ""
        before, after = layer.time_ms
        for last in others:
            if not pays_off(before, after):
                break
            before, after = timer.times(layer.name, layer.method, layer.ranks, last)
            where = f" in {'channels-last' if last else 'contiguous'} format"
        if not pays_off(before, after):
            why = "not faster" if after >= before else f"under {MIN_GAIN:.0%} faster"
            _leave_whole(layer, f"{why}{where}: {before:.3f} -> {after:.3f} ms ({device}, batch {batch})")
    kept = [layer for layer in layers if layer.skipped is None]
    if kept:
        whole, decomposed = whole_times(decomposer, kept)
        if not faster_whole(whole, decomposed):
            for layer in kept:
                _leave_whole(layer, f"the model with {len(kept)} layer{'s' if len(kept) > 1 else ''} faster alone "
                                    f"decomposed is not faster timed whole: {whole.median_ms:.3f} -> "
                                    f"{decomposed.median_ms:.3f} ms ({device}, batch {batch})")


def _leave_whole(layer, why: str) -> None:
    layer.skipped = why
    layer.params, layer.flops = (layer.params[0],) * 2, (layer.flops[0],) * 2


def faster_whole(before: Latency, after: Latency) -> bool:
    """Whether a model timed at `after` is faster than one timed at `before`, interleaved, beyond the
    noise: in three rounds of four at least (the upper quartile of the rounds' ratios is below 1;
    without rounds, the two interquartile ranges centred on the medians do not overlap). On a quiet
    GPU a gain of a few percent, on a noisy CPU only one above its noise."""
    return ratio(after, before).high < 1


def whole_times(decomposer, layers: list) -> tuple[Latency, Latency]:
    """The decomposer's model and the same model with `layers` decomposed (stand-ins with the planned
    shapes), timed whole and interleaved at its `timing`, each in its faster memory format; cached
    per set of decomposed layers."""
    device, batch = decomposer.timing
    key = (device, batch, tuple(sorted((layer.name, layer.method, tuple(layer.ranks)) for layer in layers)))
    cache = decomposer.__dict__.setdefault("_whole_times", {})
    if key not in cache:
        model = decomposer.model
        decomposed = copy.deepcopy(model)
        for layer in layers:
            module = model.get_submodule(layer.name)
            decomposed.set_submodule(layer.name, stand_in(module, layer.method, layer.ranks)
                                     .to(next(module.parameters()).device))
        measured = compare_latency({"whole": model, "decomposed": decomposed}, decomposer.input_shape, (batch,),
                                   device, warmup=WHOLE_WARMUP, repeats=REPEATS, block_s=WHOLE_BLOCK_S)
        cache[key] = (measured["whole"][0], measured["decomposed"][0])
    return cache[key]


# ---------------------------------------------------------------- the per-layer time table (budgets)

# channel counts timed for the table; a count between two of them is interpolated (bilinear in
# input and output channels), so a budget's bisection needs only a few measured points per shape
GRID = sorted({1, 2, 3} | {int(b * 2 ** k) for k in range(14) for b in (1, 1.5)})


@dataclass(frozen=True)
class Spec:
    """A Conv2d or Linear apart from its channel counts: what its time depends on besides them."""

    kind: str                    # "conv", "depthwise" (channels = groups) or "linear"
    size: tuple[int, ...]        # the per-image input shape without channels (H, W; a Linear's leading dims)
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple | str = ()
    dilation: tuple[int, ...] = ()

    def module(self, cin: int, cout: int) -> nn.Module:
        if self.kind == "linear":
            return nn.Linear(cin, cout, bias=False)
        return nn.Conv2d(cin, cout, self.kernel, self.stride, self.padding, self.dilation, bias=False,
                         groups=cin if self.kind == "depthwise" else 1)

    def input_shape(self, cin: int) -> tuple[int, ...]:
        return (*self.size, cin) if self.kind == "linear" else (cin, *self.size)

    def pointwise(self, after: bool = False) -> Spec:
        """A 1x1 conv on this conv's input (or, `after`, its output) positions; for a Linear, a Linear."""
        if self.kind == "linear":
            return self
        return Spec("conv", self.out_size() if after else self.size, (1, 1), (1, 1), (0, 0), (1, 1))

    def out_size(self) -> tuple[int, ...]:
        if self.padding == "same":
            return self.size
        pad = (0, 0) if self.padding == "valid" else self.padding
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                     for n, p, d, k, s in zip(self.size, pad, self.dilation, self.kernel, self.stride))


def _point_key(point: tuple[Spec, int, int]) -> str:
    """A table point as the text core.timing_cache keeps it under."""
    spec, cin, cout = point
    return json.dumps([*dataclasses.astuple(spec), cin, cout])


def _point(key: str) -> tuple[Spec, int, int]:
    kind, size, kernel, stride, padding, dilation, cin, cout = json.loads(key)
    return (Spec(kind, tuple(size), tuple(kernel), tuple(stride), padding if isinstance(padding, str) else tuple(padding),
                 tuple(dilation)), int(cin), int(cout))


def spec_of(module: nn.Module, shape: tuple[int, ...]) -> tuple[Spec, int, int] | None:
    """(spec, input channels, output channels) of a Conv2d or Linear run on per-image `shape`; None
    for a grouped conv that is not depthwise (never pruned nor decomposed: its time stays)."""
    if isinstance(module, nn.Linear):
        return Spec("linear", tuple(shape[:-1])), module.in_features, module.out_features
    depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
    if module.groups > 1 and not depthwise:
        return None
    return (Spec("depthwise" if depthwise else "conv", tuple(shape[1:]), module.kernel_size, module.stride,
                 module.padding, module.dilation), module.in_channels, module.out_channels)


def _around(c: int) -> tuple[int, int]:
    """The grid counts either side of `c` (both `c` when it is on the grid or above it)."""
    if c in GRID or c > GRID[-1]:
        return c, c
    high = bisect.bisect(GRID, c)
    return GRID[high - 1], GRID[high]


class LatencyTable:
    """Per-layer forward times of one model at one device and batch size: every Conv2d and Linear
    timed alone on its real input shape (forward hooks, once), at the channel counts a plan gives
    it, and the whole model once, in each memory format an image model can run in (contiguous,
    channels-last). Measured points are cached; counts between grid points are interpolated, so a
    budget's bisection re-plans at the cost of arithmetic.

    A plan's predicted time, in a format, is the model's measured time there less a share `w` of it
    that scales with the sum of its convs' and linears' times (changed layers at their new shapes):
    model * (1 - w (1 - layers / full)). `w` is the layers' share of the model's time, their times
    alone over the model's (at most 1), until `calibrate` fits it in each format to a compressed
    model timed whole there: the layers' times alone do not add up to the model's (in contiguous
    format here they exceed it), and part of the rest (norms, activations, additions) shrinks with
    them. The prediction is the fastest over the formats in `predicting`: the model's faster one,
    the one a compressed model timed whole ran faster in (`calibrate`), and every format once a
    budget asks (`predict_everywhere`), as narrow convs can be slower than wide ones in
    channels-last; layers are timed only in those formats.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], device: str = "cpu", batch: int = 1):
        self.model, self.input_shape, self.device, self.batch = model, tuple(input_shape), device, batch
        modules = dict(model.named_modules())
        self.layers = {name: spec for name, shape in input_shapes(model, input_shape).items()
                       if (spec := spec_of(modules[name], shape)) is not None}
        image = len(self.input_shape) == 3 and any(isinstance(m, nn.Conv2d) for m in modules.values())
        self.formats = (False, True) if image else (False,)  # channels-last or not
        self._points: dict[bool, dict[tuple, float]] = {last: {} for last in self.formats}
        self._model: dict[bool, float] | None = None
        self._full: dict[bool, float] = {}
        self.weight: dict[bool, float] = {}    # per format, the fitted share `w` (absent: the layers' share)
        self._predicting: set[bool] = set()    # formats added to the model's faster one
        self.anchor: tuple | None = None   # (prune settings, {format: measured fraction}) `calibrate` was fitted to
        self.cached: str | None = None     # when the times read from the disk cache were first measured
        self.solves: dict[str, dict] = {}  # core.budget's latency solves: key -> value, achieved, timed
        self._weights: str | None = None  # the model's weights' key (timing_cache.weights_key), once asked
        self._saved: tuple | None = None  # the state last written by `save` or read by `_load`
        self._load()

    def _load(self) -> None:
        """What core.timing_cache kept for this machine, device, batch and model structure."""
        self._context = timing_cache.context(self.device, self.batch)
        self._key = timing_cache.model_key(self.model, self.input_shape)
        doc = timing_cache.load(self._context)
        try:
            points = {last: {_point(k): float(v) for k, v in doc["points"].get(str(int(last)), {}).items()}
                      for last in self.formats}
            entry = doc["models"].get(self._key) or {}
            model = {bool(int(f)): float(v) for f, v in (entry.get("times") or {}).items()}
            weight = {bool(int(f)): float(v) for f, v in (entry.get("weight") or {}).items()}
            predicting = {bool(v) for v in entry.get("predicting", [])}
            solves = {str(k): {"value": float(v["value"]), "achieved": float(v["achieved"]), "timed": bool(v["timed"])}
                      for k, v in (entry.get("solves") or {}).items()}
            anchor = entry.get("anchor")
            if anchor is not None:
                anchor = (PruneSection.model_validate(anchor["settings"]),
                          {bool(int(f)): float(v) for f, v in anchor["fractions"].items()})
        except (ValueError, TypeError, KeyError, AttributeError):  # a file of another make: measured afresh
            return
        self._points = points
        if set(model) == set(self.formats):
            self._model = model
        self.weight, self._predicting, self.anchor, self.solves = weight, predicting & set(self.formats), anchor, solves
        if any(points.values()) or entry:
            self.cached = doc["created"]
        self._saved = self._state()

    def _state(self) -> tuple:
        """What `save` writes: (format -> point -> ms, the model's entry)."""
        points = {str(int(last)): {_point_key(p): ms for p, ms in table.items()} for last, table in self._points.items()}
        anchor = None if self.anchor is None else {
            "settings": self.anchor[0].model_dump(mode="json"),
            "fractions": {str(int(f)): v for f, v in self.anchor[1].items()}}
        entry = {"times": None if self._model is None else {str(int(f)): v for f, v in self._model.items()},
                 "weight": {str(int(f)): v for f, v in self.weight.items()},
                 "predicting": sorted(self._predicting), "anchor": anchor, "solves": dict(self.solves)}
        return points, entry

    def solve_key(self, *parts) -> str:
        """A budget solve's key: `parts` (JSON) and the model's weights, which the plans depend on."""
        if self._weights is None:
            self._weights = timing_cache.weights_key(self.model)
        return json.dumps([*parts, self._weights], sort_keys=True)

    def save(self) -> None:
        """Keep what was measured and fitted (core.timing_cache), if anything changed since."""
        state = self._state()
        if state != self._saved:
            timing_cache.save(self._context, state[0], self._key, state[1])
            self._saved = state

    def _model_times(self) -> dict[bool, float]:
        """The whole model's forward time (ms) in each format, measured once."""
        if self._model is None:
            self._model = {last: compare_latency({"m": self.model}, self.input_shape, (self.batch,), self.device,
                                                 warmup=WHOLE_WARMUP, repeats=REPEATS, block_s=WHOLE_BLOCK_S,
                                                 channels_last=last)["m"][0].median_ms
                           for last in self.formats}
            self.save()
        return self._model

    def model_ms(self, last: bool | None = None) -> float:
        """The whole model's forward time (ms) in format `last` (None: its faster one)."""
        times = self._model_times()
        return min(times.values()) if last is None else times[last]

    def channels_last(self) -> bool:
        """Whether the whole model is faster in channels-last."""
        times = self._model_times()
        return min(times, key=times.get)

    def measure(self, points: list[tuple[Spec, int, int]], last: bool | None = None) -> None:
        """Time the points (spec, input channels, output channels) not yet in the table, in format
        `last` (None: the whole model's faster one)."""
        last = self.channels_last() if last is None else last
        table = self._points[last]
        for spec, cin, cout in dict.fromkeys(p for p in points if p not in table):  # one call each: shapes differ
            table[spec, cin, cout] = compare_latency(
                {"m": spec.module(cin, cout)}, spec.input_shape(cin), (self.batch,), self.device,
                warmup=1, repeats=TABLE_REPEATS, block_s=TABLE_BLOCK_S, channels_last=last)["m"][0].median_ms

    def ms(self, spec: Spec, cin: int, cout: int, exact: bool = False, last: bool | None = None) -> float:
        """Forward time of a `spec` layer with these channels in format `last` (None: the model's
        faster one): measured (`exact`, or on the grid), else interpolated between the grid points
        around it."""
        last = self.channels_last() if last is None else last
        t = self._points[last]
        if spec.kind == "depthwise":
            cout = cin
        if exact:
            self.measure([(spec, cin, cout)], last)
            return t[spec, cin, cout]
        (i0, i1), (o0, o1) = _around(cin), _around(cout)
        if spec.kind == "depthwise":
            o0, o1 = i0, i1
            corners = [(spec, i0, i0), (spec, i1, i1)]
        else:
            corners = [(spec, a, b) for a in (i0, i1) for b in (o0, o1)]
        self.measure(corners, last)
        u = (cin - i0) / (i1 - i0) if i1 > i0 else 0.0
        v = (cout - o0) / (o1 - o0) if o1 > o0 else 0.0
        if spec.kind == "depthwise":
            return t[spec, i0, i0] * (1 - u) + t[spec, i1, i1] * u
        return (t[spec, i0, o0] * (1 - u) * (1 - v) + t[spec, i0, o1] * (1 - u) * v
                + t[spec, i1, o0] * u * (1 - v) + t[spec, i1, o1] * u * v)

    def layer_ms(self, name: str, cin: int | None = None, cout: int | None = None, exact: bool = False,
                 last: bool | None = None) -> float:
        """Layer `name`'s time with `cin`/`cout` channels (default: its own) in format `last`."""
        spec, full_in, full_out = self.layers[name]
        return self.ms(spec, full_in if cin is None else cin, full_out if cout is None else cout, exact, last)

    def decomposed_ms(self, name: str, method: str, ranks: tuple[int, ...], last: bool | None = None) -> float:
        """Layer `name`'s time decomposed by `method` at `ranks` in format `last`: the sum of the layers
        it becomes (1x1 conv, core conv, 1x1 conv; for an SVD, two linears)."""
        spec, cin, cout = self.layers[name]
        if method == "svd":
            return self.ms(spec, cin, ranks[0], last=last) + self.ms(spec, ranks[0], cout, last=last)
        r_out, r_in = ranks if method == "tucker2" else (ranks[0], ranks[0])
        core = spec if method == "tucker2" else Spec("depthwise", *dataclasses.astuple(spec)[1:])
        return (self.ms(spec.pointwise(), cin, r_in, last=last) + self.ms(core, r_in, r_out, last=last)
                + self.ms(spec.pointwise(after=True), r_out, cout, last=last))

    def _layers(self, changed: dict[str, float], last: bool) -> tuple[float, float]:
        """(layers' time at full shapes, layers' time with `changed`) in format `last`, ms."""
        if last not in self._full:
            self._full[last] = sum(self.layer_ms(name, last=last) for name in self.layers)
        full = self._full[last]
        return full, max(full + sum(after - self.layer_ms(name, last=last) for name, after in changed.items()), 0.0)

    def _share(self, last: bool) -> float:
        """`w` in format `last`: fitted, else the layers' share of the model's time (at most 1)."""
        if last in self.weight:
            return self.weight[last]
        return min(self._layers({}, last)[0] / self.model_ms(last), 1.0)

    def predicting(self) -> list[bool]:
        """The formats a plan is predicted in: the model's faster one, and those `calibrate` and
        `predict_everywhere` added."""
        return sorted(self._predicting | {self.channels_last()})

    def predict_everywhere(self) -> bool:
        """Predict plans in every format from now on; whether that added one."""
        added = set(self.formats) - set(self.predicting())
        self._predicting |= added
        return bool(added)

    def predicted_ms(self, changed: Callable[[bool], dict[str, float]]) -> float:
        """The model's time (ms) in the fastest format of `predicting`, the layers `changed(last)`
        gives taking the times given there in format `last`."""
        best = None
        for last in self.predicting():
            model_ms = self.model_ms(last)
            full, layers = self._layers(changed(last), last)
            predicted = model_ms * (1 - self._share(last) * (1 - layers / full)) if full else model_ms
            best = predicted if best is None else min(best, predicted)
        return best

    def calibrate(self, changed: Callable[[bool], dict[str, float]], fractions: dict[bool, float]) -> None:
        """A compressed model measured whole at `fractions[last]` of the model's time in each format
        (timed interleaved with the original): the format it ran fastest in joins `predicting`, and
        in each of those `w` is fitted so that the model, its layers taking `changed(last)`, is
        predicted at that fraction; clipped to [0, 1]. A format where the table says the plan saves
        no layer time keeps its share."""
        self._predicting.add(min(fractions, key=lambda last: fractions[last] * self.model_ms(last)))
        for last in self.predicting():
            fraction = fractions[last]
            full, layers = self._layers(changed(last), last)
            if 0 < full and layers < full:
                self.weight[last] = min(max((1 - fraction) / (1 - layers / full), 0.0), 1.0)


def table_for(owner, model: nn.Module, input_shape: tuple[int, ...]) -> LatencyTable:
    """The latency table of a planner or decomposer at its `timing` (device, batch size), built once."""
    device, batch = owner.timing
    table = getattr(owner, "_latency_table", None)
    if table is None or (table.device, table.batch) != (device, batch):
        table = owner._latency_table = LatencyTable(model, input_shape, device, batch)
    return table


def pruned_times(planner, plan, exact: bool = False, last: bool | None = None) -> dict[str, tuple[float, float]]:
    """(before, after) ms of every Conv2d and Linear whose shape the prune plan changes (its own
    outputs, or its inputs from the layer before), at the planner's `timing`, in format `last`
    (None: the model's faster one); `exact` measures each new shape, else it comes from the grid."""
    table = table_for(planner, planner.model, planner.input_shape)
    names = {id(m): n for n, m in planner.model.named_modules()}
    out = {}
    for module, cout, cin in planner.cost.resized({layer.name: layer.keep for layer in plan.layers}):
        name = names[id(module)]
        if name not in table.layers or (cin, cout) == table.layers[name][1:]:
            continue
        out[name] = (table.layer_ms(name, exact=exact, last=last), table.layer_ms(name, cin, cout, exact, last))
    return out


def _after(planner, plan, exact: bool = False) -> Callable[[bool], dict[str, float]]:
    """Format -> the times after pruning of the layers the plan changes."""
    return lambda last: {n: after for n, (_, after) in pruned_times(planner, plan, exact, last).items()}


def time_prune_plan(planner, plan) -> None:
    """Fill each planned layer's `time_ms` (its conv before and after, each shape measured, in the
    model's faster format) and the plan's `latency_ms` (the model's measured time, and the time the
    table predicts after pruning)."""
    table = table_for(planner, planner.model, planner.input_shape)
    changed = pruned_times(planner, plan, exact=True)
    for layer in plan.layers:
        if layer.name in table.layers:
            layer.time_ms = changed.get(layer.name) or (table.layer_ms(layer.name, exact=True),) * 2
    plan.latency_ms = (table.model_ms(), table.predicted_ms(_after(planner, plan, exact=True)))
    plan.timing = planner.timing
    table.save()


def calibrate_prune(planner, plan, noisy_too: bool = False) -> None:
    """Fit the planner's latency table (`LatencyTable.calibrate`) to `plan` pruned and timed whole,
    interleaved with the original in each memory format, at the planner's `timing` (its fraction of
    the original's time: the rounds' ratios, `core.measure.ratio`), unless their spread is too wide
    to trust (`Ratio.noisy`) and not `noisy_too`: then the table stays as it was."""
    from core.prune.surgery import apply_pruning

    table = table_for(planner, planner.model, planner.input_shape)
    pruned, _ = apply_pruning(planner.model, planner.arch, plan.keep(), planner.input_shape)
    device, batch = planner.timing
    measured = {last: compare_latency({"original": planner.model, "pruned": pruned}, planner.input_shape, (batch,),
                                      device, warmup=WHOLE_WARMUP, repeats=REPEATS, block_s=WHOLE_BLOCK_S,
                                      channels_last=last)
                for last in table.formats}
    ratios = {last: ratio(m["pruned"][0], m["original"][0]) for last, m in measured.items()}
    fractions = {last: r.median for last, r in ratios.items()}
    if noisy_too or not any(r.noisy for r in ratios.values()):
        table.calibrate(_after(planner, plan), fractions)
    table.anchor = (plan.settings, fractions)
    table.save()


def measured_fraction(table: LatencyTable) -> float:
    """The plan the table was last fitted to, timed whole, as a fraction of the model's time (each
    in its faster memory format)."""
    _, fractions = table.anchor
    return min(f * table.model_ms(last) for last, f in fractions.items()) / table.model_ms()


def refit_prune(planner, plan) -> bool:
    """Calibrate the planner's table on `plan` (`calibrate_prune`) unless it was last fitted to a plan
    of the same strategy and filter metric predicted within REFIT_NEAR of the model's time of this
    one (another strategy prunes other layers, whose share of the rest of the model differs);
    whether it did."""
    table = table_for(planner, planner.model, planner.input_shape)
    if table.anchor is not None and _same_kind(plan.settings, table.anchor[0]) and \
            abs(prune_latency(planner, plan) - prune_latency(planner, planner.plan(table.anchor[0]))) \
            <= REFIT_NEAR * table.model_ms():
        return False
    calibrate_prune(planner, plan)
    return True


def _same_kind(a: PruneSection, b: PruneSection) -> bool:
    """Whether two prune settings have the same strategy and filter metric."""
    return (a.strategy, a.metric) == (b.strategy, b.metric)


def prune_latency(planner, plan) -> float:
    """The pruned model's time (ms) predicted from the table (grid points, interpolated)."""
    table = table_for(planner, planner.model, planner.input_shape)
    return table.predicted_ms(_after(planner, plan))


def decompose_latency(decomposer, plan, skip_slower: bool = False) -> float:
    """The decomposed model's time (ms) predicted from the table; with `skip_slower` a layer whose
    decomposed form does not pay off on the table (`pays_off`) counts as left whole."""
    table = table_for(decomposer, decomposer.model, decomposer.input_shape)

    def changed(last: bool) -> dict[str, float]:
        out = {}
        for layer in plan.decomposed:
            after = table.decomposed_ms(layer.name, layer.method, layer.ranks, last)
            before = table.layer_ms(layer.name, last=last)
            out[layer.name] = before if skip_slower and not pays_off(before, after) else after
        return out
    return table.predicted_ms(changed)
