"""Parameters, FLOPs, latency and accuracy against hand computations."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core.measure import count_flops, count_params, evaluate, measure_latency
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


def test_evaluate_counts_correct_predictions():
    x = torch.eye(4)
    labels = torch.tensor([0, 1, 3, 3])  # identity "model" predicts 0, 1, 2, 3
    acc = evaluate(nn.Identity(), DataLoader(TensorDataset(x, labels), batch_size=3))
    assert acc == 0.75
