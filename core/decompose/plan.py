"""A decomposition plan: which layers are decomposed, how, with which ranks, and what the network
will cost, computed from the session's choices; `apply_decomposition` builds the decomposed model.

Costs are predicted exactly from the layer shapes and where each layer runs (one forward pass at
construction), so the plan's (params, FLOPs) equal `count_params`/`count_flops` of the model that
`apply_decomposition` returns. FLOPs count as torch.utils.flop_counter does: 2 per multiply-add.
A 1x1 conv is decomposed like any other (METHOD.md applies Tucker-2 to the MobileNets' 1x1 convs);
grouped convs, and Linear layers whose weight nn.MultiheadAttention reads directly, are skipped.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from core.decompose.layers import composed_weight, cp_conv, in_parallel, relative_error, svd_linear, tucker_conv
from core.decompose.ranks import cp_rank, max_cp_rank, svd_rank, tucker_ranks, vbmf_rank, vbmf_ranks
from core.decompose.settings import DecomposeSection, LayerRanks
from core.errors import WorkbenchError
from core.measure import count_flops, count_params
from core.models.arch import Arch
from core.models.family import family_of

MAX_LISTED = 6


@dataclass
class LayerDecomposition:
    name: str
    kind: str                     # "conv" | "linear"
    shape: tuple                  # the weight's shape
    method: str                   # "tucker2" | "cp3" | "svd"
    ranks: tuple[int, ...]        # (r_out, r_in) for tucker2, (rank,) for cp3 and svd
    params: tuple[int, int]       # of this layer: before, after
    flops: tuple[int, int]
    error: float | None = None    # ||W - W_hat||_F / ||W||_F once computed
    skipped: str | None = None    # why the layer stays as it is
    time_ms: tuple[float, float] | None = None  # measured forward time before, after (skip_slower)


@dataclass
class DecomposePlan:
    settings: DecomposeSection
    layers: list[LayerDecomposition]
    params: tuple[int, int]       # of the network: before, after
    flops: tuple[int, int]

    @property
    def decomposed(self) -> list[LayerDecomposition]:
        return [layer for layer in self.layers if layer.skipped is None]


@dataclass
class _Site:
    """A Conv2d or Linear of the model and the positions it runs at per image (over all its calls)."""

    module: nn.Module
    kind: str
    in_positions: int = 0
    out_positions: int = 0
    order: int | None = None  # when it first ran


def _cost(method: str, shape: tuple, ranks: tuple[int, ...], bias: bool, site: _Site) -> tuple[int, int]:
    """(params, FLOPs) of the decomposed layer: the three convs (two linears) it becomes."""
    b = shape[0] if bias else 0
    if method == "svd":
        (r,), (out_f, in_f) = ranks, shape
        return r * (in_f + out_f) + b, 2 * site.out_positions * r * (in_f + out_f)
    cout, cin, kh, kw = shape
    r_out, r_in = ranks if method == "tucker2" else (ranks[0], ranks[0])
    middle = r_out * r_in * kh * kw if method == "tucker2" else ranks[0] * kh * kw
    params = r_in * cin + middle + cout * r_out + b
    return params, 2 * (site.in_positions * r_in * cin + site.out_positions * (middle + cout * r_out))


def _key(layer: LayerDecomposition) -> tuple:
    return layer.name, layer.method, layer.ranks


def build_layer(module: nn.Module, layer: LayerDecomposition) -> nn.Sequential:
    """The Sequential that replaces `module` as `layer` plans (named after its attribute)."""
    attr = layer.name.rpartition(".")[2]
    if layer.method == "tucker2":
        seq = tucker_conv(module, *layer.ranks, attr)
    elif layer.method == "cp3":
        seq = cp_conv(module, layer.ranks[0], attr)
    else:
        seq = svd_linear(module, layer.ranks[0], attr)
    return seq.train(module.training)


class Decomposer:
    """Plans for one model. Where each layer runs is recorded once; ranks from VBMF and the
    decomposed layers are cached, so re-planning is quick (the TUI re-plans on every edit)."""

    def __init__(self, model: nn.Module, arch: Arch, input_shape: tuple[int, int, int]):
        self.model, self.arch, self.input_shape = model, arch, tuple(input_shape)
        self.sites = {name: _Site(m, "conv" if isinstance(m, nn.Conv2d) else "linear")
                      for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        self._calls = 0
        hooks = [s.module.register_forward_hook(partial(self._record, s)) for s in self.sites.values()]
        try:
            self.flops = count_flops(model, self.input_shape)
        except Exception as exc:  # the model's own code: any failure is reported, not raised
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            raise WorkbenchError(f"{arch.model} does not run on input {self.input_shape} ({detail}); "
                                 "pass the input size it expects") from None
        finally:
            for h in hooks:
                h.remove()
        self.params = count_params(model)
        self._vbmf: dict[str, tuple[int, ...]] = {}
        self._built: dict[tuple, nn.Sequential] = {}
        self.timing = ("cpu", 1)  # device and batch size of skip_slower's per-layer times

    def _record(self, site: _Site, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if site.kind == "conv":
            site.in_positions += args[0].numel() // module.in_channels
            site.out_positions += output.numel() // module.out_channels
        else:
            site.out_positions += output.numel() // module.out_features
        if site.order is None:
            site.order, self._calls = self._calls, self._calls + 1

    def default_layers(self) -> list[str]:
        """The family's layers (METHOD.md's for the CIFAR families: ResNet block conv1 and conv2,
        MobileNet v1 pointwise convs, v2 what the reference script's filter picks). Any other
        model: every dense (groups = 1) Conv2d with a kernel larger than 1x1 except the first to
        run (the stem)."""
        names = family_of(self.arch).default_layers(self.model)
        if names is None:
            convs = {n: s for n, s in self.sites.items() if s.kind == "conv"}
            ran = [s.order for s in convs.values() if s.order is not None]
            stem = min(ran) if ran else None
            names = [n for n, s in convs.items()
                     if s.module.groups == 1 and s.module.kernel_size != (1, 1) and s.order != stem]
        return [n for n in names if n in self.sites and self.sites[n].kind == "conv"]  # decomposed ones drop out

    # ------------------------------------------------------------------ settings

    def _unknown(self, key: str, name: str) -> WorkbenchError:
        listed = [n for n in self.sites][:MAX_LISTED]
        more = ", ..." if len(self.sites) > MAX_LISTED else ""
        return WorkbenchError(f"{key}: '{name}' is not a Conv2d or Linear layer of {self.arch.model} "
                              f"(layers: {', '.join(listed)}{more})")

    def selection(self, s: DecomposeSection) -> list[str]:
        """The layers `s` decomposes, in model order; raises on unknown names or misfit ranks."""
        for name in s.layers or []:
            if name not in self.sites:
                raise self._unknown("decompose.layers", name)
            if self.sites[name].kind == "linear" and not s.linear:
                raise WorkbenchError(f"decompose.layers: '{name}' is a Linear layer: set decompose.linear = true "
                                     "to decompose it by truncated SVD")
        for name in s.exclude:
            if name not in self.sites:
                raise self._unknown("decompose.exclude", name)
        if s.method == "cp3" and s.rank_rule == "vbmf":
            raise WorkbenchError('decompose.rank_rule: vbmf estimates Tucker-2 and SVD ranks, not CP3 ranks; '
                                 'use rank_rule = "x" or method = "tucker2"')
        chosen = set(s.layers if s.layers is not None else self.default_layers())
        if s.linear:
            chosen |= {n for n, site in self.sites.items() if site.kind == "linear"}
        chosen -= set(s.exclude)
        for name, r in s.ranks.items():
            if name not in self.sites:
                raise self._unknown(f"decompose.ranks.{name}", name)
            if name not in chosen:
                raise WorkbenchError(f"decompose.ranks.{name}: this layer is not decomposed (not selected, or "
                                     "excluded); remove the entry or add the layer to decompose.layers")
            self._check_ranks(name, r, s.method)
        return [n for n in self.sites if n in chosen]

    def _check_ranks(self, name: str, r: LayerRanks, method: str) -> None:
        site, key = self.sites[name], f"decompose.ranks.{name}"
        shape = tuple(site.module.weight.shape)
        if site.kind == "linear" or method == "cp3":
            what = "a linear layer takes one SVD rank" if site.kind == "linear" else "cp3 takes one rank"
            if r.rank is None:
                raise WorkbenchError(f"{key}: {what}, not r_out/r_in; give rank")
            top = min(shape) if site.kind == "linear" else max_cp_rank(shape[1], shape[0], *shape[2:])
            if r.rank > top:
                limit = "its input/output size" if site.kind == "linear" else "the largest CP rank of its weight"
                raise WorkbenchError(f"{key}.rank: {r.rank} is more than {top} ({limit}); lower it")
            return
        if r.rank is not None:
            raise WorkbenchError(f"{key}: tucker2 needs r_out and r_in, not rank")
        for field, value, top, what in (("r_out", r.r_out, shape[0], "output"), ("r_in", r.r_in, shape[1], "input")):
            if value > top:
                raise WorkbenchError(f"{key}.{field}: {value} is more than the layer's {top} {what} channels; lower it")

    # ------------------------------------------------------------------ planning

    def _ranks(self, name: str, s: DecomposeSection, method: str) -> tuple[tuple[int, ...], bool]:
        """The layer's ranks and whether they were given explicitly."""
        explicit = s.ranks.get(name)
        if explicit is not None:
            return ((explicit.rank,) if explicit.rank is not None else (explicit.r_out, explicit.r_in)), True
        weight = self.sites[name].module.weight
        if s.rank_rule == "vbmf":
            if name not in self._vbmf:
                self._vbmf[name] = (vbmf_ranks(weight) if method == "tucker2" else
                                    (max(1, min(vbmf_rank(weight), *weight.shape)),))
            return self._vbmf[name], False
        if method == "svd":
            return (svd_rank(weight.shape[1], weight.shape[0], s.x),), False
        cout, cin, kh, kw = weight.shape
        rule = tucker_ranks if method == "tucker2" else cp_rank
        ranks = rule(cin, cout, kh, kw, s.x)
        return (ranks if method == "tucker2" else (ranks,)), False

    def _entry(self, name: str, s: DecomposeSection) -> LayerDecomposition:
        site = self.sites[name]
        m = site.module
        shape, bias = tuple(m.weight.shape), m.bias is not None
        method = s.method if site.kind == "conv" else "svd"
        params = m.weight.numel() + (shape[0] if bias else 0)
        taps = math.prod(shape[1:])
        flops = 2 * site.out_positions * shape[0] * taps
        parent = name.rpartition(".")[0]
        if site.kind == "conv" and m.groups > 1:
            return LayerDecomposition(name, site.kind, shape, method, (), (params, params), (flops, flops),
                                      skipped=f"grouped conv (groups={m.groups}): Tucker-2 and CP3 need a dense conv")
        if isinstance(self.model.get_submodule(parent), nn.MultiheadAttention):
            return LayerDecomposition(name, site.kind, shape, method, (), (params, params), (flops, flops),
                                      skipped="nn.MultiheadAttention reads this weight directly: it cannot be replaced")
        ranks, explicit = self._ranks(name, s, method)
        after = _cost(method, shape, ranks, bias, site)
        if not explicit and after[0] >= params:
            return LayerDecomposition(name, site.kind, shape, method, ranks, (params, params), (flops, flops),
                                      skipped=f"would not save parameters ({params} -> {after[0]} at ranks "
                                              f"{', '.join(map(str, ranks))})")
        return LayerDecomposition(name, site.kind, shape, method, ranks, (params, after[0]), (flops, after[1]))

    def plan(self, settings: DecomposeSection, errors: bool = False) -> DecomposePlan:
        """Ranks and costs of every selected layer; with `errors`, also decompose each and fill `error`."""
        layers = [self._entry(name, settings) for name in self.selection(settings)]
        if settings.skip_slower:
            from core.layer_times import skip_slower
            skip_slower(self, layers)
        if errors:
            self.build([layer for layer in layers if layer.skipped is None])
            for layer in layers:
                if layer.skipped is None:
                    layer.error = self._error(layer)
        saved_params = sum(layer.params[0] - layer.params[1] for layer in layers)
        saved_flops = sum(layer.flops[0] - layer.flops[1] for layer in layers)
        return DecomposePlan(settings, layers, (self.params, self.params - saved_params),
                             (self.flops, self.flops - saved_flops))

    def layer_error(self, name: str, settings: DecomposeSection) -> float:
        """Relative reconstruction error of one planned layer (decomposes it; the result is cached)."""
        if name not in self.selection(settings):
            raise WorkbenchError(f"'{name}' is not among the layers decompose settings select")
        layer = self._entry(name, settings)
        if layer.skipped is not None:
            raise WorkbenchError(f"{name} is not decomposed: {layer.skipped}")
        return self._error(layer)

    def build(self, layers: list[LayerDecomposition]) -> None:
        """Decompose the layers not built yet, several at once (`in_parallel`)."""
        todo = list({_key(layer): layer for layer in layers if _key(layer) not in self._built}.values())
        if not todo:  # built already: leave torch's thread count alone
            return
        built = in_parallel(lambda layer: build_layer(self.sites[layer.name].module, layer), todo)
        self._built.update({_key(layer): seq for layer, seq in zip(todo, built)})

    def decomposed(self, layer: LayerDecomposition) -> nn.Sequential:
        """The module replacing `layer` (built once per method and ranks)."""
        self.build([layer])
        return self._built[_key(layer)]

    def _error(self, layer: LayerDecomposition) -> float:
        return relative_error(self.sites[layer.name].module.weight, composed_weight(self.decomposed(layer)))


