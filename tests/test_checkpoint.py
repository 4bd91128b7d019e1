"""Checkpoint reading, model building and saving (core/models/checkpoint.py), on real files."""

from __future__ import annotations

import builtins
import importlib
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from core.models import demo
from core.errors import WorkbenchError
from core.models.checkpoint import (
    ARCH_KEY,
    PICKLE_HINT,
    Placeholder,
    inert_load,
    load_model,
    read_checkpoint,
    save_model,
)
from core.models.cifar_mobilenet import V1_CFG, V2_CFG, CifarMobileNetV1, CifarMobileNetV2
from core.models.cifar_resnet import CifarResNet
from core.models.zoo import Arch

REFERENCE_PRUNED = {"res56.pth.tar": 600_332, "res56_global.pth.tar": 624_564, "res56_norm.pth.tar": 665_470}
CP3_FILE = "res56_norm_cp3_model.pth.tar"
PRUNED20 = [5, 16, 3, 20, 32, 7, 11, 64, 40]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, so eval outputs depend on every tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=gen) * 0.3)
    return model.eval()


def decompose(model: nn.Module, specs: dict[str, tuple]) -> nn.Module:
    """Replace convs the way the reference scripts do: `<name>-0/-1/-2` Sequentials."""
    for path, (kind, ranks, bias) in specs.items():
        conv = model.get_submodule(path)
        name = path.rsplit(".", 1)[-1]
        r_in, r_out = (ranks, ranks) if kind == "cp3" else ranks
        seq = nn.Sequential(OrderedDict([
            (f"{name}-0", nn.Conv2d(conv.in_channels, r_in, 1, bias=False)),
            (f"{name}-1", nn.Conv2d(r_in, r_out, conv.kernel_size, conv.stride, conv.padding, bias=False,
                                    groups=r_in if kind == "cp3" else 1)),
            (f"{name}-2", nn.Conv2d(r_out, conv.out_channels, 1, bias=bias)),
        ]))
        setattr(model.get_submodule(path.rpartition(".")[0]), name, seq)
    return model


