"""The questions a model family answers, in one small interface (README "Adding a model family").

Callers never test model names: they ask `core.models.family.family_of(name_or_arch)` and call
the answer. The defaults below are the generic answers (torch-pruning's graph decides what is
prunable, every dense conv larger than 1x1 but the stem is decomposed, no reference constants),
so a family overrides only what it knows better. The reference constants are plain data;
core.prune.strategies turns them into its own types.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from core.errors import WorkbenchError
from core.models.arch import Arch


class Family(ABC):
    """One model family. Subclass, implement `claims` and `build`, override what differs, and
    `core.models.family.register` an instance."""

    label = "model"                # what messages call it
    widths = False                 # rebuilds from a width list (`Arch.cfg`, the reference cfg+state_dict files)
    probe = True                   # may be built twice (a shape-only trial on the meta device before loading)
    classes_from_checkpoint = True  # the class count is read off a checkpoint's last 2-D weight
    input_size = 224               # height = width of the images it expects
    # the reference scripts' constants (METHOD.md), keyed by model name: default coef; (model, data set) ->
    # (coef, P1, P2, P3), each strategy's (Tmin, span) or None; P2/P3 smoothing fields; P5 variant ->
    # (stage bounds, ratios, skipped layer ids)
    coefs: ClassVar[dict[str, float]] = {}
    reference_rows: ClassVar[dict[tuple[str, str], tuple]] = {}
    smoothing: ClassVar[dict[str, dict[str, float]]] = {}
    p5_variants: ClassVar[dict[str, dict[str, tuple]]] = {}

    @abstractmethod
    def claims(self, name: str) -> bool:
        """Whether model name `name` belongs to this family."""

    @abstractmethod
    def build(self, arch: Arch) -> nn.Module:
        """A freshly initialised model for `arch` (nothing downloaded); may complete `arch`."""

    def resolve(self, arch: Arch) -> Arch:
        """The concrete Arch a name stands for (an alias such as `demo` becomes its model)."""
        return arch

    def recognise(self, state_dict: dict[str, torch.Tensor]) -> str | None:
        """The model name a bare state dict's keys imply, if it is one of this family's."""
        return None

    def cfg_from_state_dict(self, name: str, state_dict: dict[str, torch.Tensor]) -> list[int] | None:
        """The width list read off the BN shapes (families with `widths`); None if the keys do not fit."""
        return None

    def input_shape(self, arch: Arch) -> tuple[int, int, int]:
        """(C, H, W) of the images the model expects."""
        return (arch.in_channels, self.input_size, self.input_size)

    def prunable_roots(self, model: nn.Module) -> list[str] | None:
        """Convs whose output channels are pruned (METHOD.md's); None: every conv the graph allows."""
        return None

    def default_layers(self, model: nn.Module) -> list[str] | None:
        """Layers decomposed when the session names none; None: the generic rule."""
        return None

    def blocks(self, model: nn.Module) -> list[str] | None:
        """Residual blocks, in order (auxiliary-loss pivots); None: none known."""
        return None

    def pivots(self, model: nn.Module, n_losses: int) -> list[int] | None:
        """The reference's pivots (1-based block counts) for `n_losses` auxiliary losses; None: the even cut."""
        return None


def after_prefix(arch: Arch, prefix: str) -> str:
    """What follows `prefix` (`timm:`, `hf:`) in the model name; one error line when nothing does."""
    ref = arch.model[len(prefix):]
    if not ref:
        raise WorkbenchError(f"model '{arch.model}' names nothing: write {prefix}NAME")
    return ref
