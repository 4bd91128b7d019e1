"""The GPU code paths, checked on a CPU: the torch floor, out of memory anywhere in a step
or evaluation (injected), the fp16 gradient scaler in the checkpoint (CPU autocast and
GradScaler("cpu")), amp refused without CUDA, the GPU each torchrun process takes, the
device named in events and reports, the teacher outside autocast, deterministic kernels and
measuring every step in the same layout. Several processes: tests/test_ddp_failures.py."""

from __future__ import annotations

import copy
import operator
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from torch import nn

import core.finetune.trainer as trainer_module
import core.pipeline as pipeline
from core.data import load_data
from core.errors import WorkbenchError
from core.finetune.settings import FinetuneStage
from core.finetune.trainer import Placement, Stopped, Trainer, load_checkpoint
from core.models.checkpoint import load_model
from core.models.demo import demo_arch
from tests.cli_runner import run_cli
from workbench.replay_view import plain_line

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
# torch names the code relies on, and the torch release that added each
TORCH_NAMES = {"OutOfMemoryError": "2.5", "amp.GradScaler": "2.3"}


@pytest.fixture(scope="module")
def digits():
    return load_data("demo")


@pytest.fixture(scope="module")
def teacher():
    return load_model("demo").model


def run(teacher, data, stage, tmp_path=None, events=None, student=None, resume=None):
    events = events if events is not None else []
    t = Trainer(student if student is not None else copy.deepcopy(teacher), teacher, demo_arch(), data, [stage],
                SHAPE, events.append, tmp_path / "ft.ckpt" if tmp_path else None, Placement(torch.device("cpu")))
    return t, t.run(resume)


def oom(*_):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_torch_floor_covers_the_names_the_code_uses():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = {r.name: r for r in map(Requirement, dependencies)}
    floor = {name: max(Version(s.version) for s in requirements[name].specifier if s.operator == ">=")
             for name in ("torch", "torchvision")}
    assert floor["torch"] >= max(Version(v) for v in TORCH_NAMES.values())
    assert floor["torchvision"] >= Version("0.20")  # the torchvision of torch 2.5
    assert requirements["torch"].specifier.contains(torch.__version__.split("+")[0])  # the installed one stays in
    for name in TORCH_NAMES:
        assert operator.attrgetter(name)(torch)
    for path in (REPO / "core").rglob("*.py"):  # every torch name of that kind the code uses is listed
        text = path.read_text()
        assert "torch.cuda.amp" not in text and "torch.cpu.amp" not in text, path


@pytest.mark.parametrize("where", ["optimizer step", "batch"])
def test_out_of_memory_anywhere_in_a_step_is_one_line_with_advice_that_works(teacher, digits, tmp_path,
                                                                              monkeypatch, where):
    stage = FinetuneStage(mode="mse", epochs=1, max_steps=4, lr=0.01, batch_size=32, checkpoint_every=1,
                          log_every=10)
    calls = [0]

    def third(function):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 3:
                oom()
            return function(*args, **kwargs)
        return wrapped
    if where == "optimizer step":
        monkeypatch.setattr(torch.optim.SGD, "step", third(torch.optim.SGD.step))
    else:
        monkeypatch.setattr(Trainer, "_batch", third(Trainer._batch))
    events = []
    with pytest.raises(WorkbenchError) as caught:
        run(teacher, digits, stage, tmp_path, events)
    line = str(caught.value)
    assert line == ("out of memory (cpu) at stage 1, epoch 1, batch 3 at finetune[0].batch_size 32: set "
                    "finetune[0].batch_size = 16 (or amp = \"bf16\") and replay into a new --out (--resume "
                    "continues only the unchanged session)")
    assert events[-1]["event"] == "failed" and events[-1]["message"] == line
    assert load_checkpoint(tmp_path / "ft.ckpt")["step"] == 2  # the last good batch


def test_out_of_memory_while_evaluating_is_one_line(teacher, digits, monkeypatch):
    student = copy.deepcopy(teacher)
    student.register_forward_pre_hook(lambda m, i: oom() if not m.training else None)
    stage = FinetuneStage(mode="ce", epochs=1, max_steps=2, lr=0.01, batch_size=32)
    with pytest.raises(WorkbenchError, match=r"^out of memory \(cpu\) while evaluating \(batches of 32\) at "
                                             r"finetune\[0\]\.batch_size 32: set finetune\[0\]\.batch_size = 16"):
        run(teacher, digits, stage, student=student)


@pytest.fixture
def cpu_amp(monkeypatch):
    """Let `amp` run on the CPU (CPU autocast, GradScaler("cpu")), with a scaler that grows
    every step so that its state matters within a few batches."""
    monkeypatch.setattr(trainer_module, "AMP_DEVICES", ("cuda", "cpu"))
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: real(device, enabled=enabled,
                                                                               growth_interval=1))


