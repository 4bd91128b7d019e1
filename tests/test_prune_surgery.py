"""Channel groups, structural pruning and cost prediction (core/prune/groups, surgery, cost), on real models."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from core.errors import WorkbenchError
from core.measure import count_flops, count_params
from core.models import zoo
from core.models.checkpoint import load_model, read_checkpoint, save_model
from core.models.cifar_mobilenet import V1_CFG, V2_EXPANSIONS
from core.models.zoo import Arch
from core.prune.cost import CostModel
from core.prune.groups import prunable_groups, unsupported_layers
from core.prune.surgery import apply_pruning, rebuild_structure, save_reference_format

CIFAR = (3, 32, 32)


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and running statistics, so outputs depend on every channel's."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def cifar(name: str) -> tuple[nn.Module, Arch]:
    torch.manual_seed(0)
    arch = Arch(name, 10)
    return randomise_bn(zoo.build(arch)), arch


def random_keep(groups, seed: int = 1) -> dict[str, list[int]]:
    """For every group a random, sorted, non-empty subset of its channels."""
    gen = torch.Generator().manual_seed(seed)
    keep = {}
    for g in groups:
        count = int(torch.randint(1, g.channels + 1, (1,), generator=gen))
        keep[g.name] = sorted(torch.randperm(g.channels, generator=gen)[:count].tolist())
    return keep


class Mix(nn.Module):
    """A custom layer with weights (a channel-mixing matrix) torch-pruning has no pruner for."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels) / channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,bchw->bohw", self.weight, x)


class UserNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1, self.bn1, self.mix = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), Mix(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(torch.relu(self.conv3(x)), 1))


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return randomise_bn(torchvision.models.resnet18(num_classes=10)), Arch("resnet18", 10), (3, 64, 64)


@pytest.fixture(scope="module")
def vgg16():
    torch.manual_seed(0)
    return randomise_bn(torchvision.models.vgg16_bn(num_classes=10)), Arch("vgg16_bn", 10), CIFAR


# ----------------------------------------------------------------------------- groups


@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_resnet_groups_are_block_conv1_with_even_ids(depth):
    model, arch = cifar(f"resnet{depth}")
    groups = prunable_groups(model, arch, CIFAR, coupled=True)
    n = (depth - 2) // 6
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(n)]
    assert [g.name for g in groups] == [f"{b}.conv1" for b in blocks]
    assert [g.layer_id for g in groups] == list(range(2, 6 * n + 1, 2))
    assert [g.members for g in groups] == [[f"{b}.conv1", f"{b}.bn1", f"{b}.conv2"] for b in blocks]
    assert [g.channels for g in groups] == [w for w in (16, 32, 64) for _ in range(n)]
    assert not any(g.coupled for g in groups)


def test_mobilenet_v1_groups_pointwise_with_next_depthwise():
    model, arch = cifar("mobilenet_v1_cifar")
    groups = prunable_groups(model, arch, CIFAR)
    assert [g.name for g in groups] == [f"layers.{i}.conv2" for i in range(12)]  # not the stem, not the last (1024)
    assert groups[0].members == ["layers.0.conv2", "layers.0.bn2", "layers.1.conv1", "layers.1.bn1", "layers.1.conv2"]
    assert [g.channels for g in groups] == V1_CFG[2:-2:2]
    assert [g.layer_id for g in groups] == [3 + 2 * i for i in range(12)]


def test_mobilenet_v2_groups_expansion_with_depthwise():
    model, arch = cifar("mobilenet_v2_cifar")
    groups = prunable_groups(model, arch, CIFAR, coupled=True)
    assert [g.name for g in groups] == [f"layers.{k}.conv1" for k in range(19)]
    assert groups[5].members == [f"layers.5.{m}" for m in ("conv1", "bn1", "conv2", "bn2", "conv3")]
    assert [g.channels for g in groups] == V2_EXPANSIONS
    assert not any(g.coupled for g in groups)


