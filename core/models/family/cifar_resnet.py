"""The paper's CIFAR ResNets (resnet20/32/44/56/110) and the embedded demo (a ResNet-20 on 8x8
digits): widths from BN shapes, block conv1 pruned, both block convs decomposed, and the
ResNet-56/110 reference scripts' constants."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch
from torch import nn

from core.models import demo
from core.models.arch import Arch
from core.models.cifar_resnet import (
    DEPTHS,
    BasicBlock,
    CifarResNet,
    cfg_from_state_dict,
    depth_from_state_dict,
)
from core.models.family.base import Family
from core.models.names import DEMO

PIVOTS = {56: {1: [18], 2: [9, 18]}, 110: {1: [18], 2: [18, 36]}}  # depth -> n_losses -> reference pivots


def depth(name: str) -> int | None:
    """20 for `resnet20`, ...; None for a name that is no CIFAR ResNet."""
    digits = name[len("resnet"):]
    return int(digits) if name.startswith("resnet") and digits.isdigit() and int(digits) in DEPTHS else None


class CifarResNets(Family):
    label = "CIFAR ResNet"
    widths = True
    input_size = 32
    reference_rows: ClassVar = {  # METHOD.md's table
        ("resnet56", "cifar10"): (3.7, (0.905, 0.095), (0.01, 0.72), (0.03, 0.46)),
        ("resnet110", "cifar10"): (3.159, (0.875, 0.121), (0.0, 0.69), (0.02, 0.5)),
        ("resnet56", "cifar100"): (8.7, (0.75, 0.2), None, None),
        ("resnet110", "cifar100"): (3.159, (0.8, 0.2), None, None),
    }
    smoothing: ClassVar = {"resnet110": {"p2_divisor": 4.67, "p2_factor": 1.0, "p3_scale": 1e15, "p3_divisor": 25.0}}
    p5_variants: ClassVar = {
        "resnet56": {
            "A": ([18, 36], [0.1, 0.1, 0.1], [16, 20, 38, 54]),
            "B": ([18, 36], [0.6, 0.3, 0.1], [16, 18, 20, 34, 38, 54]),
            "C": ([18, 36], [0.8, 0.5, 0.3], [16, 18, 20, 34, 38, 54]),
        },
        "resnet110": {
            "A": ([36, 72], [0.5, 0.0, 0.0], [36]),
            "B": ([36, 72], [0.5, 0.4, 0.3], [36, 38, 74]),
        },
    }

    def claims(self, name: str) -> bool:
        return name == DEMO or depth(name) is not None

    def resolve(self, arch: Arch) -> Arch:
        return replace(demo.demo_arch(), extra=arch.extra) if arch.model == DEMO else arch

    def build(self, arch: Arch) -> nn.Module:
        arch = self.resolve(arch)
        return CifarResNet(depth(arch.model), arch.num_classes or 10, arch.cfg, arch.in_channels)

    def recognise(self, state_dict: dict[str, torch.Tensor]) -> str | None:
        found = depth_from_state_dict(state_dict)
        return f"resnet{found}" if found else None

    def cfg_from_state_dict(self, name: str, state_dict: dict[str, torch.Tensor]) -> list[int] | None:
        try:
            return cfg_from_state_dict(state_dict, depth(self.resolve(Arch(name)).model))
        except KeyError:
            return None

    def input_shape(self, arch: Arch) -> tuple[int, int, int]:
        """8x8 single-channel digits for the demo (a 1-channel ResNet-20), else 32x32."""
        if arch.model == DEMO or (arch.model == "resnet20" and arch.in_channels == 1):
            return (1, 8, 8)
        return super().input_shape(arch)

    def prunable_roots(self, model: nn.Module) -> list[str]:
        """Every block's conv1 (its internal channels)."""
        return [f"{name}.conv1" for name, m in model.named_modules() if isinstance(m, BasicBlock)]

    def default_layers(self, model: nn.Module) -> list[str]:
        """conv1 and conv2 of every residual block."""
        return [f"{n}.{c}" for n, b in model.named_modules() if isinstance(b, BasicBlock) for c in ("conv1", "conv2")]

    def blocks(self, model: nn.Module) -> list[str]:
        stages = [n for n in ("layer1", "layer2", "layer3") if hasattr(model, n)]
        return [f"{s}.{i}" for s in stages for i in range(len(model.get_submodule(s)))]

    def pivots(self, model: nn.Module, n_losses: int) -> list[int] | None:
        """The ResNet-56/110 scripts' pivots."""
        return PIVOTS.get(getattr(model, "depth", None), {}).get(n_losses)
