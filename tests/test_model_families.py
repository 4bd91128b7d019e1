"""Models by name beyond torchvision: `timm:NAME` (random init, weights from a local file) and
`hf:FOLDER` (a transformers image classifier saved with save_pretrained)."""

from __future__ import annotations

import shutil

import pytest
import timm
import torch

from core.errors import WorkbenchError
from core.models.checkpoint import load_model, save_model
from core.stats import conv_layers
from tests.cli_runner import run_cli

TIMM = "timm:test_resnet"


def test_timm_by_name_random_init_with_classes_and_channels():
    loaded = load_model(TIMM, num_classes=7, in_channels=1)
    assert loaded.arch.model == TIMM and loaded.arch.num_classes == 7 and loaded.arch.in_channels == 1
    assert loaded.model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert len(conv_layers(loaded.model)) > 3


def test_timm_weights_from_a_local_file_classes_read_from_it(tmp_path):
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=5).eval()
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    loaded = load_model(TIMM, checkpoint=tmp_path / "weights.pth")
    assert loaded.arch.num_classes == 5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), reference(x))
    save_model(loaded.model, loaded.arch, tmp_path / "saved.safetensors")  # the workbench's own file
    again = load_model(checkpoint=tmp_path / "saved.safetensors")  # no --model needed
    with torch.no_grad():
        assert again.arch.model == TIMM and torch.equal(again.model(x), reference(x))


def test_unknown_timm_model_is_one_error():
    with pytest.raises(WorkbenchError, match="timm has no model 'no_such_net'"):
        load_model("timm:no_such_net")


@pytest.fixture
def hf_folder(tmp_path):
    from transformers import (  # 4 s: only where used
        ResNetConfig,
        ResNetForImageClassification,
    )

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4,
                          layer_type="basic")
    torch.manual_seed(0)
    model = ResNetForImageClassification(config).eval()
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", model


def test_hugging_face_classifier_from_a_local_folder(hf_folder, tmp_path):
    folder, reference = hf_folder
    loaded = load_model(f"hf:{folder}")
    assert loaded.arch.num_classes == 4 and loaded.arch.in_channels == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), reference(pixel_values=x).logits)  # logits, a plain tensor
    save_model(loaded.model, loaded.arch, tmp_path / "saved.safetensors")
    shutil.rmtree(folder)  # the config travels in the file: no folder needed to reload
    again = load_model(checkpoint=tmp_path / "saved.safetensors")
    with torch.no_grad():
        assert torch.equal(again.model(x), reference(pixel_values=x).logits)


def test_hugging_face_new_class_count_and_missing_folder(hf_folder, tmp_path):
    folder, _ = hf_folder
    assert load_model(f"hf:{folder}", num_classes=9).model(torch.randn(1, 3, 32, 32)).shape == (1, 9)
    with pytest.raises(WorkbenchError, match="holds no config.json"):
        load_model(f"hf:{tmp_path / 'empty'}")


def test_cli_inspects_a_timm_model(tmp_path):
    result = run_cli("inspect", "--model", TIMM, "--num-classes", "3", "--input-size", "3x32x32", "--no-latency",
                     "--json", str(tmp_path / "s.json"))
    assert result.returncode == 0, result.stderr
    assert "timm:test_resnet" in result.stdout and '"name": "conv1.0"' in (tmp_path / "s.json").read_text()


def test_a_saved_timm_model_exports_to_onnx(tmp_path):
    from core.export import export_model, load_source

    loaded = load_model(TIMM, num_classes=5)
    save_model(loaded.model, loaded.arch, tmp_path / "timm.safetensors")
    source = load_source(tmp_path / "timm.safetensors", batch_size=2, input_size=(3, 64, 64))
    done = export_model(source, "onnx", tmp_path / "timm.onnx")
    assert done.path.is_file() and done.max_abs_diff < 1e-4 and done.batch_sizes == (2, 1)
