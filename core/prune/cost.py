"""Parameters and FLOPs of a pruned model predicted from keep counts alone, without surgery.

At construction one dependency-graph trace says how each group shrinks which layers, and one
forward pass records where each conv/linear runs. Afterwards a prediction is plain integer
arithmetic over the affected layers, equal to `count_params`/`count_flops` of the model that
`apply_pruning` would build (FLOPs as torch.utils.flop_counter counts them: 2 per
multiply-add of convs and matrix products; biases and norms cost no FLOPs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from core.errors import WorkbenchError
from core.measure import count_flops, count_params
from core.prune.groups import ChannelGroup, dependency_graph, group_effects


@dataclass
class _Layer:
    """One module whose size follows the groups: full channel counts and what each group removes."""

    kind: str         # "conv", "depthwise", "linear" or "vector" (BN, GN, PReLU...: per-channel vectors)
    out: int          # output channels/features (a vector module's channels)
    inp: int          # input channels/features
    taps: int         # kernel elements (1 for linear)
    bias: bool
    vectors: int      # per-channel parameter vectors of a "vector" module
    transposed: bool = False
    positions: int = 0  # output positions (transposed conv: input positions) per image, over all calls
    out_deps: list[tuple[str, int]] = field(default_factory=list)  # (group, channels removed if all go)
    in_deps: list[tuple[str, int]] = field(default_factory=list)

    def record(self, module: nn.Module, args: tuple, output) -> None:
        """Forward hook: count where the layer runs (FLOPs scale with it)."""
        if self.kind == "linear":
            self.positions += output.numel() // output.shape[-1]
        else:
            x = args[0] if self.transposed else output
            self.positions += x.numel() // x.shape[1]

    def channels(self, keep: dict[str, int], channels: dict[str, int]) -> tuple[int, int]:
        """(output, input) channels with `keep[g]` channels of each group g (missing: whole)."""
        out = self.out - sum(n * (channels[g] - keep.get(g, channels[g])) // channels[g] for g, n in self.out_deps)
        inp = self.inp - sum(n * (channels[g] - keep.get(g, channels[g])) // channels[g] for g, n in self.in_deps)
        return out, inp

    def size(self, keep: dict[str, int], channels: dict[str, int]) -> tuple[int, int]:
        """(params, FLOPs) with `keep[g]` channels of each group g (missing: whole)."""
        out, inp = self.channels(keep, channels)
        if self.kind == "vector":
            return self.vectors * out, 0
        weight = out * self.taps * (1 if self.kind == "depthwise" else inp)
        return weight + (out if self.bias else 0), 2 * weight * self.positions


def _layer(dg, module: nn.Module) -> _Layer:
    if isinstance(module, nn.modules.conv._ConvNd):
        kind = "depthwise" if module.groups > 1 else "conv"  # groups never reach other grouped convs
        return _Layer(kind, module.out_channels, module.in_channels, math.prod(module.kernel_size),
                      module.bias is not None, 0, module.transposed)
    if isinstance(module, nn.Linear):
        return _Layer("linear", module.out_features, module.in_features, 1, module.bias is not None, 0)
    size = dg.get_out_channels(module)  # None: torch-pruning leaves it alone (e.g. one shared PReLU slope)
    vectors = sum(1 for p in module.parameters(recurse=False) if p.shape == (size,)) if size else 0
    return _Layer("vector", size or 0, size or 0, 1, False, vectors)


class CostModel:
    """Predicts (params, FLOPs) of `model` pruned to given keep counts of `groups`."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int], groups: list[ChannelGroup]):
        dg = dependency_graph(model, input_shape)
        self.channels = {g.name: g.channels for g in groups}
        layers: dict[int, _Layer] = {}
        self._touched: dict[str, dict[int, _Layer]] = {}
        for g in groups:
            touched = self._touched[g.name] = {}
            for e in group_effects(dg, model.get_submodule(g.name)):
                if not isinstance(e.module, nn.Module) or next(e.module.parameters(recurse=False), None) is None:
                    continue  # torch-pruning ops and parameter-free layers cost nothing
                if id(e.module) not in layers:
                    layers[id(e.module)] = _layer(dg, e.module)
                layer = layers[id(e.module)]
                if e.role != "in":
                    layer.out_deps.append((g.name, e.count))
                if e.role != "out":
                    layer.in_deps.append((g.name, e.count))
                touched[id(e.module)] = layer
        by_id = {id(m): m for m in model.modules()}
        self._resized = [(by_id[i], layer) for i, layer in layers.items() if layer.kind != "vector"]
        hooks = [by_id[i].register_forward_hook(layer.record) for i, layer in layers.items() if layer.kind != "vector"]
        try:
            flops = count_flops(model, input_shape)
        finally:
            for hook in hooks:
                hook.remove()
        self._layers = list(layers.values())
        full = [layer.size({}, self.channels) for layer in self._layers]
        self._rest = (count_params(model) - sum(p for p, _ in full), flops - sum(f for _, f in full))

    def cost(self, keep_counts: dict[str, int]) -> tuple[int, int]:
        """(params, FLOPs) of the model keeping `keep_counts[name]` channels of each group (missing: whole)."""
        self._check(keep_counts)
        params, flops = self._rest
        for layer in self._layers:
            p, f = layer.size(keep_counts, self.channels)
            params, flops = params + p, flops + f
        return params, flops

    def resized(self, keep_counts: dict[str, int]) -> list[tuple[nn.Module, int, int]]:
        """Each conv and linear layer the groups resize, with its (output, input) channels at `keep_counts`."""
        self._check(keep_counts)
        return [(module, *layer.channels(keep_counts, self.channels)) for module, layer in self._resized]

    def layer_cost(self, name: str, keep: int) -> tuple[int, int]:
        """(params, FLOPs) of the layers group `name` resizes (its conv, BN and the layers reading
        it), with `keep` of its channels and every other group whole."""
        self._check({name: keep})
        sizes = [layer.size({name: keep}, self.channels) for layer in self._touched[name].values()]
        return sum(p for p, _ in sizes), sum(f for _, f in sizes)

    def _check(self, keep_counts: dict[str, int]) -> None:
        for name, keep in keep_counts.items():
            channels = self.channels.get(name)
            if channels is None:
                raise WorkbenchError(f"'{name}' is not a prunable group of this model")
            if not 1 <= keep <= channels:
                raise WorkbenchError(f"{name}: cannot keep {keep} channels, it has {channels} (keep 1..{channels})")
