"""torchvision classifiers by builder name (never downloading): the fallback family, asked last.
Its ResNets and MobileNetV2 have known residual blocks."""

from __future__ import annotations

from torch import nn

from core.models.arch import Arch
from core.models.family.base import Family
from core.models.names import check_model_name


def torchvision_blocks(model: nn.Module) -> list[str] | None:
    """The residual blocks of a torchvision ResNet (`layerS.B`) or MobileNetV2 (its
    InvertedResidual `features.N`); None for any other model."""
    import torchvision.models as tvm
    from torchvision.models.mobilenetv2 import InvertedResidual

    if isinstance(model, tvm.ResNet):
        stages = [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, n)]
        return [f"{s}.{i}" for s in stages for i in range(len(model.get_submodule(s)))]
    if isinstance(model, tvm.MobileNetV2):
        return [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, InvertedResidual)]
    return None


class TorchvisionModels(Family):
    label = "torchvision classifier"

    def claims(self, name: str) -> bool:
        return True  # asked last: whatever no other family claims is a torchvision name, or an error

    def build(self, arch: Arch) -> nn.Module:
        check_model_name(arch.model)
        import torchvision.models as tvm

        kwargs = {"num_classes": arch.num_classes} if arch.num_classes else {}
        return tvm.get_model(arch.model, weights=None, **kwargs)

    def blocks(self, model: nn.Module) -> list[str] | None:
        return torchvision_blocks(model)