USER_NET = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.body = nn.Conv2d(2, 4, 3)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)).mean((2, 3)))
"""


def save_user_net(folder: Path, monkeypatch, name: str = "wb_user_nets") -> tuple[nn.Module, Path]:
    """Write a user model class to `folder/name.py`, import it and `torch.save` a random instance."""
    (folder / f"{name}.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    net = randomise(importlib.import_module(name).TinyNet())
    path = folder / "user_net.pth"
    torch.save(net, path)
    return net, path


def assert_one_line(err: pytest.ExceptionInfo, *words: str) -> None:
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word in message


DECOMPOSITION = {
    "layer1.0.conv1": ("tucker2", (5, 7), False),
    "layer2.0.conv1": ("tucker2", (9, 6), False),  # stride 2, channel-changing block
    "layer2.1.conv2": ("cp3", 20, False),
    "layer3.2.conv2": ("cp3", 30, True),
}


# ----------------------------------------------------------------------------- reference files


@pytest.mark.seed
@pytest.mark.parametrize("model", [None, "resnet56"])
@pytest.mark.parametrize("file", sorted(REFERENCE_PRUNED))
def test_reference_pruned_files_load_exactly(seeds, file, model):
    loaded = load_model(model, seeds / file)
    raw = torch.load(seeds / file, map_location="cpu", weights_only=True)
    assert n_params(loaded.model) == REFERENCE_PRUNED[file]
    assert loaded.arch.model == "resnet56" and loaded.arch.num_classes == 10
    assert loaded.arch.cfg == raw["cfg"] == loaded.model.cfg
    assert "reference pruned" in loaded.source and file in loaded.source
    assert not loaded.model.training
    for key, tensor in raw["state_dict"].items():
        assert torch.equal(loaded.model.state_dict()[key], tensor)
    with torch.no_grad():
        out = loaded.model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    ckpt = read_checkpoint(seeds / file)
    assert ckpt.format == "reference-pruned" and ckpt.cfg == raw["cfg"] and not ckpt.decomposed


def test_unpruned_resnet56_parameter_count():
    loaded = load_model("resnet56")
    assert n_params(loaded.model) == 853_018
    assert loaded.arch.cfg == [16] * 9 + [32] * 9 + [64] * 9
    assert "no checkpoint" in loaded.source


@pytest.mark.seed
@pytest.mark.parametrize("model", [None, "resnet56"])
def test_pickled_cp3_model_opens_like_its_state_dict(seeds, tmp_path, model):
    """No flag needed; the same logits as the inertly read tensors saved as a plain state dict."""
    pickled = load_model(model, seeds / CP3_FILE)
    assert n_params(pickled.model) == 388_766 and pickled.source == f"{CP3_FILE} (pickled model object, read inertly)"
    plain = tmp_path / "cp3_state_dict.pth"
    torch.save(read_checkpoint(seeds / CP3_FILE).state_dict, plain)
    from_state_dict = load_model("resnet56", plain)
    assert n_params(from_state_dict.model) == 388_766 and "state dict" in from_state_dict.source
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(pickled.model(x), from_state_dict.model(x))


def _placeholder_at(root: Placeholder, path: str) -> Placeholder:
    for part in path.split("."):
        root = root.state["_modules"][part]
    return root


def _reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The reference ResNet-56 CP3 forward, written from the raw tensors alone."""
    def bn(x, p):
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"])

    def cp3(x, p, stride):
        name = p.rsplit(".", 1)[-1]
        w0, w1, w2 = (sd[f"{p}.{name}-{i}.weight"] for i in range(3))
        return F.conv2d(F.conv2d(F.conv2d(x, w0), w1, stride=stride, padding=1, groups=w1.shape[0]), w2)

    x = F.relu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"))
    for stage in (1, 2, 3):
        for block in range(9):
            p, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            out = bn(cp3(F.relu(bn(cp3(x, f"{p}.conv1", stride), f"{p}.bn1")), f"{p}.conv2", 1), f"{p}.bn2")
            residual = x
            if stride == 2:
                residual = F.avg_pool2d(x, 2, 2)
                residual = torch.cat([residual, torch.zeros_like(residual)], 1)
            x = F.relu(out + residual)
    return F.linear(F.avg_pool2d(x, 8).flatten(1), sd["linear.weight"], sd["linear.bias"])


