"""Parameters, FLOPs, latency and accuracy against hand computations."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pytest

from core.measure import Latency, compare_latency, count_flops, count_params, evaluate, measure_latency, ratio
from core.models.cifar_resnet import CifarResNet


def test_conv_and_linear_flops_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 10 * 10, 5))
    conv = 2 * 8 * 3 * 3 * 3 * 10 * 10  # 2 FLOPs per multiply-add, one per output element and tap
    linear = 2 * 800 * 5
    assert count_flops(model, (3, 10, 10)) == conv + linear
    assert count_params(model) == 8 * 27 + 800 * 5 + 5


def test_cifar_resnet_params_by_depth():
    # 6n+2 layers: stem 3*16*9 + BN, 3 stages of n blocks, linear 64*10+10
    for depth in (20, 32, 44, 56, 110):
        n = (depth - 2) // 6
        convs = 16 * 3 * 9 + sum(
            (cin * c * 9 + c * c * 9) + (n - 1) * 2 * c * c * 9
            for cin, c in ((16, 16), (16, 32), (32, 64)))
        bns = 2 * (16 + sum(2 * n * c for c in (16, 32, 64)))
        assert count_params(CifarResNet(depth)) == convs + bns + 64 * 10 + 10


def test_latency_is_positive_and_counts_repeats():
    lat = measure_latency(nn.Conv2d(3, 4, 3), (3, 16, 16), warmup=1, repeats=7)
    assert lat.repeats == 7 and 0 < lat.min_ms <= lat.median_ms and lat.device == "cpu"


def test_each_round_is_kept_in_the_order_the_models_ran():
    measured = compare_latency({"a": nn.Conv2d(3, 4, 3), "b": nn.Conv2d(3, 8, 3)}, (3, 16, 16), repeats=5)
    for (lat,) in measured.values():
        assert len(lat.rounds_ms) == 5 and lat.median_ms == sorted(lat.rounds_ms)[2] and lat.min_ms == min(lat.rounds_ms)


def rounds(*times: float) -> Latency:
    ordered = sorted(times)
    return Latency(ordered[len(times) // 2], ordered[0], len(times), 1, "cpu", rounds_ms=times)


def test_ratio_is_taken_round_by_round_so_a_slow_moment_cancels():
    """By hand: rounds 10/10, 30/10, 12/12, 14/7 are ratios 1, 3, 1, 2 -> median 1.5, quartiles 1
    and 2.25 (linear between order statistics), where the medians' ratio is 13 / 10. A machine
    twice as slow in the middle rounds leaves a constant ratio constant."""
    r = ratio(rounds(10, 30, 12, 14), rounds(10, 10, 12, 7))
    assert (r.median, r.low, r.high) == (1.5, 1.0, 2.25) and r.noisy
    steady = ratio(rounds(8, 16, 16, 8), rounds(10, 20, 20, 10))
    assert steady.median == pytest.approx(0.8) and steady.low == pytest.approx(steady.high) and not steady.noisy


def test_ratio_without_rounds_is_the_medians_with_their_spreads():
    r = ratio(Latency(8.0, 8.0, 1, 1, "cpu", iqr_ms=1.0), Latency(10.0, 10.0, 1, 1, "cpu", iqr_ms=2.0))
    assert (r.median, r.low, r.high) == (0.8, 7.5 / 11.0, 8.5 / 9.0)


def test_evaluate_counts_correct_predictions():
    x = torch.eye(4)
    labels = torch.tensor([0, 1, 3, 3])  # identity "model" predicts 0, 1, 2, 3
    acc = evaluate(nn.Identity(), DataLoader(TensorDataset(x, labels), batch_size=3))
    assert acc == 0.75
