"""The paper's CIFAR MobileNets (stride-1 stems for 32x32 inputs), with width lists.

Module names match the reference scripts (`conv1`, `bn1`, `layers.N.convK`, `linear`), so
reference checkpoints load directly.

MobileNet v1: `cfg` has 27 widths: cfg[0] is the stem, then for each of the 13 blocks
(depthwise 3x3, pointwise 1x1) the depthwise output width cfg[2i+1] (equal to its input
width) and the pointwise output width cfg[2i+2]. The depthwise convs at cfg indices 11 and
23 have stride 2.

MobileNet v2: `cfg` has 38 widths, two per inverted-residual block: the expansion 1x1
output and the depthwise 3x3 output (equal). Block input/output widths are fixed
(`V2_BLOCK_WIDTHS`); blocks 6 and 15 have stride 2; stride-1 blocks add a shortcut
(a 1x1 conv + BN where the width changes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.models.cifar_resnet import init_weights

V1_CFG = [32, 32, 64, 64, 128, 128, 128, 128, 256, 256, 256, 256, 512] + [512] * 10 + [512, 1024, 1024, 1024]
V1_STRIDE2 = (11, 23)

V2_BLOCK_WIDTHS = [32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 96, 96, 160, 160, 160, 320]
V2_EXPANSIONS = [32, 96, 144, 144, 192, 192, 192, 384, 384, 384, 384, 576, 576, 576, 576, 960, 960, 960, 960]
V2_CFG = [w for e in V2_EXPANSIONS for w in (e, e)]
V2_STRIDE2_BLOCKS = (6, 15)


class V1Block(nn.Module):
    """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""

    def __init__(self, in_planes: int, mid: int, out_planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mid, 3, stride, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, out_planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class CifarMobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 10, cfg: list[int] | None = None, in_channels: int = 3):
        super().__init__()
        cfg = list(cfg) if cfg is not None else list(V1_CFG)
        if len(cfg) != len(V1_CFG):
            raise ValueError(f"MobileNet v1 needs {len(V1_CFG)} widths in cfg, got {len(cfg)}")
        self.cfg, self.in_channels = cfg, in_channels
        self.conv1 = nn.Conv2d(in_channels, cfg[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg[0])
        self.layers = nn.Sequential(
            *(V1Block(cfg[i - 1], cfg[i], cfg[i + 1], 2 if i in V1_STRIDE2 else 1) for i in range(1, len(cfg), 2))
        )
        self.linear = nn.Linear(cfg[-1], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class V2Block(nn.Module):
    """Expansion 1x1, depthwise 3x3, projection 1x1; shortcut on stride-1 blocks."""

    def __init__(self, in_planes: int, out_planes: int, expand: int, depthwise: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, expand, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(expand)
        self.conv2 = nn.Conv2d(expand, depthwise, 3, stride, 1, groups=expand, bias=False)
        self.bn2 = nn.BatchNorm2d(depthwise)
        self.conv3 = nn.Conv2d(depthwise, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, cfg: list[int] | None = None, in_channels: int = 3):
        super().__init__()
        cfg = list(cfg) if cfg is not None else list(V2_CFG)
        if len(cfg) != len(V2_CFG):
            raise ValueError(f"MobileNet v2 needs {len(V2_CFG)} widths in cfg, got {len(cfg)}")
        self.cfg, self.in_channels = cfg, in_channels
        self.conv1 = nn.Conv2d(in_channels, V2_BLOCK_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(V2_BLOCK_WIDTHS[0])
        self.layers = nn.Sequential(
            *(
                V2Block(V2_BLOCK_WIDTHS[k], V2_BLOCK_WIDTHS[k + 1], cfg[2 * k], cfg[2 * k + 1],
                        2 if k in V2_STRIDE2_BLOCKS else 1)
                for k in range(len(cfg) // 2)
            )
        )
        self.conv2 = nn.Conv2d(V2_BLOCK_WIDTHS[-1], 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def v1_cfg_from_state_dict(sd: dict[str, torch.Tensor]) -> list[int]:
    cfg = [int(sd["bn1.weight"].shape[0])]
    for i in range(len(V1_CFG) // 2):
        cfg += [int(sd[f"layers.{i}.bn1.weight"].shape[0]), int(sd[f"layers.{i}.bn2.weight"].shape[0])]
    return cfg


def v2_cfg_from_state_dict(sd: dict[str, torch.Tensor]) -> list[int]:
    return [int(sd[f"layers.{k}.bn{j}.weight"].shape[0]) for k in range(len(V2_CFG) // 2) for j in (1, 2)]