def test_torchvision_resnet18_groups_leave_residual_channels_unless_asked(resnet18):
    model, arch, shape = resnet18
    groups = prunable_groups(model, arch, shape)
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)]
    assert [g.name for g in groups] == [f"{b}.conv1" for b in blocks]
    assert groups[0].members == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"]
    both = prunable_groups(model, arch, shape, coupled=True)
    coupled = [g for g in both if g.coupled]
    assert [g.name for g in coupled] == ["conv1", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"]
    assert {"layer2.0.downsample.0", "layer2.1.conv2", "layer3.0.conv1"} <= set(coupled[1].members)
    assert [g for g in both if not g.coupled] == groups


def test_vgg16_bn_every_conv_is_a_group_the_last_through_flatten(vgg16):
    model, arch, shape = vgg16
    groups = prunable_groups(model, arch, shape)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [g.name for g in groups] == convs and len(groups) == 13  # the last feeds classifier.0 via flatten
    assert groups[-1].members == ["features.40", "features.41", "classifier.0"]


def test_torchvision_mobilenet_v2_groups():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    arch, shape = Arch("mobilenet_v2", 10), (3, 64, 64)
    names = [g.name for g in prunable_groups(model, arch, shape)]
    expansions = [f"features.{i}.conv.0.0" for i in range(2, 18)]
    assert set(expansions) <= set(names)
    assert "features.1.conv.0.0" not in names  # depthwise: it follows the stem's group
    assert "features.3.conv.2" not in names    # projection into a residual add
    coupled = [g for g in prunable_groups(model, arch, shape, coupled=True) if g.coupled]
    assert len(coupled) == 5 and all(g.name.endswith("conv.2") for g in coupled)


def test_unsupported_custom_layer_is_named_and_ignore_makes_it_work():
    model, arch, shape = UserNet().eval(), Arch("tests.test_prune_surgery:UserNet", 10), (3, 16, 16)
    assert unsupported_layers(model, shape) == ["mix"]
    with pytest.raises(WorkbenchError, match="cannot prune: mix; list them in ignore"):
        prunable_groups(model, arch, shape)
    groups = prunable_groups(model, arch, shape, ignore=["mix"])
    assert [(g.name, g.members) for g in groups] == [("conv2", ["conv2", "bn2", "conv3"]), ("conv3", ["conv3", "fc"])]
    with pytest.raises(WorkbenchError, match="'nope' is not a module"):
        prunable_groups(model, arch, shape, ignore=["nope"])
    keep = {"conv2": [0, 3, 5], "conv3": [1, 2, 9, 15]}
    pruned, _ = apply_pruning(model, arch, keep, shape)
    assert CostModel(model, shape, groups).cost({"conv2": 3, "conv3": 4}) == (
        count_params(pruned), count_flops(pruned, shape))


def test_untraceable_model_is_a_workbench_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    with pytest.raises(WorkbenchError, match="cannot trace.*ignore"):
        prunable_groups(model, Arch("m:f"), (3, 8, 8))


# ----------------------------------------------------------------------------- surgery and cost


def check_prune(model, arch, shape, keep):
    """Apply `keep`; the original is untouched, shapes hold, and the cost model predicts exactly."""
    before = copy.deepcopy(model.state_dict())
    groups = prunable_groups(model, arch, shape, coupled=True)
    pruned, new_arch = apply_pruning(model, arch, keep, shape)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert pruned.eval()(x).shape == model(x).shape
    predicted = CostModel(model, shape, groups).cost({k: len(v) for k, v in keep.items()})
    assert predicted == (count_params(pruned), count_flops(pruned, shape))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return pruned, new_arch


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1_cifar", "mobilenet_v2_cifar"])
def test_cifar_prune_keeps_every_channel_identically_and_predicts_random_keeps(name):
    model, arch = cifar(name)
    groups = prunable_groups(model, arch, CIFAR)
    full, full_arch = apply_pruning(model, arch, {g.name: list(range(g.channels)) for g in groups}, CIFAR)
    x = torch.randn(4, *CIFAR)
    with torch.no_grad():
        assert torch.equal(full(x), model(x))
    assert full_arch.cfg == full.cfg == model.cfg
    keep = random_keep(groups)
    pruned, new_arch = check_prune(model, arch, CIFAR, keep)
    # dropping channels equals zeroing their inputs to the layer that reads them (the last member)
    masked = copy.deepcopy(model)
    for g in groups:
        dropped = sorted(set(range(g.channels)) - set(keep[g.name]))
        with torch.no_grad():
            masked.get_submodule(g.members[-1]).weight[:, dropped] = 0
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked(x), atol=1e-5)
    assert new_arch.cfg == pruned.cfg and new_arch.cfg != model.cfg
    rebuilt = zoo.build(new_arch)
    rebuilt.load_state_dict(pruned.state_dict())


def test_resnet20_kept_filters_carry_their_weights_and_bn_statistics():
    model, arch = cifar("resnet20")
    kept = [1, 4, 5, 11]
    pruned, new_arch = apply_pruning(model, arch, {"layer1.1.conv1": kept}, CIFAR)
    old, new = model.layer1[1], pruned.layer1[1]
    assert torch.equal(new.conv1.weight, old.conv1.weight[kept])
    for attr in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(new.bn1, attr), getattr(old.bn1, attr)[kept])
    assert torch.equal(new.conv2.weight, old.conv2.weight[:, kept])
    assert new_arch.cfg == [16, 4, 16, 32, 32, 32, 64, 64, 64]