@pytest.mark.seed
def test_pickled_cp3_model_reads_inertly(seeds):
    path = seeds / CP3_FILE
    ckpt = read_checkpoint(path)
    assert ckpt.format == "reference-pickle" and ckpt.pickled == "models.resnet.ResNet" and ckpt.module is None
    assert ckpt.cfg == torch.load(seeds / "res56_norm.pth.tar", map_location="cpu", weights_only=True)["cfg"]
    assert len(ckpt.decomposed) == 54 and set(ckpt.decomposed.values()) == {"cp3"}

    loaded = load_model(checkpoint=path)
    assert n_params(loaded.model) == 388_766
    assert loaded.arch.model == "resnet56" and loaded.arch.cfg == ckpt.cfg
    assert loaded.arch.extra["decomposed"] == ckpt.decomposed
    assert "54 layers rebuilt as CP3 sequences" in loaded.notes
    state = loaded.model.state_dict()
    assert state.keys() == ckpt.state_dict.keys()
    assert all(torch.equal(state[k], v) for k, v in ckpt.state_dict.items())

    # layer attributes the pickle carries as plain values agree with the rebuilt convs
    root = inert_load(path)
    assert root.qualname == "models.resnet.ResNet"
    for conv_path in ckpt.decomposed:
        name = conv_path.rsplit(".", 1)[-1]
        for i in range(3):
            theirs = _placeholder_at(root, f"{conv_path}.{name}-{i}").state
            ours = loaded.model.get_submodule(f"{conv_path}.{name}-{i}")
            assert (tuple(theirs["stride"]), tuple(theirs["padding"]), theirs["groups"]) == (
                ours.stride, ours.padding, ours.groups)
    assert loaded.model.layer2[0].conv1[1].stride == (2, 2)

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = loaded.model(x)
        expected = _reference_forward(ckpt.state_dict, x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- inert reader safety


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsExec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


class _RunsPopen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.Popen, (["touch", str(self.marker)],)


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_never_runs(tmp_path, zip_format):
    markers = [tmp_path / f"pwned{i}" for i in range(3)]
    payload = {
        "state_dict": {"fc.weight": torch.ones(3, 4), "fc.bias": torch.zeros(3)},
        "evil": [_RunsShell(markers[0]), _RunsExec(markers[1]), _RunsPopen(markers[2])],
    }
    path = tmp_path / "evil.pth"
    torch.save(payload, path, _use_new_zipfile_serialization=zip_format)

    ckpt = read_checkpoint(path)
    assert ckpt.format == "reference-pickle"
    assert set(ckpt.state_dict) == {"fc.weight", "fc.bias"}
    assert torch.equal(ckpt.state_dict["fc.weight"], torch.ones(3, 4))
    with pytest.raises(WorkbenchError) as err:
        load_model(checkpoint=path)
    assert_one_line(err, "evil.pth", "--model", "--trust-pickle")
    evil = inert_load(path)["evil"]
    assert all(isinstance(e, Placeholder) for e in evil)
    assert [e.qualname for e in evil] == ["posix.system", "builtins.exec", "subprocess.Popen"]
    assert not any(m.exists() for m in markers)


class _ShellModel(nn.Module):
    """A whole pickled "model" whose unpickling would run a shell command."""

    def __init__(self, marker):
        super().__init__()
        self.marker = marker

    def __reduce_ex__(self, protocol):
        return os.system, (f"touch {self.marker}",)


def test_pickled_model_with_payload_is_refused_inertly(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    torch.save(_ShellModel(marker), path)
    for model in (None, "resnet20"):
        with pytest.raises(WorkbenchError) as err:
            load_model(model, path)
        assert_one_line(err, "model.pth", "posix.system", "--model", "--trust-pickle")
    assert not marker.exists()


def test_plain_pickle_with_payload_is_unreadable_and_inert(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_RunsShell(marker), protocol=2))
    with pytest.raises(WorkbenchError) as err:
        read_checkpoint(path)
    assert_one_line(err, "evil.pkl", "--model", "--trust-pickle")
    assert not marker.exists()


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize("zip_format", [True, False])
def test_whole_model_saves_of_known_families_rebuild(tmp_path, zip_format, trust):
    original = randomise(CifarResNet(20, cfg=PRUNED20))
    path = tmp_path / "whole.pth"
    torch.save(original, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_model(checkpoint=path, trust_pickle=trust)
    assert loaded.arch.model == "resnet20" and loaded.arch.cfg == PRUNED20
    assert loaded.model is not original and type(loaded.model) is CifarResNet
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))


def test_user_model_class_needs_model_or_trust(tmp_path, monkeypatch):
    original, path = save_user_net(tmp_path, monkeypatch)
    x = torch.randn(2, 2, 9, 9)
    with pytest.raises(WorkbenchError) as err:
        load_model(checkpoint=path)
    assert_one_line(err, "user_net.pth pickles a whole wb_user_nets.TinyNet, which is not a known architecture: "
                    + PICKLE_HINT)
    with pytest.raises(WorkbenchError) as err:
        load_model("resnet20", path)
    assert "--trust-pickle" in str(err.value).splitlines()[0]

    by_name = load_model("wb_user_nets:TinyNet", path)  # --model: the tensors, read inertly
    trusted = load_model(checkpoint=path, trust_pickle=True)  # the pickled object itself
    assert trusted.arch == Arch("wb_user_nets:TinyNet", num_classes=3, in_channels=2)
    assert "loaded with --trust-pickle: the file's own code ran" in trusted.notes
    assert not trusted.model.training
    saved = tmp_path / "user_net.safetensors"
    save_model(trusted.model, trusted.arch, saved)
    rebuilt = load_model(checkpoint=saved)
    with torch.no_grad():
        expected = original(x)
        for loaded in (by_name, trusted, rebuilt):
            assert torch.equal(loaded.model(x), expected)

    monkeypatch.delitem(sys.modules, "wb_user_nets")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(WorkbenchError) as err:
        load_model(checkpoint=path, trust_pickle=True)
    assert_one_line(err, "user_net.pth", "ModuleNotFoundError", "--model", "--trust-pickle")


