"""The paper's CIFAR ResNets (depth 6n+2: 20, 32, 44, 56, 110).

Three stages of basic blocks with 16/32/64 output channels. Shortcuts are parameter-free:
a stride-2 block averages 2x2 and pads the new channels with zeros. `cfg` lists the internal
width of every block (output channels of its first conv), so a pruned network rebuilds
exactly from the reference `{'cfg': [...], 'state_dict': ...}` files. Module names match
the reference scripts (`conv1`, `bn1`, `layer1.0.conv1`, ..., `linear`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGE_WIDTHS = (16, 32, 64)
DEPTHS = (20, 32, 44, 56, 110)


class PadShortcut(nn.Module):
    """Parameter-free shortcut: 2x2 average pool (if strided) then zero channel padding."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride)
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = (
            PadShortcut(stride, planes - in_planes) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; `cfg` = internal width of each of the 3n blocks."""

    def __init__(self, depth: int = 56, num_classes: int = 10, cfg: list[int] | None = None, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        cfg = list(cfg) if cfg is not None else default_cfg(depth)
        if len(cfg) != 3 * n:
            raise ValueError(f"ResNet-{depth} needs {3 * n} block widths in cfg, got {len(cfg)}")
        self.depth, self.cfg, self.in_channels = depth, cfg, in_channels
        self.conv1 = nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        in_planes = STAGE_WIDTHS[0]
        for s, planes in enumerate(STAGE_WIDTHS):
            blocks = []
            for b in range(n):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, cfg[s * n + b], stride))
                in_planes = planes
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.linear(x)


def init_weights(model: nn.Module) -> None:
    """He-normal convs (fan out), BN scale 1 and shift 0: the CIFAR families' initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def default_cfg(depth: int) -> list[int]:
    """Unpruned internal widths: every block as wide as its stage."""
    n = (depth - 2) // 6
    return [w for w in STAGE_WIDTHS for _ in range(n)]


def cfg_from_state_dict(state_dict: dict[str, torch.Tensor], depth: int) -> list[int]:
    """Internal widths read off the `layerS.B.bn1.weight` shapes (works without a cfg entry)."""
    n = (depth - 2) // 6
    return [int(state_dict[f"layer{s + 1}.{b}.bn1.weight"].shape[0]) for s in range(3) for b in range(n)]


def depth_from_state_dict(state_dict: dict[str, torch.Tensor]) -> int | None:
    """6n+2 from the number of blocks in `layer1`, or None if this is not a CIFAR ResNet."""
    blocks = {k.split(".")[1] for k in state_dict if k.startswith("layer1.") and k.endswith("bn1.weight")}
    if not blocks or "linear.weight" not in state_dict or "layer4.0.bn1.weight" in state_dict:
        return None
    return 6 * len(blocks) + 2
