"""The embedded demo: a CIFAR-style ResNet-20 trained on scikit-learn's digits (8x8, 1 channel).

The weights ship inside the package (`core/assets/`), written by `scripts/train_demo.py`.
"""

from __future__ import annotations

from pathlib import Path

from core.models.arch import Arch

DEMO_WEIGHTS = Path(__file__).parents[1] / "assets" / "demo_resnet20_digits.safetensors"


def demo_arch() -> Arch:
    """ResNet-20, 10 classes, 1 input channel, unpruned widths."""
    return Arch(model="resnet20", num_classes=10, in_channels=1)
