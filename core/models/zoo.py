"""Build any supported model from a name: the paper's CIFAR families, torchvision
classifiers (never downloading), or a user factory given as `package.module:function`.

An `Arch` is everything needed to rebuild a model without pickle; it travels with saved
weights (safetensors metadata) so a compressed model reloads from data alone.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.errors import WorkbenchError
from core.models.cifar_mobilenet import CifarMobileNetV1, CifarMobileNetV2
from core.models.cifar_resnet import DEPTHS, CifarResNet
from core.models.families import build_family, is_family
from core.models.names import CIFAR_MODELS, DEMO, check_model_name, is_factory



@dataclass
class Arch:
    """A rebuildable model description: name, classes, input channels and widths."""

    model: str
    num_classes: int | None = None
    in_channels: int = 3
    cfg: list[int] | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        return cls(**json.loads(text))


def is_cifar_family(name: str) -> bool:
    return name in CIFAR_MODELS or name == DEMO


def build(arch: Arch) -> nn.Module:
    """A freshly initialised model for `arch` (no weights loaded, nothing downloaded)."""
    name, classes = arch.model, arch.num_classes
    if name == DEMO:
        from core.demo import demo_arch

        return build(demo_arch())
    if name.startswith("resnet") and name[6:].isdigit() and int(name[6:]) in DEPTHS:
        return CifarResNet(int(name[6:]), classes or 10, arch.cfg, arch.in_channels)
    if name == "mobilenet_v1_cifar":
        return CifarMobileNetV1(classes or 10, arch.cfg, arch.in_channels)
    if name == "mobilenet_v2_cifar":
        return CifarMobileNetV2(classes or 10, arch.cfg, arch.in_channels)
    if is_family(name):  # timm:NAME, hf:FOLDER
        return build_family(arch)
    if is_factory(name):
        return _from_factory(name, classes)
    check_model_name(name)  # what is left is a torchvision classifier, or an error
    import torchvision.models as tvm

    kwargs = {"num_classes": classes} if classes else {}
    return tvm.get_model(name, weights=None, **kwargs)


def _from_factory(spec: str, num_classes: int | None) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise WorkbenchError(f"cannot import model factory '{spec}': {exc}; check the module is on PYTHONPATH") from None
    try:
        model = factory(num_classes=num_classes) if num_classes else factory()
    except (Exception, SystemExit) as exc:  # user code: any failure (sys.exit too) is reported, not raised
        raise WorkbenchError(f"model factory '{spec}' failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise WorkbenchError(f"model factory '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


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
