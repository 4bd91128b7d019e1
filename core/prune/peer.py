"""The peer a user would pick instead of the method: Torch-Pruning's own pipeline.

Its `MetaPruner` ranks every channel of the model's prunable groups together (global
pruning) by a magnitude importance and removes the lowest; the pruning ratio that lands the
network on a FLOPs target (a fraction of the baseline's) is found by bisection. Each try only
asks the pruner which channels it would remove (interactive mode), so the model is never
touched; the FLOPs of a try are the planner's exact prediction for those keep counts. The
groups offered are the planner's (for the paper's CIFAR families the internal channels, which
is also what Torch-Pruning prunes there on its own), so the result is applied, saved and
reloaded like any other plan.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from core.errors import WorkbenchError
from core.models.torch_pruning_lib import tp
from core.prune.groups import dependency_graph, group_effects

if TYPE_CHECKING:
    from core.prune.plan import Planner

IMPORTANCES = ("magnitude", "group-norm")
TOLERANCE = 0.01    # the achieved FLOPs lie within 1% of the target
MAX_RATIO = 0.95    # the widest global pruning ratio tried
STEPS = 30          # bisection steps


def importance(name: str) -> tp.importance.Importance:
    """`magnitude`: the L1 norm of each root conv's filters (Li et al.; torch-pruning's L1 of "the
    first layer in a group"); `group-norm`: DepGraph's group L2 norm over every layer of the group
    (torch-pruning's default). Both are divided by their layer's mean (torch-pruning's default
    normaliser), so the global ranking weighs layers alike."""
    if name == "magnitude":
        return tp.importance.MagnitudeImportance(p=1, group_reduction="first")
    if name == "group-norm":
        return tp.importance.MagnitudeImportance(p=2)  # group_reduction "mean", normalizer "mean"
    raise WorkbenchError(f"prune.importance: unknown '{name}': use one of {', '.join(IMPORTANCES)}")


def scope(planner: Planner) -> tuple[list[nn.Module], dict[int, str]]:
    """What torch-pruning may prune: every conv/linear whose output channels belong to none of
    the planner's groups is ignored; `owner` maps each module whose output channels a group
    holds (its root, a depthwise conv that follows) to that group's name."""
    model = planner.model
    dg = dependency_graph(model, planner.input_shape, planner.arch.model)
    owner = {id(e.module): g.name for g in planner.groups
             for e in group_effects(dg, model.get_submodule(g.name)) if e.role != "in"}
    ignored = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in owner]
    return ignored, owner


def pruner_keep(planner: Planner, ratio: float, importance_name: str, multiple_of: int = 1,
                within: tuple[list[nn.Module], dict[int, str]] | None = None) -> dict[str, list[int]]:
    """The channels torch-pruning's global pruner keeps of each of the planner's groups at
    pruning ratio `ratio` (the model is left untouched); `within` is `scope(planner)`, computed
    here when not given. A group it would empty raises."""
    model = planner.model
    ignored, owner = within or scope(planner)
    param = next(model.parameters())
    example = torch.zeros(1, *planner.input_shape, device=param.device)
    was_training = model.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(model, example, importance=importance(importance_name), global_pruning=True,
                                      pruning_ratio=ratio, ignored_layers=ignored,
                                      round_to=multiple_of if multiple_of > 1 else None)
        dropped = {owner[id(group[0].dep.target.module)]: group[0].idxs for group in pruner.step(interactive=True)}
    model.train(was_training)
    keep = {}
    for g in planner.groups:
        kept = torch.ones(g.channels, dtype=torch.bool)
        kept[torch.as_tensor(dropped.get(g.name, []), dtype=torch.long)] = False
        if not kept.any():
            raise WorkbenchError(f"torch-pruning would remove every channel of {g.name} at pruning ratio {ratio:.3f}")
        keep[g.name] = kept.nonzero().flatten().tolist()
    return keep


def flops_target_keep(planner: Planner, target: float, importance_name: str,
                      multiple_of: int = 1) -> tuple[dict[str, list[int]], float]:
    """The keep lists of torch-pruning's global pruner at the pruning ratio whose predicted FLOPs
    are closest to `target` x the baseline's (bisection), and that ratio; one line if the
    closest lands further than 1% from the target."""
    base = planner.baseline[1]
    goal = target * base

    def flops(keep: dict[str, list[int]]) -> int:
        return planner.cost.cost({name: len(kept) for name, kept in keep.items()})[1]

    within = scope(planner)
    full = {g.name: list(range(g.channels)) for g in planner.groups}
    best = (abs(base - goal), full, 0.0)
    lo, hi = 0.0, MAX_RATIO
    for _ in range(STEPS):
        ratio = (lo + hi) / 2
        try:
            keep = pruner_keep(planner, ratio, importance_name, multiple_of, within)
        except WorkbenchError:  # too far: a layer would vanish
            hi = ratio
            continue
        got = flops(keep)
        if abs(got - goal) < best[0]:
            best = (abs(got - goal), keep, ratio)
        if abs(got - goal) <= goal * TOLERANCE / 10:
            break
        lo, hi = (ratio, hi) if got > goal else (lo, ratio)
    if best[0] > goal * TOLERANCE:
        closest = flops(best[1]) / base
        raise WorkbenchError(f"prune.flops: torch-pruning ({importance_name}) cannot reach {target:.4f} of the "
                             f"baseline FLOPs within 1% (closest {closest:.4f}, at pruning ratio {best[2]:.3f}); "
                             "choose another target")
    return best[1], best[2]
