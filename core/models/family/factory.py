"""A user's model factory, named `package.module:function` (called with `num_classes=` when the
class count is given). Its code runs once per load, so it is not trial-built, and its class
count is its own, not read off the checkpoint."""

from __future__ import annotations

import importlib

from torch import nn

from core.errors import WorkbenchError
from core.models.arch import Arch
from core.models.family.base import Family
from core.models.family.torchvision_models import torchvision_blocks
from core.models.names import is_factory


class UserFactories(Family):
    label = "model factory"
    probe = False
    classes_from_checkpoint = False

    def claims(self, name: str) -> bool:
        return is_factory(name)

    def build(self, arch: Arch) -> nn.Module:
        spec, num_classes = arch.model, arch.num_classes
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise WorkbenchError(f"cannot import model factory '{spec}': {exc}; check the module is on PYTHONPATH") \
                from None
        try:
            model = factory(num_classes=num_classes) if num_classes else factory()
        except (Exception, SystemExit) as exc:  # user code: any failure (sys.exit too) is reported, not raised
            raise WorkbenchError(f"model factory '{spec}' failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise WorkbenchError(f"model factory '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def blocks(self, model: nn.Module) -> list[str] | None:
        """A factory often returns a torchvision model: its blocks are known."""
        return torchvision_blocks(model)