# ----------------------------------------------------------------------------- decomposed state dicts


@pytest.mark.parametrize("cfg", [None, PRUNED20])
def test_reference_style_decomposed_state_dict_rebuilds_exactly(tmp_path, cfg):
    original = randomise(decompose(CifarResNet(20, cfg=cfg), DECOMPOSITION))
    path = tmp_path / "decomposed.pth.tar"
    torch.save(original.state_dict(), path, _use_new_zipfile_serialization=False)

    loaded = load_model(checkpoint=path)
    assert loaded.arch.model == "resnet20"
    assert loaded.arch.cfg == (cfg or [16] * 3 + [32] * 3 + [64] * 3)
    assert loaded.arch.extra["decomposed"] == {p: spec[0] for p, spec in DECOMPOSITION.items()}
    assert "2 layers rebuilt as Tucker-2 sequences" in loaded.notes
    assert "2 layers rebuilt as CP3 sequences" in loaded.notes
    assert n_params(loaded.model) == n_params(original)
    assert str(loaded.model) == str(original)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))

    saved = tmp_path / "decomposed.safetensors"
    save_model(loaded.model, loaded.arch, saved)
    again = load_model(checkpoint=saved)
    assert again.arch == loaded.arch
    with torch.no_grad():
        assert torch.equal(again.model(x), original(x))


def test_decomposed_conv_of_wrong_size_is_reported(tmp_path):
    sd = decompose(CifarResNet(20), {"layer1.0.conv1": ("tucker2", (4, 4), False)}).state_dict()
    sd["layer1.0.conv1.conv1-0.weight"] = torch.zeros(4, 15, 1, 1)  # 15 inputs, the block has 16
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(WorkbenchError) as err:
        load_model(checkpoint=path)
    assert "  layer1.0.conv1.weight: missing from the checkpoint" in str(err.value)


# ----------------------------------------------------------------------------- torch file variants


def test_legacy_raw_state_dict(tmp_path):
    original = randomise(CifarResNet(32))
    path = tmp_path / "legacy.pth"
    torch.save(original.state_dict(), path, _use_new_zipfile_serialization=False)
    assert read_checkpoint(path).format == "state_dict"
    loaded = load_model(checkpoint=path)
    assert loaded.arch.model == "resnet32" and "state dict" in loaded.source
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))


def test_wrapper_and_dataparallel_prefix(tmp_path):
    original = randomise(CifarResNet(20, num_classes=100))
    path = tmp_path / "wrapped.pth"
    sd = {f"module.{k}": v for k, v in original.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 7, "best_prec1": 91.5}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "wrapped" and not any(k.startswith("module.") for k in ckpt.state_dict)
    loaded = load_model(checkpoint=path)
    assert loaded.arch.num_classes == 100
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))


def test_model_and_net_wrappers(tmp_path):
    original = randomise(CifarResNet(20))
    for key in ("model", "net"):
        path = tmp_path / f"{key}.pth"
        torch.save({key: original.state_dict(), "optimizer": {"lr": 0.1}}, path)
        assert read_checkpoint(path).format == "wrapped"
        assert load_model(checkpoint=path).arch.model == "resnet20"


