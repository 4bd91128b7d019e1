"""Where the "multiple auxiliary MSE losses" variant (METHOD.md step 3) cuts a network.

A pivot is the output of a residual block, counted in blocks (pivot p = output of block p,
1-based); loss k < last matches student and teacher outputs there, the last loss is on the
logits. The trainer backpropagates sum_k gamma_k * L_k once, which equals the paper's
nested SGD optimizers; `loss_reach` says how many losses reach each parameter (for weight
decay, applied once per optimizer covering it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import WorkbenchError
from core.finetune.settings import FinetuneStage
from core.models.arch import Arch
from core.models.family import family_of


@dataclass
class Pivots:
    """Pivot modules (one per auxiliary loss, in order), their positions, the final loss's
    position `last` (the block count), and the weights `gammas` (n_losses + 1, the last 1.0)."""

    modules: list[str]
    positions: list[int]
    last: int
    gammas: list[float]


def block_names(model: nn.Module, arch: Arch) -> list[str]:
    """Names of the residual / inverted-residual blocks of `model`, in order (its family's answer)."""
    blocks = family_of(arch).blocks(model)
    if blocks is None:
        raise WorkbenchError(f"{arch.model} has no known residual blocks to place auxiliary losses at: "
                             "set pivot_modules (module names) in the [[finetune]] stage, or use mode = \"mse\"")
    return blocks


def even_pivots(blocks: int, n_losses: int) -> list[int]:
    """METHOD.md's even cut: per = blocks // (n_losses+1) + 1, pivot_i = min(per*(i+1), blocks-1)."""
    per = blocks // (n_losses + 1) + 1
    pivots = [min(per * (i + 1), blocks - 1) for i in range(n_losses)]
    if pivots[0] < 1 or len(set(pivots)) < n_losses:
        raise WorkbenchError(f"{n_losses} auxiliary losses do not fit {blocks} blocks (pivots {pivots}): "
                             "lower n_losses in the [[finetune]] stage")
    return pivots


def pivot_weights(positions: list[int], decay: float) -> list[float]:
    """Eq. 14: gamma_k = max((pivot_k / pivot_K) ** decay, 0.01) per auxiliary loss, then 1.0
    for the final (CE + MSE) loss, which is not scaled.

    pivot_K is the LAST AUXILIARY pivot (the reference's pivot_set[-1], METHOD.md), not the
    block count: ResNet-56 pivots [9, 18] with v = 3 give [0.125, 1.0, 1.0].
    """
    return [max((p / positions[-1]) ** decay, 0.01) for p in positions] + [1.0]


def resolve_pivots(model: nn.Module, arch: Arch, stage: FinetuneStage) -> Pivots:
    """The stage's pivots: `pivot_modules`, else `pivots` (block counts), else the family's
    predefined ones (ResNet-56/110), else the even cut."""
    if stage.pivot_modules is not None:
        names = [n for n, _ in model.named_modules()]
        missing = next((n for n in stage.pivot_modules if n not in names[1:]), None)
        if missing is not None:
            raise WorkbenchError(f"pivot_modules: {arch.model} has no module '{missing}'")
        positions = [names.index(n) + 1 for n in stage.pivot_modules]
        return Pivots(list(stage.pivot_modules), positions, len(names),
                      pivot_weights(positions, stage.decay))
    blocks = block_names(model, arch)
    if stage.pivots is not None:
        if stage.pivots[-1] >= len(blocks):
            raise WorkbenchError(f"pivots {stage.pivots} must be below the {len(blocks)} blocks of {arch.model}")
        positions = list(stage.pivots)
    else:
        positions = family_of(arch).pivots(model, stage.n_losses) or even_pivots(len(blocks), stage.n_losses)
    return Pivots([blocks[p - 1] for p in positions], list(positions), len(blocks),
                  pivot_weights(positions, stage.decay))


@contextmanager
def capture(model: nn.Module, names: list[str]) -> Iterator[list]:
    """Hooks on the named modules; the yielded list holds their outputs of the latest forward
    pass of `model`, in `names` order (None for a module that did not run). Hooks are removed on exit."""
    outputs: list = [None] * len(names)

    def reset(module, args):
        outputs[:] = [None] * len(names)

    def keep(i):
        return lambda module, args, output: outputs.__setitem__(i, output)

    hooks = [model.register_forward_pre_hook(reset)]
    hooks += [model.get_submodule(n).register_forward_hook(keep(i)) for i, n in enumerate(names)]
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()


def loss_reach(model: nn.Module, pivots: Pivots, input_shape: tuple[int, ...]) -> dict[str, int]:
    """For every trainable parameter, how many of the n_losses + 1 losses reach it (0: none).

    Found with autograd on a dummy batch of 2 in eval mode; the model's state (training flags,
    buffers, gradients) is left as it was."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    first = next(iter(params.values()))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.enable_grad(), capture(model, pivots.modules) as outs:
            logits = model(torch.zeros(2, *input_shape, device=first.device, dtype=first.dtype))
            for name, out in zip(pivots.modules, outs):
                if not isinstance(out, torch.Tensor):
                    raise WorkbenchError(f"pivot module '{name}' gave {type(out).__name__}, not a tensor, "
                                         "in a forward pass: choose modules that run and output a tensor")
            reach = torch.zeros(len(params), dtype=torch.int64)
            for out in [*outs, logits]:
                grads = torch.autograd.grad(out.sum(), list(params.values()), allow_unused=True, retain_graph=True)
                reach += torch.tensor([g is not None for g in grads])
    finally:
        for m, training in modes.items():
            m.training = training
    return dict(zip(params, reach.tolist()))
