"""`Arch`: everything needed to rebuild a model without pickle. It travels with saved weights
(safetensors metadata), so a compressed model reloads from data alone."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


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
    def from_json(cls, text: str) -> Arch:
        return cls(**json.loads(text))
