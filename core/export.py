"""Export a model the workbench saved to ONNX, TorchScript or a `torch.export` program, and
check the exported file against torch on a batch (`workbench export`).

The source is a run directory (one model per step: `baseline`, `pruned`, `decomposed`,
`finetune:<mode>`; default the last) or a model file. The batch is the first test images of
the run's data when it has data, else seeded random inputs. The file is written atomically
and only once the check passes: a failed export or check leaves nothing behind.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.atomic import atomic_path
from core.errors import WorkbenchError, first_line

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported": ".pt2"}
TOLERANCE = 1e-3
ONNX_DYNAMO_MIN_OPSET = 18  # torch.export-based ONNX exporter: opset 18 and up
_FINETUNE_FILE = re.compile(r"^finetune-(\d+)-(\w+)$")


@dataclass
class Source:
    """What to export: the model (eval, CPU), its step, and the batch to check on."""

    model: nn.Module
    name: str
    stem: str  # of the default output file
    batch: torch.Tensor
    batch_from: str


@dataclass
class Exported:
    path: Path
    max_abs_diff: float
    checked_with: str
    batch_sizes: tuple[int, ...]
    detail: str  # the ONNX opset written


def run_steps(run_dir: Path) -> dict[str, str]:
    """The steps of a run directory that can be exported, in pipeline order: step name ->
    model file stem. `baseline` is always there (its file, or the session's model)."""
    steps = {"baseline": "baseline"}
    steps.update({name: name for name in ("pruned", "decomposed") if (run_dir / f"{name}.safetensors").is_file()})
    tuned = sorted((int(m[1]), m[2], m[0]) for f in run_dir.glob("finetune-*.safetensors")
                   if (m := _FINETUNE_FILE.match(f.stem)))
    for _, mode, stem in tuned:
        steps[stem] = stem
        steps[f"finetune:{mode}"] = stem  # the name report.json uses: the last stage of that mode
    return steps


def pick_step(run_dir: Path, step: str | None) -> tuple[str, str]:
    """(step name, file stem) of `step` in the run (default the last one)."""
    steps = run_steps(run_dir)
    if step is None:
        stem = list(steps.values())[-1]
        return next(n for n, s in reversed(steps.items()) if s == stem), stem
    if step not in steps:
        raise WorkbenchError(f"--step {step}: {run_dir} has no such model; its steps are "
                             f"{', '.join(dict.fromkeys(steps))}")
    return step, steps[step]


def load_source(path: Path, step: str | None = None, batch_size: int = 8,
                input_size: tuple[int, int, int] | None = None, trust: bool = False) -> Source:
    """The model of a run directory's step (or of a model file) and a batch to check it on;
    a run's baseline built by code its session names needs `trust` (as replay's --trust-pickle)."""
    from core.data import load_data
    from core.measure import default_input_shape
    from core.models.checkpoint import load_model
    from core.target import parse_input_size

    if batch_size < 1:
        raise WorkbenchError(f"--batch must be at least 1, got {batch_size}")
    if not path.exists():
        raise WorkbenchError(f"{path} does not exist: give a run directory (a replay's --out) or a model file")
    data = None
    if path.is_dir():
        session = _session(path)
        name, stem = pick_step(path, step)
        file = path / f"{stem}.safetensors"
        if file.is_file():
            loaded = load_model(checkpoint=file)
        else:  # no [train]: the baseline is the model the session opened
            t = session.target(trust)
            loaded = load_model(t.model, t.checkpoint, t.num_classes, t.in_channels, t.weights, t.trust_pickle)
        if session.data is not None:
            normalize, split = session.data.options()
            data = load_data(session.data.spec, augment=False, normalize=normalize, split=split)
        if input_size is None and session.model.input_size:
            input_size = parse_input_size(session.model.input_size)
    else:
        if step is not None:
            raise WorkbenchError("--step picks a model of a run directory: give RUN_DIR, not a model file")
        name, stem, loaded = path.name, path.name.split(".")[0], load_model(checkpoint=path)
    if data is not None and len(data.test) > 0:
        images = torch.stack([data.test[i][0] for i in range(min(batch_size, len(data.test)))])
        return Source(loaded.model.eval(), name, stem, images, f"{len(images)} test images of {data.name}")
    shape = input_size or default_input_shape(loaded.arch)
    batch = torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(0))
    return Source(loaded.model.eval(), name, stem, batch, f"{batch_size} random inputs {'x'.join(map(str, shape))}")


