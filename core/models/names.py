"""Which model names the workbench builds, answered without importing torch or
torchvision, so a mistyped `--model` or `[model] name` is refused at once."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

from core.errors import WorkbenchError

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
CIFAR_MODELS = [f"resnet{d}" for d in CIFAR_DEPTHS] + ["mobilenet_v1_cifar", "mobilenet_v2_cifar"]
DEMO = "demo"
_REGISTERED = re.compile(r"^@register_model\([^)]*\)\s*$(?:.*?)^def (\w+)\(", re.M | re.S)


@cache
def torchvision_classifiers() -> tuple[str, ...]:
    """torchvision's image classification builders, read from its sources (the modules
    directly in torchvision/models register them with `@register_model`)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return ()
    names = set()
    for source in (Path(spec.origin).parent / "models").glob("*.py"):
        names.update(_REGISTERED.findall(source.read_text(encoding="utf-8", errors="replace")))
    return tuple(sorted(names))


def is_factory(name: str) -> bool:
    """`package.module:function`: a user's model factory."""
    return ":" in name


def check_model_name(name: str) -> None:
    """One WorkbenchError line when `name` is no model the workbench can build."""
    if name == DEMO or name in CIFAR_MODELS or is_factory(name) or name in torchvision_classifiers():
        return
    raise WorkbenchError(
        f"unknown model '{name}': use one of {', '.join(CIFAR_MODELS)}, {DEMO}, a torchvision classifier "
        "(e.g. resnet50, mobilenet_v2, vgg16_bn) or an import string package.module:factory"
    )
