"""What the user asked to open (model, checkpoint, data, input size), as plain data: read
by the command line and the session file before torch is imported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import WorkbenchError

MAX_INPUT = (1024, 4096)  # channels, pixels a side: what measuring one image can allocate


@dataclass
class Target:
    """What to open, as the user gave it on the command line or in a session."""

    model: str | None = None
    checkpoint: Path | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    weights: str | None = None
    trust_pickle: bool = False
    data: str | None = None
    input_size: tuple[int, int, int] | None = None
    data_normalize: str | tuple | None = None  # core.data.load_data's normalize (session [data] normalize)
    data_split: str = "seeded"                 # and split

    @classmethod
    def demo(cls) -> "Target":
        return cls(model="demo", data="demo")


def parse_input_size(text: str) -> tuple[int, int, int]:
    """'3x32x32' -> (3, 32, 32)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise WorkbenchError(f"--input-size '{text}' is not CxHxW (e.g. 3x32x32)")
    size = tuple(int(p) for p in parts)
    if size[0] > MAX_INPUT[0] or max(size[1:]) > MAX_INPUT[1]:
        raise WorkbenchError(f"--input-size '{text}' is too large: at most {MAX_INPUT[0]} channels and "
                             f"{MAX_INPUT[1]} pixels a side")
    return size  # type: ignore[return-value]
