"""Structural pruning with torch-pruning: a genuinely smaller dense copy of the model.

torch-pruning copies the kept filters, BN affine parameters and running statistics, and
slices the inputs of the layers that read the pruned channels. Width-list families (the
paper's CIFAR ones) come back with `arch.cfg` set to the new widths (they rebuild from
`zoo.build`); any other model records torch-pruning's pruning history in `arch.extra`, which
`rebuild_structure` (core.models.pruning_history) replays on a freshly built model so a saved
pruned model reloads from safetensors alone.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.atomic import atomic_path
from core.errors import WorkbenchError, describe
from core.models.arch import Arch
from core.models.family import family_of
from core.models.pruning_history import (
    HISTORY,
    HISTORY_INPUT,
    dependency_graph,
    rebuild_structure,
)
from core.models.torch_pruning_lib import tp
from core.prune.groups import graph_groups

__all__ = ["HISTORY", "HISTORY_INPUT", "apply_pruning", "rebuild_structure", "save_reference_format"]


def apply_pruning(model: nn.Module, arch: Arch, keep: dict[str, list[int]],
                  input_shape: Sequence[int]) -> tuple[nn.Module, Arch]:
    """A pruned copy of `model` keeping `keep[root]` output channels of each named group.

    `model` is left untouched. Roots not in `keep` stay whole. Returns the new model (in the
    input model's train/eval mode) and its Arch.
    """
    pruned = copy.deepcopy(model)
    dg = dependency_graph(pruned, input_shape, arch.model)
    groups = {g.name: g for g in graph_groups(dg, pruned, arch, coupled=True)}
    for name, idxs in keep.items():
        if name not in groups:
            listed = ", ".join(list(groups)[:6]) + (", ..." if len(groups) > 6 else "")
            raise WorkbenchError(f"'{name}' is not a prunable layer of {arch.model} (prunable: {listed or 'none'})")
        drop = _dropped(name, idxs, groups[name].channels)
        if drop:
            dg.get_pruning_group(pruned.get_submodule(name), tp.prune_conv_out_channels, drop).prune()
    _check_runs(pruned, input_shape, arch.model)
    family = family_of(arch)
    if family.widths:
        base = family.resolve(arch)
        pruned.cfg = family.cfg_from_state_dict(base.model, pruned.state_dict())
        return pruned, replace(base, cfg=pruned.cfg)
    history = [[name, bool(out), list(idxs)] for name, out, idxs in dg.pruning_history()]
    extra = {**arch.extra, HISTORY: arch.extra.get(HISTORY, []) + history, HISTORY_INPUT: list(input_shape)}
    return pruned, replace(arch, extra=extra)


def save_reference_format(model: nn.Module, arch: Arch, path: str | Path) -> None:
    """Write `{'cfg': widths, 'state_dict': ...}` as the paper's step-1 scripts do, atomically.

    Width-list (CIFAR) families only: other models have no width list (save them with `save_model`).
    """
    if not family_of(arch).widths:
        raise WorkbenchError(
            f"the reference cfg+state_dict format exists only for the paper's CIFAR models, not {arch.model}; "
            "save it as safetensors instead"
        )
    cfg = list(arch.cfg if arch.cfg is not None else model.cfg)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"cfg": cfg, "state_dict": state}, tmp)


def _dropped(name: str, idxs: list[int], channels: int) -> list[int]:
    """The channel indices of group `name` not in `idxs` (which must be valid and distinct)."""
    kept = np.asarray(idxs)
    if kept.size == 0 or kept.ndim != 1 or not np.issubdtype(kept.dtype, np.integer):
        raise WorkbenchError(f"{name}: keep at least one channel, as a list of channel indices")
    if kept.min() < 0 or kept.max() >= channels:
        raise WorkbenchError(f"{name}: channel indices must lie in 0..{channels - 1}, got {kept.min()}..{kept.max()}")
    if np.unique(kept).size != kept.size:
        raise WorkbenchError(f"{name}: channel indices to keep repeat")
    return np.setdiff1d(np.arange(channels), kept).tolist()


@torch.no_grad()
def _check_runs(model: nn.Module, input_shape: Sequence[int], label: str) -> None:
    """One forward pass in eval mode, so a structure torch-pruning got wrong fails here, clearly."""
    was_training = model.training
    param = next(model.parameters(), None)
    try:
        model.eval()(torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu"))
    except RuntimeError as exc:
        raise WorkbenchError(f"the pruned {label} does not run ({describe(exc)}); leave the layers involved whole") from None
    finally:
        model.train(was_training)