def test_fp16_resume_restores_the_gradient_scaler(teacher, digits, tmp_path, cpu_amp):
    stage = FinetuneStage(mode="ce", epochs=3, max_steps=4, lr=0.01, batch_size=32, amp="fp16",
                          checkpoint_every=100, log_every=1)
    straight = copy.deepcopy(teacher)
    run(teacher, digits, stage, student=straight)

    stopping = Trainer(copy.deepcopy(teacher), teacher, demo_arch(), digits, [stage], SHAPE, lambda e: None,
                       tmp_path / "ft.ckpt", Placement(torch.device("cpu")))
    stopping.emit = lambda e: stopping.request_stop() if e["event"] == "step" and e["epoch"] == 1 else None
    with pytest.raises(Stopped):
        stopping.run()
    document = load_checkpoint(tmp_path / "ft.ckpt")
    assert (document["epoch"], document["step"]) == (1, 2)
    assert document["scaler"]["scale"] != 65536.0  # it moved since the start: it must come back
    resumed = copy.deepcopy(teacher)
    run(teacher, digits, stage, tmp_path, student=resumed, resume=document)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_teacher_runs_in_full_precision_in_the_students_layout(teacher, digits, cpu_amp):
    seen = {}
    mine = copy.deepcopy(teacher)
    mine.register_forward_hook(lambda m, i, o: seen.setdefault("teacher", o.dtype) and None)
    student = copy.deepcopy(teacher)
    student.register_forward_hook(lambda m, i, o: seen.setdefault("student", o.dtype) and None)
    stage = FinetuneStage(mode="mse", epochs=1, max_steps=2, lr=0.01, amp="bf16", channels_last=True)
    run(mine, digits, stage, student=student)
    assert seen == {"teacher": torch.float32, "student": torch.bfloat16}
    assert mine.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_amp_without_cuda_is_refused_in_one_line(teacher, digits, tmp_path):
    with pytest.raises(WorkbenchError, match=r'^finetune\[0\]\.amp = "bf16" needs a CUDA GPU but this process '
                                             r'trains on cpu .*set amp = "off"'):
        run(teacher, digits, FinetuneStage(mode="ce", amp="bf16"))
    (tmp_path / "s.toml").write_text('version = 1\n[model]\nname = "demo"\n[data]\nspec = "demo"\n[prune]\nstrategy = "P1"\n'
                                     '[[finetune]]\nmode = "ce"\namp = "fp16"\n')
    done = run_cli("replay", str(tmp_path / "s.toml"), "--out", str(tmp_path / "run"), "--no-latency", cwd=REPO)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith('error: finetune[0].amp = "fp16" needs a CUDA GPU')
    assert not (tmp_path / "run").exists()  # refused before anything was computed or written


def test_each_process_takes_its_local_gpu_and_their_count_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setenv("LOCAL_RANK", "1")  # the second process on this node (global rank 3, say)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    place = Placement.detect()
    assert place.device == torch.device("cuda", 1) and place.name == "cuda:1 (NVIDIA H200)"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(WorkbenchError, match=r"torchrun starts 4 processes on this machine but it has 2 GPU\(s\): "
                                             r"pass --nproc_per_node 2"):
        Placement.detect()


def test_stage_event_and_progress_line_name_the_device(teacher, digits):
    events = []
    run(teacher, digits, FinetuneStage(mode="ce", epochs=1, max_steps=1), events=events)
    stage = next(e for e in events if e["event"] == "stage")
    assert stage["device"] == "cpu" and stage["processes"] == 1
    assert plain_line(stage).endswith("1 epochs of 1 batches on cpu")


def test_deterministic_kernels_are_set_for_the_stage_and_restored(teacher, digits, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = []
    student = copy.deepcopy(teacher)
    student.register_forward_hook(lambda m, i, o: seen.append(
        (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark)) and None)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    t, _ = run(teacher, digits, FinetuneStage(mode="ce", epochs=1, max_steps=2, deterministic=True), student=student)
    assert set(seen) == {(True, True, False)}
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    assert trainer_module.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    t.place = Placement(torch.device("cuda"))  # the autotuner on CUDA for a stage that is not deterministic
    with t._kernels(FinetuneStage(mode="ce")):
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()


def test_an_operation_without_a_deterministic_kernel_is_one_line(teacher, digits):
    student = copy.deepcopy(teacher)

    def refuse(module, args):
        raise RuntimeError("adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but "
                           "you set 'torch.use_deterministic_algorithms(True)'.")
    student.linear.register_forward_pre_hook(refuse)
    with pytest.raises(WorkbenchError, match=r"^finetune\[0\]\.deterministic = true, but an operation of this model "
                                             r"has no deterministic kernel on cpu \(adaptive_avg_pool2d_backward_cuda"
                                             r".*set finetune\[0\]\.deterministic = false$"):
        run(teacher, digits, FinetuneStage(mode="ce", epochs=1, max_steps=2, deterministic=True), student=student)


def test_every_step_is_measured_in_the_same_layout(tmp_path, monkeypatch):
    """After a channels_last stage the student is measured as a contiguous copy, like the
    earlier steps; the report names the device it trained on."""
    layouts = []
    measure = pipeline.measure_costs

    def recording(opened, *args, **kwargs):
        conv = next(m for m in opened.model.modules() if isinstance(m, nn.Conv2d))
        layouts.append((opened.loaded.source, conv.weight.is_contiguous()))
        return measure(opened, *args, **kwargs)
    monkeypatch.setattr(pipeline, "measure_costs", recording)
    (tmp_path / "s.toml").write_text('version = 1\n[model]\nname = "demo"\n[data]\nspec = "demo"\n[prune]\nstrategy = "P1"\n'
                                     '[[finetune]]\nmode = "ce"\nepochs = 1\nmax_steps = 2\nchannels_last = true\n')
    run_ = pipeline.replay(tmp_path / "s.toml", tmp_path / "run", latency=False)
    assert [source for source, _ in layouts][-1] == "finetune:ce"
    assert all(contiguous for _, contiguous in layouts)
    assert run_.report["device"] == "cpu" and "- trained on cpu" in (tmp_path / "run" / "report.md").read_text()
