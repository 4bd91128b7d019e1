"""Models from other libraries, by name: `timm:NAME` (timm's registry, randomly initialised,
never downloading; weights come from --checkpoint) and `hf:FOLDER` (a Hugging Face
transformers image classifier saved with `save_pretrained`, read from that folder only).

Both are optional: the library is imported when such a name is built, and its absence is one
error line saying which extra to install. An `hf:` model's config travels in the Arch
(`extra["hf_config"]`), so a model the workbench saved reloads without the folder.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from core.errors import WorkbenchError

PREFIXES = ("timm:", "hf:")
HF_CONFIG = "hf_config"


def is_family(name: str) -> bool:
    """Whether `name` is a `timm:` or `hf:` model."""
    return name.startswith(PREFIXES)


def build_family(arch) -> nn.Module:
    """The model `arch.model` names (`timm:NAME` or `hf:FOLDER`), with `arch.num_classes`."""
    kind, _, ref = arch.model.partition(":")
    if not ref:
        raise WorkbenchError(f"model '{arch.model}' names nothing: write {kind}:NAME")
    return _timm(ref, arch) if kind == "timm" else _hugging_face(ref, arch)


def _timm(name: str, arch) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise WorkbenchError(f"model 'timm:{name}' needs the timm package: pip install 'hos-workbench[timm]'") from None
    if not timm.is_model(name):
        raise WorkbenchError(f"timm has no model '{name}' (timm {timm.__version__}): see timm.list_models()")
    kwargs = {"num_classes": arch.num_classes} if arch.num_classes else {}
    model = timm.create_model(name, pretrained=False, in_chans=arch.in_channels, **kwargs)
    arch.num_classes = model.num_classes
    return model


class HFClassifier(nn.Module):
    """A transformers image classifier whose forward returns the logits tensor, as every
    workbench step (statistics, training, export) expects of a classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def _hugging_face(folder: str, arch) -> nn.Module:
    try:
        from transformers import AutoConfig, AutoModelForImageClassification
        from transformers.utils.logging import disable_progress_bar
    except ImportError:
        raise WorkbenchError(f"model 'hf:{folder}' needs the transformers package: "
                             "pip install 'hos-workbench[hf]'") from None
    disable_progress_bar()  # its bars would scribble over the TUI
    path = Path(folder).expanduser()
    labels = {"num_labels": arch.num_classes} if arch.num_classes else {}
    if (path / "config.json").is_file():
        try:
            model = AutoModelForImageClassification.from_pretrained(
                path, local_files_only=True, ignore_mismatched_sizes=bool(labels), **labels)
        except (OSError, ValueError) as exc:
            raise WorkbenchError(f"cannot load the Hugging Face classifier in {path}: {exc}") from None
    elif HF_CONFIG in arch.extra:  # saved by the workbench: the weights follow from the checkpoint
        config = AutoConfig.for_model(**{**arch.extra[HF_CONFIG], **labels})
        model = AutoModelForImageClassification.from_config(config)
    else:
        raise WorkbenchError(f"model 'hf:{folder}': {path} holds no config.json; give the folder a Hugging Face "
                             "image classifier was saved to (save_pretrained)")
    arch.extra[HF_CONFIG] = model.config.to_dict()
    arch.num_classes = model.config.num_labels
    arch.in_channels = getattr(model.config, "num_channels", arch.in_channels)
    return HFClassifier(model)
