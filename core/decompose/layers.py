"""The modules that replace a decomposed layer, laid out as the reference's checkpoints are
(`<name>-0`, `<name>-1`, `<name>-2`, see core/models/checkpoint.py), and the weight they compose to."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from threading import Lock
from typing import TypeVar

import torch
from torch import nn

from core.decompose.cp import cp3
from core.decompose.svd import truncated_svd
from core.decompose.tucker import tucker2

T = TypeVar("T")
R = TypeVar("R")
_ONE_AT_A_TIME = Lock()  # torch's thread count is process-wide: two overlapping calls would restore it wrongly


def in_parallel(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`[fn(item) for item in items]`, on as many threads as torch's intra-op setting, each torch op
    single-threaded meanwhile: the small factorizations of a decomposition (Cholesky solves, SVDs of
    one layer) keep a core busy each rather than share both cores per op. In order, and the same
    results whatever the thread count (every item is computed with one intra-op thread)."""
    with _ONE_AT_A_TIME:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if threads == 1 or len(items) < 2:
                return [fn(item) for item in items]
            with ThreadPoolExecutor(min(threads, len(items))) as pool:
                return list(pool.map(fn, items))
        finally:
            torch.set_num_threads(threads)


def _conv(weight: torch.Tensor, bias: torch.Tensor | None = None, like: nn.Conv2d | None = None,
          groups: int = 1) -> nn.Conv2d:
    """A conv holding `weight` (copied); `like` gives stride, padding, dilation and padding mode, else a 1x1."""
    cout, cin_g, kh, kw = weight.shape
    extra = dict(stride=like.stride, padding=like.padding, dilation=like.dilation,
                 padding_mode=like.padding_mode) if like is not None else {}
    conv = nn.Conv2d(cin_g * groups, cout, (kh, kw), groups=groups, bias=bias is not None,
                     device=weight.device, dtype=weight.dtype, **extra)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _bias(module: nn.Module) -> torch.Tensor | None:
    return module.bias.detach() if module.bias is not None else None


def tucker_conv(conv: nn.Conv2d, r_out: int, r_in: int, name: str) -> nn.Sequential:
    """Tucker-2 of `conv` as 1x1 cin -> r_in (U_in^T), kh x kw r_in -> r_out (the core, `conv`'s
    stride/padding/dilation), 1x1 r_out -> cout (U_out, `conv`'s bias); `name` is its attribute name."""
    core, u_out, u_in = tucker2(conv.weight, r_out, r_in)
    return nn.Sequential(OrderedDict([
        (f"{name}-0", _conv(u_in.T[:, :, None, None])),
        (f"{name}-1", _conv(core, like=conv)),
        (f"{name}-2", _conv(u_out[:, :, None, None], _bias(conv))),
    ]))


def cp_conv(conv: nn.Conv2d, rank: int, name: str) -> nn.Sequential:
    """CP3 of `conv` as 1x1 cin -> R, depthwise kh x kw on R (groups = R, `conv`'s stride/padding/
    dilation), 1x1 R -> cout (`conv`'s bias)."""
    first, depthwise, last = cp3(conv.weight, rank)
    return nn.Sequential(OrderedDict([
        (f"{name}-0", _conv(first[:, :, None, None])),
        (f"{name}-1", _conv(depthwise, like=conv, groups=rank)),
        (f"{name}-2", _conv(last[:, :, None, None], _bias(conv))),
    ]))


def svd_linear(linear: nn.Linear, rank: int, name: str) -> nn.Sequential:
    """Truncated SVD of `linear` as Linear in -> rank (no bias), Linear rank -> out (`linear`'s bias)."""
    first, second = truncated_svd(linear.weight, rank)
    layers = []
    for w, b in ((first, None), (second, _bias(linear))):
        layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
        layers.append(layer)
    return nn.Sequential(OrderedDict([(f"{name}-0", layers[0]), (f"{name}-1", layers[1])]))


@torch.no_grad()
def composed_weight(seq: nn.Sequential) -> torch.Tensor:
    """The single conv/linear weight a decomposed Sequential computes (for reconstruction errors)."""
    parts = list(seq)
    if isinstance(parts[0], nn.Linear):
        return parts[1].weight @ parts[0].weight
    first, middle, last = (p.weight for p in parts)
    first, last = first[:, :, 0, 0], last[:, :, 0, 0]
    if parts[1].groups > 1:
        return torch.einsum("or,rhw,ri->oihw", last, middle[:, 0], first)
    return torch.einsum("oa,abhw,bi->oihw", last, middle, first)


def relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """||W - W_hat||_F / ||W||_F (0 when both are zero, inf when only W is)."""
    norm = float(torch.linalg.vector_norm(weight.detach().double()))
    diff = float(torch.linalg.vector_norm((weight.detach() - approx).double()))
    return diff / norm if norm else (float("inf") if diff else 0.0)
