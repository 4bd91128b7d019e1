"""Which output channels of a model can be pruned, as channel groups found by torch-pruning.

A group is a root conv's output channels together with every tensor that must shrink with
them (its BN, the next convs' inputs, depthwise convs that follow). A family that names
its prunable convs (the paper's CIFAR families: the internal channels METHOD.md names) offers
those; any other model offers what torch-pruning's dependency graph finds, by default only
groups that meet no residual addition or concatenation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from core.errors import WorkbenchError
from core.models.arch import Arch
from core.models.family import family_of
from core.models.pruning_history import dependency_graph
from core.models.torch_pruning_lib import tp

__all__ = ["ChannelGroup", "Effect", "dependency_graph", "graph_groups", "group_effects", "prunable_groups",
           "unsupported_layers"]

OPTYPE = tp.ops.OPTYPE
# torch-pruning ops that pass channels through unchanged and hold no weights
PASSIVE = (OPTYPE.ELEMENTWISE, OPTYPE.CONCAT, OPTYPE.RESHAPE)


@dataclass
class ChannelGroup:
    """The output channels of one root conv and the modules whose weights change with them."""

    name: str           # the root conv's module name
    channels: int       # its output channels now
    layer_id: int       # 1-based position of the root among all nn.Conv2d (named_modules order)
    coupled: bool       # the channels meet a residual addition or concatenation
    members: list[str]  # module names whose weights change with it, root first


@dataclass(frozen=True)
class Effect:
    """What pruning a whole group does to one node of torch-pruning's graph."""

    module: object  # nn.Module, nn.Parameter or a torch-pruning op
    node: object    # its torch_pruning Node
    role: str       # "out", "in" or "both" (channel-wise layers: BN, depthwise convs, ops)
    count: int      # its channels (or features) removed when the group's channels all go


def group_effects(dg: tp.DependencyGraph, conv: nn.Conv2d) -> list[Effect]:
    """Every node that pruning all of `conv`'s output channels touches, root first."""
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))
    effects = []
    for dep, idxs in group:
        out, inp = dg.is_out_channel_pruning_fn(dep.handler), dg.is_in_channel_pruning_fn(dep.handler)
        role = "both" if out and inp else "out" if out else "in"
        effects.append(Effect(dep.target.module, dep.target, role, len(idxs)))
    return effects


