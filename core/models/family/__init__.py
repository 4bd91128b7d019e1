"""The model-family registry: every family question goes to `family_of(name_or_arch)`.

Families are asked in order; the first that claims a name answers for it. torchvision is
last and claims every name left (building an unknown one is the one-line error). Adding a
family is one module with a `Family` subclass, registered here or with `register`.
"""

from __future__ import annotations

import torch

from core.models.arch import Arch
from core.models.family.base import Family
from core.models.family.cifar_mobilenet import CifarMobileNetV1s, CifarMobileNetV2s
from core.models.family.cifar_resnet import CifarResNets
from core.models.family.factory import UserFactories
from core.models.family.hugging_face import HuggingFaceModels
from core.models.family.timm_models import TimmModels
from core.models.family.torchvision_models import TorchvisionModels

FAMILIES: list[Family] = [CifarResNets(), CifarMobileNetV1s(), CifarMobileNetV2s(), TimmModels(),
                          HuggingFaceModels(), UserFactories(), TorchvisionModels()]

__all__ = ["FAMILIES", "Family", "family_of", "recognise", "register"]


def register(family: Family) -> Family:
    """Add `family`, asked before every family registered so far; returns it."""
    FAMILIES.insert(0, family)
    return family


def family_of(name_or_arch: str | Arch) -> Family:
    """The family that answers for a model name (or an Arch's model)."""
    name = name_or_arch if isinstance(name_or_arch, str) else name_or_arch.model
    return next(f for f in FAMILIES if f.claims(name))


def recognise(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The model name a bare state dict's keys imply, when some family recognises them."""
    return next((name for f in FAMILIES if (name := f.recognise(state_dict))), None)
