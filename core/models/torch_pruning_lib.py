"""torch-pruning, imported without its optional timm hook.

`torch_pruning.utils.op_counter` runs `import timm` at import time when timm is installed;
that pulls timm, torchvision and torch._dynamo and costs about 3-4 s in every process (a
replay, a training worker, each torchrun rank). The hook only counts FLOPs of timm attention
modules in torch-pruning's own op counter, which the workbench does not use (it counts FLOPs
with torch.utils.flop_counter), so timm is hidden while torch-pruning loads. Importing timm
afterwards works as usual, and a process that already imported timm gets torch-pruning as is.
"""

from __future__ import annotations

import sys


def _load():
    if "torch_pruning" in sys.modules or "timm" in sys.modules:
        import torch_pruning
        return torch_pruning
    sys.modules["timm"] = None  # `import timm` now raises ImportError, which op_counter expects
    try:
        import torch_pruning
    finally:
        del sys.modules["timm"]
    return torch_pruning


tp = _load()

__all__ = ["tp"]
