"""Statistics in two stages (what lets the TUI show its table before scipy is loaded): the
moments first, then scipy's tests; together exactly what one call gives."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from core.stats import network_stats, with_tests


def conv_net(*weights: torch.Tensor) -> nn.Module:
    net = nn.Sequential(*(nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], bias=False) for w in weights))
    with torch.no_grad():
        for conv, w in zip(net, weights):
            conv.weight.copy_(w)
    return net


def same(a, b) -> bool:
    """Equal, NaN equal to NaN (floats, lists of floats, tensors)."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a.nan_to_num(7.5), b.nan_to_num(7.5))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


g = torch.Generator().manual_seed(5)
CASES = {
    "gaussian and heavy tailed": (torch.randn(16, 3, 3, 3, generator=g),
                                  torch.randn(32, 16, 3, 3, generator=g) ** 3, torch.randn(8, 32, 1, 1, generator=g)),
    "constant filters": (torch.full((4, 2, 3, 3), 0.1),),
    "NaN and Inf": (torch.tensor([[[[1.0]], [[float("inf")]], [[2.0]], [[3.0]]]] * 3),
                    torch.full((3, 4, 1, 1), float("nan"))),
    "too few values": (torch.randn(2, 1, 1, 1, generator=g),),
}


@pytest.mark.parametrize("case", CASES)
def test_with_tests_gives_exactly_the_figures_of_one_call(case):
    net = conv_net(*CASES[case])
    early = network_stats(net, tests=False)
    assert not any(layer.tested for layer in early.layers)
    assert all(math.isnan(layer.shapiro_w) and math.isnan(layer.jb_p) and not layer.hist.normal
               for layer in early.layers)
    assert all(math.isnan(t) for t in early.t_range["P1"])
    full = network_stats(net)
    completed = with_tests(early, net)
    assert all(layer.tested for layer in completed.layers)
    assert same(completed.layers, full.layers) and same(completed.t_range, full.t_range)
    # what needs no scipy is there from the start
    for a, b in zip(early.layers, full.layers):
        assert same((a.mean, a.std, a.skew, a.kurt, a.k3, a.k4, a.k34, a.jb, a.t_p2, a.t_p3, a.hist.counts),
                    (b.mean, b.std, b.skew, b.kurt, b.k3, b.k4, b.k34, b.jb, b.t_p2, b.t_p3, b.hist.counts))


def test_the_first_stage_does_not_import_scipy_stats():
    code = ("import sys, torch; from core.stats import network_stats; "
            "network_stats(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)), tests=False); "
            "print('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
