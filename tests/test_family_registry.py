"""The model-family registry (core/models/family): every family answers every question, and a
family registered from outside (one class, here in the test) works end-to-end: building,
loading, prunable channels, pruning and reloading, default decomposition layers, blocks and
pivots, and its reference constants."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.decompose.plan import Decomposer
from core.finetune.segments import block_names, resolve_pivots
from core.finetune.settings import FinetuneStage
from core.measure import default_input_shape
from core.models import family
from core.models.arch import Arch
from core.models.checkpoint import load_model, save_model
from core.models.family import FAMILIES, Family, family_of, recognise, register
from core.models.family.cifar_mobilenet import CifarMobileNetV1s, CifarMobileNetV2s
from core.models.family.cifar_resnet import CifarResNets
from core.models.family.factory import UserFactories
from core.models.family.hugging_face import HuggingFaceModels
from core.models.family.timm_models import TimmModels
from core.models.family.torchvision_models import TorchvisionModels
from core.prune.groups import prunable_groups
from core.prune.strategies import (
    Smoothing,
    StagePlan,
    default_coef,
    default_smoothing,
    p5_plan,
    reference_row,
)
from core.prune.surgery import apply_pruning

CORE = Path(__file__).resolve().parents[1] / "core"


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> str:
    from transformers import (  # 4 s: only where used
        ResNetConfig,
        ResNetForImageClassification,
    )

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10,
                          layer_type="basic")
    folder = tmp_path_factory.mktemp("hf") / "model"
    ResNetForImageClassification(config).save_pretrained(folder)
    return f"hf:{folder}"


SAMPLES = {  # one model name per built-in family
    CifarResNets: "resnet20",
    CifarMobileNetV1s: "mobilenet_v1_cifar",
    CifarMobileNetV2s: "mobilenet_v2_cifar",
    TimmModels: "timm:test_resnet",
    HuggingFaceModels: None,  # the hf_folder fixture
    UserFactories: "tests.fixtures_models:tiny_net",
    TorchvisionModels: "resnet18",
}


def test_every_registered_family_has_a_sample_here():
    assert {type(f) for f in FAMILIES} == set(SAMPLES)
    assert isinstance(FAMILIES[-1], TorchvisionModels)  # the fallback is asked last


@pytest.mark.parametrize("kind", list(SAMPLES), ids=lambda k: k.__name__)
def test_every_family_answers_every_question(kind, hf_folder):
    name = SAMPLES[kind] or hf_folder
    fam = family_of(name)
    assert type(fam) is kind and fam is family_of(Arch(name))
    torch.manual_seed(0)
    arch = Arch(name, 10)
    model = fam.build(arch).eval()
    shape = fam.input_shape(arch)
    assert len(shape) == 3 and shape[0] == arch.in_channels
    with torch.no_grad():
        assert model(torch.zeros(1, *shape)).shape == (1, 10)
    modules = dict(model.named_modules())
    for answer in (fam.prunable_roots(model), fam.default_layers(model), fam.blocks(model)):
        assert answer is None or (answer and all(n in modules for n in answer))
    blocks = fam.blocks(model)
    for n_losses in (1, 2):
        pivots = fam.pivots(model, n_losses)
        assert pivots is None or (len(pivots) == n_losses and 0 < min(pivots) and max(pivots) < len(blocks))
    sd = model.state_dict()
    assert fam.recognise(sd) in (None, name) and recognise(sd) in (None, name)
    assert fam.cfg_from_state_dict(name, sd) == (model.cfg if fam.widths else None)
    if fam.widths:
        assert recognise(sd) == name and fam.cfg_from_state_dict(name, {}) is None
    for model_name in {*fam.coefs, *fam.smoothing, *fam.p5_variants, *(m for m, _ in fam.reference_rows)}:
        assert family_of(model_name) is fam  # a family's constants are for its own models
    for (model_name, data), (coef, *_) in fam.reference_rows.items():
        assert reference_row(model_name, data).coef == coef
    for model_name, variants in fam.p5_variants.items():
        assert all(isinstance(p5_plan(model_name, v), StagePlan) for v in variants)
    for model_name in fam.smoothing:
        assert default_smoothing(model_name) != Smoothing()


def test_family_answers_that_callers_rely_on():
    assert isinstance(family_of("demo"), CifarResNets) and isinstance(family_of("resnet18"), TorchvisionModels)
    assert isinstance(family_of("resnet14"), TorchvisionModels)  # no CIFAR depth: an unknown name, refused on build
    assert isinstance(family_of("timm:x"), TimmModels) and isinstance(family_of("hf:x"), HuggingFaceModels)
    assert isinstance(family_of("pkg.mod:make"), UserFactories)
    assert family_of("demo").resolve(Arch("demo", extra={"k": 1})) == Arch("resnet20", 10, 1, extra={"k": 1})
    shapes = [(Arch("demo"), (1, 8, 8)), (Arch("resnet20", in_channels=1), (1, 8, 8)), (Arch("resnet56"), (3, 32, 32)),
              (Arch("mobilenet_v2_cifar"), (3, 32, 32)), (Arch("resnet18"), (3, 224, 224)),
              (Arch("x:y", 3, 2), (2, 224, 224))]
    assert [default_input_shape(a) for a, _ in shapes] == [s for _, s in shapes]
    assert [type(f) for f in FAMILIES if not f.probe] == [TimmModels, HuggingFaceModels, UserFactories]
    assert [type(f) for f in FAMILIES if not f.classes_from_checkpoint] == [UserFactories]
    assert [type(f) for f in FAMILIES if f.widths] == [CifarResNets, CifarMobileNetV1s, CifarMobileNetV2s]


# ----------------------------------------------------------------------------- a family added from outside


class ToyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.stage1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stage2(self.stage1(F.relu(self.bn(self.stem(x)))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ToyNets(Family):
    """Answers that differ from the generic ones, so each test below sees the family was asked."""

    label = "toy"
    input_size = 16
    coefs: ClassVar = {"toy": 1.5}
    reference_rows: ClassVar = {("toy", "cifar100"): (2.0, (0.1, 0.5), None, None)}
    smoothing: ClassVar = {"toy": {"p2_divisor": 3.0}}
    p5_variants: ClassVar = {"toy": {"A": ([2], [0.5, 0.25], [1])}}

    def claims(self, name):
        return name == "toy"

    def build(self, arch):
        return ToyNet(arch.num_classes or 10, arch.in_channels)

    def recognise(self, state_dict):
        return "toy" if {"stem.weight", "head.weight"} <= set(state_dict) else None

    def prunable_roots(self, model):
        return ["stage2.0"]  # the generic answer would add stem, stage1.0 and stage2.3

    def default_layers(self, model):
        return ["stage2.0"]  # a 1x1 conv: the generic rule never picks one

    def blocks(self, model):
        return ["stage1", "stage2"]

    def pivots(self, model, n_losses):
        return [1] if n_losses == 1 else None


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(family, "FAMILIES", list(FAMILIES))  # registered for this test only
    return register(ToyNets())


def test_a_registered_family_builds_loads_and_is_recognised(toy, tmp_path):
    loaded = load_model("toy", num_classes=4)
    assert isinstance(loaded.model, ToyNet) and loaded.arch == Arch("toy", 4, 3)
    assert default_input_shape(loaded.arch) == (3, 16, 16)
    torch.save(loaded.model.state_dict(), tmp_path / "plain.pth")
    again = load_model(checkpoint=tmp_path / "plain.pth")  # no --model: the family knows its keys
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert again.arch.model == "toy" and torch.equal(again.model(x), loaded.model(x))


def test_a_registered_family_prunes_and_reloads(toy, tmp_path):
    torch.manual_seed(0)
    loaded = load_model("toy", num_classes=4)
    shape = default_input_shape(loaded.arch)
    assert [g.name for g in prunable_groups(loaded.model, loaded.arch, shape)] == ["stage2.0"]
    pruned, arch = apply_pruning(loaded.model, loaded.arch, {"stage2.0": [0, 2, 5]}, shape)
    assert pruned.stage2[0].out_channels == 3 and pruned.stage2[3].in_channels == 3
    save_model(pruned, arch, tmp_path / "pruned.safetensors")
    again = load_model(checkpoint=tmp_path / "pruned.safetensors")
    assert again.arch.in_channels == 3  # as recorded, though the file's first 4-D key (stage1.0) reads 8
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(again.model(x), pruned.eval()(x))


def test_a_registered_family_decomposes_and_places_pivots(toy):
    model, arch = ToyNet(), Arch("toy", 10)
    assert Decomposer(model, arch, (3, 16, 16)).default_layers() == ["stage2.0"]
    assert block_names(model, arch) == ["stage1", "stage2"]
    assert resolve_pivots(model, arch, FinetuneStage(mode="aux", n_losses=1)).modules == ["stage1"]


def test_a_registered_familys_constants_reach_the_strategies(toy):
    assert default_coef("toy") == 1.5 and default_coef("toy", "cifar100") == 2.0
    assert reference_row("toy", "cifar100").t_range == {"P1": (0.1, 0.6)}
    assert default_smoothing("toy") == Smoothing(p2_divisor=3.0)
    assert p5_plan("toy", "A") == StagePlan([2], [0.5, 0.25], [1])


# ----------------------------------------------------------------------------- import direction


def _core_imports(path: Path) -> set[str]:
    """Every `core.*` module a source file imports, at any depth (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "core":
            found |= {node.module} if node.module != "core" else {f"core.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "core"}
    return found


def test_models_import_nothing_above_them_and_the_demo_no_zoo():
    allowed = ("core.models", "core.errors", "core.atomic")
    upward = {f"{p.relative_to(CORE)}: {m}" for p in (CORE / "models").rglob("*.py") for m in _core_imports(p)
              if not m.startswith(allowed)}
    assert upward == set()
    assert _core_imports(CORE / "models" / "demo.py") == {"core.models.arch"}
