"""A user model factory for import-string tests (`tests.fixtures_models:tiny_net`)."""

from torch import nn


def tiny_net(num_classes: int = 10) -> nn.Module:
    """Conv-BN-ReLU, global pool, linear: the smallest CNN a user might plug in."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def plain_digits_net(num_classes: int = 10) -> nn.Module:
    """A BN-free CNN for 1-channel 8x8 digits: its training does not depend on how a batch is
    split across processes, so a DDP run must match a single-process one."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )
