"""Build any supported model from a name, through its family (core.models.family): the paper's
CIFAR families, torchvision classifiers (never downloading), `timm:`/`hf:` models, or a user
factory given as `package.module:function`.

An `Arch` (core.models.arch) is everything needed to rebuild a model without pickle; it
travels with saved weights (safetensors metadata) so a compressed model reloads from data alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.errors import WorkbenchError
from core.models.arch import Arch
from core.models.family import family_of

__all__ = ["Arch", "build", "is_cifar_family", "pretrained_file"]


def is_cifar_family(name: str) -> bool:
    """Whether `name` rebuilds from a width list (the paper's CIFAR families, the demo)."""
    return family_of(name).widths


def build(arch: Arch) -> nn.Module:
    """A freshly initialised model for `arch` (no weights loaded, nothing downloaded)."""
    return family_of(arch).build(arch)


def pretrained_file(name: str, weights: str) -> Path:
    """Where torchvision keeps the `weights` of model `name` on disk; error if absent.

    Nothing is downloaded: the file must already be in torch's hub cache (copy it there,
    or pass it as a checkpoint).
    """
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(name)
        entry = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except (ValueError, KeyError):
        raise WorkbenchError(f"model '{name}' has no torchvision weights named '{weights}'") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
    if not path.is_file():
        raise WorkbenchError(
            f"pretrained weights {name}/{entry.name.split('.')[-1]} are not on disk ({path}) and the workbench "
            "never downloads: fetch the file elsewhere and copy it there, or pass it with --checkpoint"
        )
    return path