@pytest.mark.parametrize("model_cls,cfg,family", [
    (CifarMobileNetV1, [w // 2 for w in V1_CFG], "mobilenet_v1_cifar"),
    (CifarMobileNetV2, [w // 2 for w in V2_CFG], "mobilenet_v2_cifar"),
])
def test_mobilenet_family_and_widths_inferred(tmp_path, model_cls, cfg, family):
    original = randomise(model_cls(10, cfg))
    path = tmp_path / "m.pth"
    torch.save(original.state_dict(), path)
    loaded = load_model(checkpoint=path)
    assert loaded.arch.model == family and loaded.arch.cfg == cfg
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))


# ----------------------------------------------------------------------------- safetensors


@pytest.mark.parametrize("cfg", [None, PRUNED20])
def test_safetensors_round_trip_needs_no_model(tmp_path, cfg):
    original = randomise(CifarResNet(20, num_classes=7, cfg=cfg, in_channels=1))
    arch = Arch("resnet20", num_classes=7, in_channels=1, cfg=cfg, extra={"note": "kept"})
    path = tmp_path / "sub" / "model.safetensors"
    save_model(original, arch, path)
    assert os.listdir(path.parent) == ["model.safetensors"]
    with safe_open(str(path), framework="pt") as f:
        assert Arch.from_json(f.metadata()[ARCH_KEY]) == arch

    loaded = load_model(checkpoint=path)
    assert loaded.arch.model == "resnet20" and loaded.arch.num_classes == 7 and loaded.arch.in_channels == 1
    assert loaded.arch.cfg == (cfg or [16] * 3 + [32] * 3 + [64] * 3)
    assert loaded.arch.extra == {"note": "kept"}
    assert read_checkpoint(path).format == "safetensors"
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))

    save_model(loaded.model, loaded.arch, path)  # overwrite in place
    assert os.listdir(path.parent) == ["model.safetensors"]


def test_safetensors_recognised_by_content(tmp_path):
    original = randomise(CifarResNet(20))
    path = tmp_path / "model.pt"
    save_model(original, Arch("resnet20", 10), path)
    assert read_checkpoint(path).format == "safetensors"
    assert load_model(checkpoint=path).arch.model == "resnet20"


# ----------------------------------------------------------------------------- mismatches and bad files


def test_mismatch_lists_every_tensor(tmp_path):
    sd = randomise(CifarResNet(20)).state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(12, 16, 3, 3)
    del sd["linear.bias"]
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(WorkbenchError) as err:
        load_model("resnet20", path)
    first, *details = str(err.value).splitlines()
    assert first == (
        "checkpoint broken.pth does not fit model resnet20: 1 missing, 1 unexpected, 1 with another shape; "
        "pass the right --model / --num-classes"
    )
    assert details == [
        "  layer1.0.conv1.weight: checkpoint [12, 16, 3, 3], model [16, 16, 3, 3]",
        "  linear.bias: missing from the checkpoint",
        "  extra.weight: in the checkpoint, not in the model",
    ]


def test_num_batches_tracked_is_optional(tmp_path):
    original = randomise(CifarResNet(20))
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in original.state_dict().items() if "num_batches_tracked" not in k}, path)
    load_model(checkpoint=path)


@pytest.mark.seed
def test_long_mismatch_is_capped(seeds, tmp_path):
    sd = torch.load(seeds / "res56.pth.tar", map_location="cpu", weights_only=True)["state_dict"]
    path = tmp_path / "res56_raw.pth"
    torch.save(sd, path)
    with pytest.raises(WorkbenchError) as err:
        load_model("resnet20", path, num_classes=100)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(
        "checkpoint res56_raw.pth does not fit model resnet20: 180 unexpected, 2 with another shape;")
    assert len(lines) == 22 and lines[-1].startswith("  ... and ") and lines[-1].endswith(" more")