def _session(run_dir: Path):
    from core.session import load_session

    frozen = run_dir / "session.toml"
    if not frozen.is_file():
        raise WorkbenchError(f"{run_dir} holds no session.toml: give the --out folder of a replay, or a model file")
    return load_session(frozen).resolved(run_dir.resolve())


def default_out(path: Path, source: Source, fmt: str) -> Path:
    """RUN_DIR/<step file stem><suffix>, or the model file's name with the format's suffix."""
    return (path if path.is_dir() else path.parent) / f"{source.stem}{FORMATS[fmt]}"


def check_options(fmt: str, opset: int | None) -> None:
    """One error line for a format or opset that cannot be, before anything is loaded."""
    if fmt not in FORMATS:
        raise WorkbenchError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise WorkbenchError("--opset is for --format onnx only")


def export_model(source: Source, fmt: str, out: Path, opset: int | None = None,
                 dynamic_batch: bool = True, tolerance: float = TOLERANCE) -> Exported:
    """Write `source.model` to `out` as `fmt` and check it against torch on the batch (and, with
    a dynamic batch axis, on a batch of one); over `tolerance` nothing is written."""
    check_options(fmt, opset)
    model, batch = source.model, source.batch
    batches = [batch, batch[:1]] if dynamic_batch and len(batch) > 1 else [batch]
    with atomic_path(out) as tmp:
        try:
            detail = _WRITERS[fmt](model, batch, tmp, opset, dynamic_batch) or ""
        except WorkbenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - the exporters raise many kinds: one line, nothing written
            raise WorkbenchError(f"cannot export {source.name} as {fmt}: {type(exc).__name__}: "
                                 f"{first_line(exc)}") from None
        run, runtime = _RUNNERS[fmt](tmp)
        with torch.no_grad():
            diff = max(float((run(b) - model(b)).abs().max()) for b in batches)
        if not diff <= tolerance:
            raise WorkbenchError(f"the exported {fmt} model differs from torch by {diff:.3g} (over {tolerance:g}) "
                                 f"on {source.batch_from}: not written")
    return Exported(out, diff, runtime, tuple(len(b) for b in batches), detail)


def _write_onnx(model, batch, path, opset, dynamic_batch):
    """The torch.export-based exporter (opset 18 and up, the default), the TorchScript-based one
    for older opsets (which the new one cannot convert to)."""
    _need("onnx", "ONNX export", "export")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if opset is not None and opset < ONNX_DYNAMO_MIN_OPSET:
            axes = {"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(model, (batch,), str(path), dynamo=False, opset_version=opset, input_names=["x"],
                              output_names=["logits"], dynamic_axes=axes)
        else:
            _need("onnxscript", "ONNX export", "export")
            dynamic = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
            program = torch.onnx.export(model, (batch,), dynamo=True, input_names=["x"], output_names=["logits"],
                                        opset_version=opset, dynamic_shapes=_named(model, dynamic),
                                        external_data=False, verbose=False)
            program.save(str(path), external_data=False)
    import onnx

    written = next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                   if o.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:
        raise WorkbenchError(f"--opset {opset}: the exporter wrote opset {written} (it cannot convert this model "
                             "to the one asked for); try another --opset")
    return f"opset {written}"


def _write_torchscript(model, batch, path, opset, dynamic_batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, batch, check_trace=False)
        torch.jit.save(traced, str(path))  # deprecated in favour of torch.export, still what many tools load


def _write_exported(model, batch, path, opset, dynamic_batch):
    dynamic = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    program = torch.export.export(model, (batch,), dynamic_shapes=_named(model, dynamic))
    with open(path, "wb") as f:  # a file object: the temp name does not end in .pt2
        torch.export.save(program, f)


def _named(model, dynamic):
    """torch.export names dynamic shapes by the forward's argument name."""
    if dynamic is None:
        return None
    import inspect

    first = next(iter(inspect.signature(model.forward).parameters))
    return {first: dynamic["x"]}


def _run_onnx(path):
    try:
        import onnxruntime
    except ImportError:  # onnx's reference evaluator: slower, same numbers
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(str(path))
        return (lambda x: torch.from_numpy(evaluator.run(None, {"x": x.numpy()})[0])), "onnx.reference"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])), "onnxruntime"


def _run_torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu"), "torch.jit.load"


def _run_exported(path):
    with open(path, "rb") as f:
        return torch.export.load(f).module(), "torch.export.load"


def _need(package: str, what: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise WorkbenchError(f"{what} needs the {package} package: pip install 'hos-workbench[{extra}]'")


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "exported": _write_exported}
_RUNNERS = {"onnx": _run_onnx, "torchscript": _run_torchscript, "exported": _run_exported}
