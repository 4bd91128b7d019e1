"""Pivots, loss weights, loss reach and output capture for the auxiliary-loss variant (core/finetune/segments)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from core.decompose.plan import Decomposer, apply_decomposition
from core.errors import WorkbenchError
from core.finetune.segments import (
    block_names,
    capture,
    even_pivots,
    loss_reach,
    pivot_weights,
    resolve_pivots,
)
from core.finetune.settings import FinetuneStage
from core.models.family.cifar_resnet import PIVOTS as PREDEFINED
from core.models.zoo import Arch, build
from core.session import DecomposeSection
from tests.fixtures_models import tiny_net

CIFAR = (3, 32, 32)


def cifar(name: str, cfg: list[int] | None = None) -> tuple[nn.Module, Arch]:
    torch.manual_seed(0)
    arch = Arch(name, 10, cfg=cfg)
    return build(arch), arch


def aux(**kw) -> FinetuneStage:
    return FinetuneStage(mode="aux", **kw)


def test_block_names_cifar_resnets():
    assert block_names(*cifar("resnet20")) == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    names = block_names(*cifar("resnet56"))
    assert len(names) == 27 and names[0] == "layer1.0" and names[9] == "layer2.0" and names[-1] == "layer3.8"


def test_block_names_cifar_mobilenets():
    assert block_names(*cifar("mobilenet_v1_cifar")) == [f"layers.{i}" for i in range(13)]
    assert block_names(*cifar("mobilenet_v2_cifar")) == [f"layers.{i}" for i in range(19)]


def test_block_names_torchvision():
    assert block_names(torchvision.models.resnet18(num_classes=10), Arch("resnet18", 10)) == [
        f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)]
    assert block_names(torchvision.models.mobilenet_v2(num_classes=10), Arch("mobilenet_v2", 10)) == [
        f"features.{i}" for i in range(1, 18)]


def test_pruned_and_decomposed_keep_blocks():
    full, arch = cifar("resnet56")
    gen = torch.Generator().manual_seed(0)
    cfg = [int(w) for w in torch.randint(1, 9, (27,), generator=gen)]
    pruned, parch = cifar("resnet56", cfg)
    assert block_names(pruned, parch) == block_names(full, arch)
    small, sarch = cifar("resnet20")
    plan = Decomposer(small, sarch, CIFAR).plan(DecomposeSection())
    dec, darch = apply_decomposition(small, sarch, plan)
    assert isinstance(dec.get_submodule("layer2.1.conv1"), nn.Sequential)
    assert block_names(dec, darch) == block_names(small, sarch)
    assert resolve_pivots(dec, darch, aux(pivots=[3, 6])).modules == ["layer1.2", "layer2.2"]


def test_unknown_model_error():
    with pytest.raises(WorkbenchError) as err:
        block_names(tiny_net(), Arch("tests.fixtures_models:tiny_net", 10))
    message = str(err.value)
    assert "\n" not in message and "tests.fixtures_models:tiny_net" in message
    assert 'set pivot_modules (module names) in the [[finetune]] stage, or use mode = "mse"' in message


def test_even_pivots_by_hand():
    assert even_pivots(9, 2) == [4, 8]
    assert even_pivots(27, 2) == [10, 20]
    assert even_pivots(27, 3) == [7, 14, 21]
    assert even_pivots(4, 1) == [3]          # per 3
    for blocks, n in ((3, 3), (3, 2), (1, 1)):  # per 1 -> [1, 2, 2]; per 2 -> [2, 2]; per 1 -> [0]
        with pytest.raises(WorkbenchError, match="do not fit"):
            even_pivots(blocks, n)


def test_pivot_weights_by_hand():
    # METHOD.md eq. 14: divided by the last AUXILIARY pivot (the reference's pivot_set[-1])
    assert pivot_weights([9, 18], 3.0) == pytest.approx([0.125, 1.0, 1.0])
    assert pivot_weights([9, 18], 3.0) == pytest.approx([(9 / 18) ** 3, (18 / 18) ** 3, 1.0])
    assert pivot_weights([3, 18], 3.0) == pytest.approx([0.01, 1.0, 1.0])  # (1/6)^3 = 0.0046 -> floor 0.01
    assert pivot_weights([18, 36], 1.0) == pytest.approx([0.5, 1.0, 1.0])
    assert pivot_weights([5], 0.0) == [1.0, 1.0]


def test_predefined_pivots():
    model, arch = cifar("resnet56")
    p = resolve_pivots(model, arch, aux(n_losses=2))
    assert (p.modules, p.positions, p.last) == (["layer1.8", "layer2.8"], [9, 18], 27)
    assert p.gammas == pytest.approx([0.125, 1.0, 1.0])  # METHOD.md: ResNet-56, [9, 18], v = 3
    assert resolve_pivots(model, arch, aux(n_losses=1)).modules == ["layer2.8"]
    assert resolve_pivots(model, arch, aux(n_losses=3)).positions == [7, 14, 21]   # even
    deep, darch = cifar("resnet110")
    p = resolve_pivots(deep, darch, aux(n_losses=2, decay=1.0))
    assert p.positions == PREDEFINED[110][2] and p.modules == ["layer1.17", "layer2.17"]
    assert p.gammas == pytest.approx([18 / 36, 1.0, 1.0])


def test_even_and_given_pivots():
    model, arch = cifar("resnet20")
    assert resolve_pivots(model, arch, aux(n_losses=2)).modules == ["layer2.0", "layer3.1"]  # even: [4, 8]
    p = resolve_pivots(model, arch, aux(n_losses=2, pivots=[3, 6]))
    assert (p.modules, p.positions, p.last) == (["layer1.2", "layer2.2"], [3, 6], 9)
    with pytest.raises(WorkbenchError, match="below the 9 blocks"):
        resolve_pivots(model, arch, aux(n_losses=1, pivots=[9]))
    tv = torchvision.models.mobilenet_v2(num_classes=10)
    assert resolve_pivots(tv, Arch("mobilenet_v2", 10), aux(n_losses=1)).modules == ["features.9"]  # 17 // 2 + 1


def test_pivot_modules_by_name():
    model, arch = tiny_net(), Arch("tests.fixtures_models:tiny_net", 10)
    p = resolve_pivots(model, arch, aux(n_losses=2, pivot_modules=["1", "3"], decay=2.0))
    # named_modules: '', '0', '1', '2', '3', '4', '5' -> 1-based positions 3 and 5 of 7
    assert (p.modules, p.positions, p.last) == (["1", "3"], [3, 5], 7)
    assert p.gammas == pytest.approx([(3 / 5) ** 2, 1.0, 1.0])
    with pytest.raises(WorkbenchError, match="no module 'conv9'"):
        resolve_pivots(model, arch, aux(n_losses=1, pivot_modules=["conv9"]))


def expected_reach(name: str) -> int:
    """ResNet-20 with pivots [3, 6]: stem and layer1 feed 3 losses, layer2 two, the rest one."""
    return 2 if name.startswith("layer2.") else 1 if name.startswith(("layer3.", "linear.")) else 3


def test_loss_reach_resnet20_leaves_state_alone():
    model, arch = cifar("resnet20")
    model.unused = nn.Linear(2, 2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.train()
    model.layer2.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {n: m.training for n, m in model.named_modules()}
    pivots = resolve_pivots(model, arch, aux(n_losses=2, pivots=[3, 6]))
    reach = loss_reach(model, pivots, CIFAR)
    assert reach == {n: 0 if n.startswith("unused.") else expected_reach(n) for n, _ in model.named_parameters()}
    assert reach["conv1.weight"] == 3 and reach["layer2.0.conv1.weight"] == 2 and reach["linear.bias"] == 1
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert modes == {n: m.training for n, m in model.named_modules()}
    assert all(p.grad is None for p in model.parameters())


def test_loss_reach_decomposed():
    model, arch = cifar("resnet20")
    plan = Decomposer(model, arch, CIFAR).plan(DecomposeSection())
    dec, darch = apply_decomposition(model, arch, plan)
    reach = loss_reach(dec, resolve_pivots(dec, darch, aux(n_losses=2, pivots=[3, 6])), CIFAR)
    assert reach["layer2.1.conv1.conv1-1.weight"] == 2
    assert reach == {n: expected_reach(n) for n, _ in dec.named_parameters()}


def test_capture_outputs_and_hooks():
    model = cifar("resnet20")[0].eval()
    names = ["layer1.2", "layer2.2"]
    x = torch.randn(2, *CIFAR)
    with torch.no_grad(), capture(model, names) as outs:
        model(x)
        assert [tuple(o.shape) for o in outs] == [(2, 16, 32, 32), (2, 32, 16, 16)]
        stem = F.relu(model.bn1(model.conv1(x)))
        assert torch.allclose(outs[0], model.layer1(stem)) and torch.allclose(outs[1], model.layer2(model.layer1(stem)))
        model(x[:1])
        assert [o.shape[0] for o in outs] == [1, 1]
    hooked = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooked == []


def test_capture_pruned_widths():
    gen = torch.Generator().manual_seed(1)
    cfg = [int(w) for w in torch.randint(1, 9, (27,), generator=gen)]
    model, arch = cifar("resnet56", cfg)
    pivots = resolve_pivots(model, arch, aux(n_losses=2))
    with torch.no_grad(), capture(model.eval(), pivots.modules) as outs:
        logits = model(torch.randn(3, *CIFAR))
    assert [tuple(o.shape) for o in outs] == [(3, 16, 32, 32), (3, 32, 16, 16)] and logits.shape == (3, 10)


class Branch(nn.Module):
    """`b` runs only when asked: a pivot module that may skip a forward pass."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
        return self.b(self.a(x)) if use_b else self.a(x)


def test_capture_clears_per_forward():
    net, x = Branch(), torch.randn(4, 2)
    with capture(net, ["a", "b"]) as outs:
        net(x, True)
        assert outs[1].shape == (4, 2)
        net(x, False)
        assert outs[0].shape == (4, 2) and outs[1] is None