@pytest.mark.seed
def test_unreadable_files_give_clear_errors(seeds, tmp_path):
    legacy = (seeds / "res56.pth.tar").read_bytes()
    zipped = tmp_path / "zipped.pth"
    torch.save({"w": torch.ones(1000)}, zipped)
    st = tmp_path / "good.safetensors"
    save_model(CifarResNet(20), Arch("resnet20", 10), st)
    cases = {
        "trunc_legacy.pth.tar": legacy[:100_000],
        "trunc_zip.pth": zipped.read_bytes()[:2000],
        "trunc.safetensors": st.read_bytes()[:5000],
        "empty.pth": b"",
        "notes.txt": b"these are not weights\n",
        "garbage.safetensors": b"\x00" * 64,
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for trust in (False, True):
            with pytest.raises(WorkbenchError) as err:
                load_model("resnet20", path, trust_pickle=trust)
            assert name in str(err.value) and len(str(err.value).splitlines()) == 1
    with pytest.raises(WorkbenchError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    no_tensors = tmp_path / "no_tensors.pth"
    torch.save({"epoch": 3}, no_tensors)
    with pytest.raises(WorkbenchError, match="no model tensors"):
        read_checkpoint(no_tensors)


def test_unknown_architecture_asks_for_model(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"foo.weight": torch.ones(2, 2)}, path)
    with pytest.raises(WorkbenchError, match="pass --model"):
        load_model(checkpoint=path)
    with pytest.raises(WorkbenchError, match="pass --model"):
        load_model()


# ----------------------------------------------------------------------------- other model sources


def test_torchvision_model_and_checkpoint(tmp_path):
    fresh = load_model("resnet18", num_classes=10)
    assert fresh.model.fc.out_features == 10 and fresh.arch.num_classes == 10
    original = randomise(fresh.model)
    path = tmp_path / "r18.pth"
    torch.save(original.state_dict(), path)
    loaded = load_model("resnet18", checkpoint=path)
    assert loaded.arch.num_classes == 10
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))
    with pytest.raises(WorkbenchError, match="pass --model"):
        load_model(checkpoint=path)
    saved = tmp_path / "r18.safetensors"
    save_model(loaded.model, loaded.arch, saved)
    with torch.no_grad():
        assert torch.equal(load_model(checkpoint=saved).model(x), original(x))


def test_import_string_factory(tmp_path):
    spec = "tests.fixtures_models:tiny_net"
    fresh = load_model(spec, num_classes=4)
    assert fresh.model[-1].out_features == 4
    original = randomise(fresh.model)
    path = tmp_path / "tiny.pth"
    torch.save(original.state_dict(), path)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_model(spec, path, num_classes=4).model(x), original(x))
    with pytest.raises(WorkbenchError, match="does not fit"):
        load_model(spec, path)  # the factory's default 10 classes
    saved = tmp_path / "tiny.safetensors"
    save_model(original, fresh.arch, saved)
    again = load_model(checkpoint=saved)
    assert again.arch.model == spec
    with torch.no_grad():
        assert torch.equal(again.model(x), original(x))


def test_pretrained_weights_never_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WorkbenchError, match="not on disk"):
        load_model("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(WorkbenchError, match="--weights"):
        load_model("resnet18", checkpoint=tmp_path / "x.pth", weights="IMAGENET1K_V1")


def test_pretrained_weights_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    original = randomise(load_model("resnet18").model)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(original.state_dict(), cache / "resnet18-f37072fd.pth")
    loaded = load_model("resnet18", weights="IMAGENET1K_V1")
    assert loaded.arch.num_classes == 1000 and "IMAGENET1K_V1" in loaded.source


def test_demo_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_WEIGHTS", tmp_path / "missing.safetensors")
    with pytest.raises(WorkbenchError, match="demo weights"):
        load_model("demo")
    original = randomise(CifarResNet(20, in_channels=1))
    path = tmp_path / "demo.safetensors"
    save_model(original, demo.demo_arch(), path)
    monkeypatch.setattr(demo, "DEMO_WEIGHTS", path)
    loaded = load_model("demo")
    assert loaded.arch.model == "resnet20" and loaded.arch.in_channels == 1
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), original(x))