@pytest.mark.parametrize("fixture", ["resnet18", "vgg16"])
def test_torchvision_prune_identity_and_random_keeps(fixture, request):
    model, arch, shape = request.getfixturevalue(fixture)
    groups = prunable_groups(model, arch, shape, coupled=fixture == "resnet18")
    full, _ = apply_pruning(model, arch, {g.name: list(range(g.channels)) for g in groups}, shape)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(full(x), model(x))
    _, new_arch = check_prune(model, arch, shape, random_keep(groups))
    assert [entry[0] for entry in new_arch.extra["pruning_history"]] == [g.name for g in groups]
    assert new_arch.cfg is None


def test_cost_model_per_layer_and_bad_counts():
    model, arch = cifar("resnet20")
    groups = prunable_groups(model, arch, CIFAR)
    cost = CostModel(model, CIFAR, groups)
    assert cost.cost({}) == (count_params(model), count_flops(model, CIFAR))
    block = model.layer2[1]
    params, flops = cost.layer_cost("layer2.1.conv1", 32)
    assert params == sum(p.numel() for m in (block.conv1, block.bn1, block.conv2) for p in m.parameters())
    assert flops == 2 * 2 * (32 * 32 * 9 * 16 * 16)
    full, ten = cost.cost({}), cost.cost({"layer2.1.conv1": 10})
    assert [a - b for a, b in zip(full, ten)] == [
        a - b for a, b in zip(cost.layer_cost("layer2.1.conv1", 32), cost.layer_cost("layer2.1.conv1", 10))]
    with pytest.raises(WorkbenchError, match="not a prunable group"):
        cost.cost({"conv1": 3})
    with pytest.raises(WorkbenchError, match="keep 1..32"):
        cost.cost({"layer2.1.conv1": 0})


def test_apply_rejects_bad_roots_and_indices():
    model, arch = cifar("resnet20")
    for keep, message in [({"conv1": [0]}, "'conv1' is not a prunable layer"),
                          ({"layer1.0.conv2": [0]}, "not a prunable layer"),
                          ({"layer1.0.conv1": [0, 16]}, r"must lie in 0..15"),
                          ({"layer1.0.conv1": [-1, 2]}, r"must lie in 0..15"),
                          ({"layer1.0.conv1": []}, "keep at least one"),
                          ({"layer1.0.conv1": [2, 2]}, "repeat")]:
        with pytest.raises(WorkbenchError, match=message):
            apply_pruning(model, arch, keep, CIFAR)
    decomposed = Arch("resnet20", 10, extra={"decomposed": {"layer1.0.conv1": "tucker2"}})
    with pytest.raises(WorkbenchError, match="prune first, then decompose"):
        apply_pruning(model, decomposed, {}, CIFAR)


# ----------------------------------------------------------------------------- saving and reloading


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v1_cifar", "mobilenet_v2_cifar"])
def test_pruned_cifar_saves_and_reloads_in_both_formats(name, tmp_path):
    model, arch = cifar(name)
    pruned, new_arch = apply_pruning(model, arch, random_keep(prunable_groups(model, arch, CIFAR), 3), CIFAR)
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        expected = pruned.eval()(x)
    save_model(pruned, new_arch, tmp_path / "p.safetensors")
    save_reference_format(pruned, new_arch, tmp_path / "p.pth.tar")
    assert read_checkpoint(tmp_path / "p.pth.tar").format == "reference-pruned"
    for file in ("p.safetensors", "p.pth.tar"):
        loaded = load_model(checkpoint=tmp_path / file)
        assert loaded.arch.model == name and loaded.arch.cfg == new_arch.cfg
        with torch.no_grad():
            assert torch.equal(loaded.model(x), expected)


def test_pruned_torchvision_model_reloads_from_safetensors_by_its_history(resnet18, tmp_path):
    model, arch, shape = resnet18
    groups = prunable_groups(model, arch, shape, coupled=True)
    once, once_arch = apply_pruning(model, arch, random_keep(groups, 5), shape)
    regrouped = prunable_groups(once, once_arch, shape, coupled=True)
    twice, twice_arch = apply_pruning(once, once_arch, random_keep(regrouped[:3], 6), shape)
    assert len(twice_arch.extra["pruning_history"]) == len(groups) + 3
    save_model(twice, twice_arch, tmp_path / "r18.safetensors")
    loaded = load_model(checkpoint=tmp_path / "r18.safetensors")
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), twice.eval()(x))
    assert count_params(loaded.model) == count_params(twice)
    with pytest.raises(WorkbenchError, match="reference cfg\\+state_dict format exists only"):
        save_reference_format(twice, twice_arch, tmp_path / "r18.pth.tar")


def test_history_that_does_not_fit_is_a_workbench_error():
    arch = Arch("resnet18", 10, extra={"pruning_history": [["layer9.conv1", True, [0]]]})
    with pytest.raises(WorkbenchError, match="cannot re-create the pruned resnet18"):
        rebuild_structure(torchvision.models.resnet18(num_classes=10), arch, (3, 64, 64))
