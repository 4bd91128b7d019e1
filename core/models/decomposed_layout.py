"""The layout of decomposed layers in a state dict: a conv (Linear) at `<path>` replaced by a
Sequential whose tensors are `<path>.<name>-0/-1/-2.weight` (Tucker-2 or CP3, see METHOD.md;
two Linear layers `-0/-1` for truncated SVD), found from the keys and rebuilt from the shapes.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

_DECOMPOSED_KEY = re.compile(r"^((?:.+\.)?([^.]+))\.\2-0\.weight$")


def decomposed_convs(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """Module path -> "tucker2" | "cp3" (three convs `-0/-1/-2`) or "svd" (two Linear layers
    `-0/-1`) for every `<path>.<name>-0.weight` key set."""
    found = {}
    for key, first in state_dict.items():
        match = _DECOMPOSED_KEY.match(key)
        if not match:
            continue
        path, name = match.groups()
        core = state_dict.get(f"{path}.{name}-1.weight")
        if core is None:
            continue
        if f"{path}.{name}-2.weight" not in state_dict:
            if first.dim() == core.dim() == 2:
                found[path] = "svd"
            continue
        depthwise = core.shape[1] == 1 and core.shape[0] == first.shape[0] != 1
        found[path] = "cp3" if depthwise else "tucker2"
    return found


def rebuild_decomposed(model: nn.Module, sd: dict[str, torch.Tensor], decomposed: dict[str, str]) -> dict[str, str]:
    """Replace each listed conv (Linear, for "svd") by the Sequential its `-0/-1/-2` tensors describe.

    Stride, padding, dilation and padding mode come from the original conv; channel counts
    and ranks from the tensors. Convs whose tensors do not fit stay as they are (the fit
    check then reports them). Returns the paths actually rebuilt.
    """
    done = {}
    for path, kind in decomposed.items():
        try:
            conv = model.get_submodule(path)
        except AttributeError:
            continue
        name = path.rsplit(".", 1)[-1]
        parent = model.get_submodule(path.rpartition(".")[0])
        if kind == "svd":
            w0, w1 = (sd[f"{path}.{name}-{i}.weight"] for i in range(2))
            if isinstance(conv, nn.Linear) and w0.shape[1] == conv.in_features and w1.shape[0] == conv.out_features:
                setattr(parent, name, nn.Sequential(OrderedDict(
                    (f"{name}-{i}", nn.Linear(w.shape[1], w.shape[0], bias=f"{path}.{name}-{i}.bias" in sd))
                    for i, w in enumerate((w0, w1)))))
                done[path] = kind
            continue
        w0, w1, w2 = (sd[f"{path}.{name}-{i}.weight"] for i in range(3))
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or w0.shape[1] != conv.in_channels \
                or w2.shape[0] != conv.out_channels:
            continue
        groups = w1.shape[0] if kind == "cp3" else 1
        seq = nn.Sequential(OrderedDict([
            (f"{name}-0", nn.Conv2d(w0.shape[1], w0.shape[0], tuple(w0.shape[2:]), bias=f"{path}.{name}-0.bias" in sd)),
            (f"{name}-1", nn.Conv2d(
                w1.shape[1] * groups, w1.shape[0], tuple(w1.shape[2:]), conv.stride, conv.padding, conv.dilation,
                groups, bias=f"{path}.{name}-1.bias" in sd, padding_mode=conv.padding_mode)),
            (f"{name}-2", nn.Conv2d(w2.shape[1], w2.shape[0], tuple(w2.shape[2:]), bias=f"{path}.{name}-2.bias" in sd)),
        ]))
        setattr(parent, name, seq)
        done[path] = kind
    return done
