"""torch-pruning's dependency graph of a model, and replaying a recorded pruning history on a
freshly built one, so a structurally pruned model (of no width-list family) reloads from its
Arch alone: `arch.extra["pruning_history"]`, traced on `arch.extra["pruning_input_shape"]`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from core.errors import WorkbenchError, describe
from core.models.arch import Arch
from core.models.family import family_of

HISTORY = "pruning_history"
HISTORY_INPUT = "pruning_input_shape"


def dependency_graph(model: nn.Module, input_shape: Sequence[int], label: str | None = None):
    """torch-pruning's dependency graph of `model`, traced on one zero image of `input_shape`
    (torch-pruning is loaded only here: opening a model does not need it)."""
    from core.models.torch_pruning_lib import tp

    was_training = model.training
    param = next(model.parameters(), None)
    example = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu")
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(model, example, verbose=False)
    except Exception as exc:  # user models fail in many ways; the user sees one line
        raise WorkbenchError(
            f"torch-pruning cannot trace {label or type(model).__name__} on a {tuple(input_shape)} input "
            f"({describe(exc)}); check the input shape, or keep the offending layers whole with ignore"
        ) from None
    finally:
        model.train(was_training)


def rebuild_structure(model: nn.Module, arch: Arch, input_shape: Sequence[int] | None = None) -> nn.Module:
    """Prune freshly built `model` in place as `arch.extra["pruning_history"]` records, and return it.

    `input_shape` defaults to the shape recorded when the model was pruned.
    """
    shape = input_shape or arch.extra.get(HISTORY_INPUT) or family_of(arch).input_shape(arch)
    dg = dependency_graph(model, shape, arch.model)
    try:
        dg.load_pruning_history(arch.extra[HISTORY])
    except (AttributeError, ValueError, IndexError, AssertionError, RuntimeError) as exc:
        raise WorkbenchError(
            f"cannot re-create the pruned {arch.model} from its pruning history ({describe(exc)}); "
            "the checkpoint's metadata does not fit this model"
        ) from None
    return model
