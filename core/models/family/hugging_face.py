"""`hf:FOLDER`: a Hugging Face transformers image classifier saved with `save_pretrained`, read
from that folder only. Its config travels in the Arch (`extra["hf_config"]`), so a model the
workbench saved reloads without the folder. transformers is optional: its absence is one
error line naming the extra."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from core.errors import WorkbenchError
from core.models.arch import Arch
from core.models.family.base import Family, after_prefix

PREFIX = "hf:"
HF_CONFIG = "hf_config"


class HFClassifier(nn.Module):
    """A transformers image classifier whose forward returns the logits tensor, as every
    workbench step (statistics, training, export) expects of a classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


class HuggingFaceModels(Family):
    label = "Hugging Face classifier"
    probe = False  # built once: the library's own code

    def claims(self, name: str) -> bool:
        return name.startswith(PREFIX)

    def build(self, arch: Arch) -> nn.Module:
        folder = after_prefix(arch, PREFIX)
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
