"""The paper's CIFAR MobileNets v1 and v2 (`mobilenet_v1_cifar`, `mobilenet_v2_cifar`): widths
from BN shapes, METHOD.md's prunable channels and decomposed layers, and the reference
scripts' constants."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from core.models.arch import Arch
from core.models.cifar_mobilenet import (
    CifarMobileNetV1,
    CifarMobileNetV2,
    V1Block,
    V2Block,
    v1_cfg_from_state_dict,
    v2_cfg_from_state_dict,
)
from core.models.family.base import Family


class _CifarMobileNet(Family):
    """What both versions share: one name, widths, 32x32 inputs, blocks in `layers`."""

    widths = True
    input_size = 32
    model_name = ""
    _cfg: Callable[[dict[str, torch.Tensor]], list[int]]  # the version's width reader

    def claims(self, name: str) -> bool:
        return name == self.model_name

    def cfg_from_state_dict(self, name: str, state_dict: dict[str, torch.Tensor]) -> list[int] | None:
        try:
            return self._cfg(state_dict)
        except KeyError:
            return None

    def blocks(self, model: nn.Module) -> list[str]:
        return [f"layers.{i}" for i in range(len(model.layers))]


class CifarMobileNetV1s(_CifarMobileNet):
    label = "CIFAR MobileNet v1"
    model_name = "mobilenet_v1_cifar"
    coefs: ClassVar = {model_name: 2.52}
    reference_rows: ClassVar = {
        (model_name, "cifar10"): (2.52, (0.55, 0.45), None, None),
        (model_name, "cifar100"): (4.09, (0.25, 0.75), None, None),
    }
    _cfg = staticmethod(v1_cfg_from_state_dict)

    def build(self, arch: Arch) -> nn.Module:
        return CifarMobileNetV1(arch.num_classes or 10, arch.cfg, arch.in_channels)

    def recognise(self, state_dict: dict[str, torch.Tensor]) -> str | None:
        keys = "linear.weight" in state_dict and any(k.startswith("layers.0.conv2.") for k in state_dict)
        return self.model_name if keys and not any(k.startswith("layers.0.conv3.") for k in state_dict) else None

    def prunable_roots(self, model: nn.Module) -> list[str]:
        """The pointwise conv of every block but the last."""
        return [f"layers.{i}.conv2" for i in range(len(model.layers) - 1)]

    def default_layers(self, model: nn.Module) -> list[str]:
        """The pointwise convs."""
        return [f"{n}.conv2" for n, b in model.named_modules() if isinstance(b, V1Block)]


class CifarMobileNetV2s(_CifarMobileNet):
    label = "CIFAR MobileNet v2"
    model_name = "mobilenet_v2_cifar"
    coefs: ClassVar = {model_name: 2.4}
    reference_rows: ClassVar = {
        (model_name, "cifar10"): (2.4, (0.3, 0.7), None, None),
        (model_name, "cifar100"): (2.2, (0.08, 0.92), None, None),
    }
    _cfg = staticmethod(v2_cfg_from_state_dict)

    def build(self, arch: Arch) -> nn.Module:
        return CifarMobileNetV2(arch.num_classes or 10, arch.cfg, arch.in_channels)

    def recognise(self, state_dict: dict[str, torch.Tensor]) -> str | None:
        keys = "linear.weight" in state_dict and any(k.startswith("layers.0.conv3.") for k in state_dict)
        return self.model_name if keys else None

    def prunable_roots(self, model: nn.Module) -> list[str]:
        """The expansion conv of every block."""
        return [f"layers.{k}.conv1" for k in range(len(model.layers))]

    def default_layers(self, model: nn.Module) -> list[str]:
        """What the reference decomposition script's filter picks (names ending in conv1, conv3 or 0):
        the stem, each block's expansion and projection 1x1 convs and its shortcut conv."""
        blocks = [(n, b) for n, b in model.named_modules() if isinstance(b, V2Block)]
        return ["conv1"] + [f"{n}.{c}" for n, b in blocks
                            for c in ("conv1", "conv3", "shortcut.0") if c != "shortcut.0" or len(b.shortcut)]