def unsupported_layers(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Modules (or the model's own parameters) with weights torch-pruning has no pruner for.

    These are the names to pass as `ignore`; groups that reach them are then left whole.
    """
    return [name for name, _ in _unsupported(dependency_graph(model, input_shape), model)]


def prunable_groups(model: nn.Module, arch: Arch, input_shape: Sequence[int], coupled: bool = False,
                    ignore: Sequence[str] = ()) -> list[ChannelGroup]:
    """The channel groups of `model` that can be pruned, in layer order.

    `coupled` adds groups tied to residual additions/concatenations (never for the CIFAR
    families); groups touching a module in `ignore` (or inside one) are left out. Layers
    torch-pruning cannot handle must be listed in `ignore`.
    """
    dg = dependency_graph(model, input_shape, arch.model)
    ignored = _ignored_ids(model, ignore)
    missing = [name for name, ids in _unsupported(dg, model) if not ids <= ignored]
    if missing:
        raise WorkbenchError(
            f"{arch.model} has layers with weights torch-pruning cannot prune: {', '.join(missing)}; "
            "list them in ignore to keep them (and the channels they touch) whole"
        )
    return graph_groups(dg, model, arch, coupled, ignored)


def graph_groups(dg: tp.DependencyGraph, model: nn.Module, arch: Arch, coupled: bool = False,
                 ignored: set[int] | None = None) -> list[ChannelGroup]:
    """The groups found in a built graph; `ignored` holds ids of modules/parameters to keep whole
    (None: every unsupported layer)."""
    if arch.extra.get("decomposed"):
        raise WorkbenchError(f"{arch.model} is already decomposed: prune first, then decompose (approach A3)")
    if ignored is None:
        ignored = set().union(*(ids for _, ids in _unsupported(dg, model)))
    modules = list(model.named_modules())
    convs = [name for name, m in modules if isinstance(m, nn.Conv2d)]
    layer_ids = {name: i for i, name in enumerate(convs, 1)}
    order = {id(m): i for i, (_, m) in enumerate(modules)}
    names = {id(m): name for name, m in modules}
    roots = family_of(arch).prunable_roots(model)
    roots = convs if roots is None else roots
    grouped: set[int] = set()  # convs whose output channels already belong to a group
    groups = []
    for name in roots:
        conv = model.get_submodule(name)
        if id(conv) in grouped or _depthwise(conv):
            continue
        effects = group_effects(dg, conv)
        grouped.update(id(e.module) for e in effects if e.role != "in" and isinstance(e.module, nn.Conv2d))
        if not _usable(dg, effects, ignored, conv.out_channels):
            continue
        is_coupled = _coupled(effects)
        if is_coupled and not coupled:
            continue
        members = sorted({id(e.module) for e in effects if id(e.module) in names and id(e.module) != id(conv)},
                         key=order.__getitem__)
        groups.append(ChannelGroup(name, conv.out_channels, layer_ids[name], is_coupled,
                                   [name] + [names[i] for i in members]))
    return groups


def _depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels > 1


def _usable(dg: tp.DependencyGraph, effects: list[Effect], ignored: set[int], channels: int) -> bool:
    """Whether torch-pruning can prune the group exactly and leave the model's output shape alone."""
    for e in effects:
        node, module = e.node, e.module
        if id(module) in ignored or e.count % channels:
            return False
        if node.type == OPTYPE.OUTPUT or (e.role != "in" and not node.outputs):
            return False  # the model's output would shrink
        if node.type in PASSIVE or node.type == OPTYPE.LINEAR:
            continue
        if node.type in (OPTYPE.CONV, OPTYPE.DEPTHWISE_CONV):
            if module.groups != 1 and not _depthwise(module):
                return False  # grouped convs: torch-pruning does not keep the groups consistent
            continue
        size = dg.get_out_channels(module) if isinstance(module, nn.Module) else None
        params = list(module.parameters(recurse=False)) if isinstance(module, nn.Module) else [module]
        if size is not None and any(p.shape != (size,) for p in params):
            return False  # only per-channel vectors (norms, PReLU) are predicted exactly
        if node.type not in (OPTYPE.BN, OPTYPE.GN, OPTYPE.IN, OPTYPE.LN, OPTYPE.PRELU):
            return False  # split/slice/unbind, embeddings, attention, LSTM, bare parameters
    return True


def _coupled(effects: list[Effect]) -> bool:
    """Channels shared with another producer or meeting an add/concat."""
    producers = sum(1 for e in effects if e.role == "out" and e.node.type in (OPTYPE.CONV, OPTYPE.LINEAR))
    return producers > 1 or any(
        e.node.type == OPTYPE.CONCAT or (e.node.type == OPTYPE.ELEMENTWISE and len(e.node.inputs) > 1)
        for e in effects)


def _unsupported(dg: tp.DependencyGraph, model: nn.Module) -> list[tuple[str, set[int]]]:
    """(name, parameter ids) of modules whose weights torch-pruning traced as bare parameters
    (no pruner for their type); the model's own parameters are named one by one."""
    traced = {id(k) for k in dg.module2node if isinstance(k, nn.Parameter)}
    found = []
    for name, module in model.named_modules():
        hits = [(pname, id(p)) for pname, p in module.named_parameters(recurse=False) if id(p) in traced]
        if name and hits:
            found.append((name, {i for _, i in hits}))
        elif hits:
            found += [(pname, {i}) for pname, i in hits]
    return found


def _ignored_ids(model: nn.Module, ignore: Sequence[str]) -> set[int]:
    """Ids of the modules named in `ignore`, everything inside them, and their parameters."""
    ids: set[int] = set()
    for name in ignore:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            try:
                ids.add(id(model.get_parameter(name)))
            except AttributeError:
                raise WorkbenchError(f"prune.ignore: '{name}' is not a module or parameter of the model") from None
            continue
        ids.update(id(m) for m in module.modules())
        ids.update(id(p) for p in module.parameters())
    return ids
