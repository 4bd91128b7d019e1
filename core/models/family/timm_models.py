"""`timm:NAME`: a model from timm's registry, randomly initialised and never downloading (weights
come from --checkpoint). timm is optional: its absence is one error line naming the extra."""

from __future__ import annotations

from torch import nn

from core.errors import WorkbenchError
from core.models.arch import Arch
from core.models.family.base import Family, after_prefix

PREFIX = "timm:"


class TimmModels(Family):
    label = "timm model"
    probe = False  # built once: the library's own code

    def claims(self, name: str) -> bool:
        return name.startswith(PREFIX)

    def build(self, arch: Arch) -> nn.Module:
        name = after_prefix(arch, PREFIX)
        try:
            import timm
        except ImportError:
            raise WorkbenchError(f"model 'timm:{name}' needs the timm package: pip install 'hos-workbench[timm]'") \
                from None
        if not timm.is_model(name):
            raise WorkbenchError(f"timm has no model '{name}' (timm {timm.__version__}): see timm.list_models()")
        kwargs = {"num_classes": arch.num_classes} if arch.num_classes else {}
        model = timm.create_model(name, pretrained=False, in_chans=arch.in_channels, **kwargs)
        arch.num_classes = model.num_classes
        return model
