"""`workbench export`: a run's step (or a model file) to ONNX, TorchScript and torch.export,
checked against torch; options (step, opset, dynamic batch) and one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from core.errors import WorkbenchError
from core.export import FORMATS, Source, export_model, load_source, run_steps
from core.models.checkpoint import load_model
from core.pipeline import replay
from tests.cli_runner import run_cli

SESSION = """version = 1
[model]
name = "demo"
[data]
spec = "demo"
[prune]
strategy = "P1"
[decompose]
method = "tucker2"
x = 1.71
[[finetune]]
mode = "ce"
epochs = 1
lr = 0.001
max_steps = 2
log_every = 1
"""
DEMO_FILE = Path(__file__).parents[1] / "core" / "assets" / "demo_resnet20_digits.safetensors"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    (root / "s.toml").write_text(SESSION)
    replay(root / "s.toml", root / "run", latency=False)
    return root / "run"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd)


def test_run_steps_in_pipeline_order_with_report_names(run_dir):
    steps = run_steps(run_dir)
    assert list(steps) == ["baseline", "pruned", "decomposed", "finetune-1-ce", "finetune:ce"]
    assert steps["finetune:ce"] == "finetune-1-ce"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported"])
def test_default_step_is_the_last_and_the_file_computes_what_torch_does(run_dir, fmt, tmp_path):
    source = load_source(run_dir)
    assert source.name == "finetune:ce" and source.batch_from == "8 test images of digits"
    done = export_model(source, fmt, tmp_path / f"m{FORMATS[fmt]}")
    assert done.max_abs_diff < 1e-4 and done.batch_sizes == (8, 1)
    # independently of the check: the written file run on new inputs matches the saved step model
    model = load_model(checkpoint=run_dir / "finetune-1-ce.safetensors").model.eval()
    x = torch.randn(3, 1, 8, 8)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(done.path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    elif fmt == "torchscript":
        got = torch.jit.load(str(done.path))(x)
    else:
        got = torch.export.load(str(done.path)).module()(x)
    with torch.no_grad():
        assert torch.allclose(got, model(x), atol=1e-4)


def test_onnx_opset_and_batch_axis_options(run_dir, tmp_path):
    source = load_source(run_dir, "decomposed", batch_size=4)
    dynamic = export_model(source, "onnx", tmp_path / "d.onnx", opset=13)
    static = export_model(source, "onnx", tmp_path / "s.onnx", dynamic_batch=False)
    graph_d, graph_s = onnx.load(str(dynamic.path)), onnx.load(str(static.path))
    assert {o.version for o in graph_d.opset_import if o.domain == ""} == {13} and dynamic.detail == "opset 13"
    assert graph_d.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, free batch axis
    assert graph_s.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert static.batch_sizes == (4,)


def test_baseline_without_a_file_is_the_sessions_model(run_dir):
    source = load_source(run_dir, "baseline")
    demo = load_model("demo").model.eval()
    with torch.no_grad():
        assert torch.equal(source.model(source.batch), demo(source.batch))


def test_model_file_gets_random_inputs_of_its_shape(tmp_path):
    source = load_source(DEMO_FILE, batch_size=5)
    assert source.batch.shape == (5, 1, 8, 8) and source.stem == "demo_resnet20_digits"
    assert load_source(DEMO_FILE, input_size=(1, 12, 12)).batch.shape[1:] == (1, 12, 12)


class ShapeDependent(nn.Module):
    """Traces to the branch of its example batch: wrong on a batch of one."""

    def forward(self, x):
        return x.flatten(1).sum(1, keepdim=True) * (2.0 if x.shape[0] > 1 else 3.0)


def test_a_failed_check_writes_nothing_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "m.torchscript.pt"
    out.write_text("old")
    source = Source(ShapeDependent(), "toy", "toy", torch.ones(4, 1, 2, 2), "4 ones")
    with pytest.raises(WorkbenchError, match="differs from torch by .* not written"):
        export_model(source, "torchscript", out)
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.torchscript.pt"]
    done = export_model(source, "torchscript", out, dynamic_batch=False)  # batch 4 only: it is right there
    assert done.max_abs_diff == 0


def test_cli_prints_the_difference_and_writes_beside_the_run(run_dir):
    result = cli("export", str(run_dir), "--step", "pruned", "--format", "torchscript")
    assert result.returncode == 0, result.stderr
    assert f"wrote {run_dir / 'pruned.torchscript.pt'}" in result.stdout
    assert "max abs difference vs torch: " in result.stdout and "8 test images of digits" in result.stdout
    assert torch.jit.load(str(run_dir / "pruned.torchscript.pt"))(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("args, message", [
    (["--step", "finetune:aux"], "has no such model; its steps are baseline, pruned, decomposed, finetune-1-ce"),
    (["--format", "tflite"], "--format tflite: use one of onnx, torchscript, exported"),
    (["--format", "exported", "--opset", "17"], "--opset is for --format onnx only"),
])
def test_cli_bad_options_are_one_error_line(run_dir, args, message):
    result = cli("export", str(run_dir), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1 and message in result.stderr


def test_cli_step_of_a_model_file_and_missing_paths(tmp_path):
    result = cli("export", str(DEMO_FILE), "--step", "pruned")
    assert result.returncode == 2 and "--step picks a model of a run directory" in result.stderr
    result = cli("export", str(tmp_path / "nope"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