def apply_decomposition(model: nn.Module, arch: Arch, plan: DecomposePlan,
                        decomposer: Decomposer | None = None) -> tuple[nn.Module, Arch]:
    """A decomposed copy of `model` (left untouched): every planned, not skipped layer replaced.

    `decomposer`, the one that made `plan` for this same `model`, lends the layers it already
    decomposed. The Arch records `extra["decomposed"]` = {path: method}, as checkpoints do.
    """
    reuse = decomposer is not None and decomposer.model is model
    new = copy.deepcopy(model)
    done = {}
    for layer in plan.decomposed:
        try:
            module = new.get_submodule(layer.name)
        except AttributeError:
            raise WorkbenchError(f"the plan names {layer.name}, which this {arch.model} does not have: "
                                 "plan the decomposition for this model again") from None
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or tuple(module.weight.shape) != layer.shape:
            raise WorkbenchError(f"{layer.name} of this {arch.model} is not the layer the plan was made for "
                                 f"(planned weight {list(layer.shape)}): plan the decomposition for this model again")
        seq = copy.deepcopy(decomposer.decomposed(layer)) if reuse else build_layer(module, layer)
        parent, _, attr = layer.name.rpartition(".")
        setattr(new.get_submodule(parent), attr, seq)
        done[layer.name] = layer.method
    extra = {**arch.extra, "decomposed": {**arch.extra.get("decomposed", {}), **done}}
    return new, replace(arch, extra=extra)
