"""Read checkpoints (ours and the reference scripts'), build the model they fit, save models.

Formats read: safetensors (ours carry the `Arch` as JSON in the metadata key
`workbench_arch`); torch files (zip or legacy, CUDA-saved or not) holding a state dict, a
wrapper such as `{'state_dict': ...}` or the reference `{'cfg': [...], 'state_dict': ...}`;
and files that pickle whole model objects. Those are read by the inert unpickler
(core.models.inert_pickle), so no code named by the file runs; only `trust_pickle` loads them
with their own code (`torch.load(weights_only=False)`).

Which model a file fits is its family's answer (core.models.family): a bare state dict's
keys name it, and a width list is read off its BN shapes. Decomposed layers are rebuilt as
core.models.decomposed_layout describes.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from core.atomic import atomic_path
from core.errors import WorkbenchError, describe
from core.models import demo, zoo
from core.models.arch import Arch
from core.models.decomposed_layout import decomposed_convs, rebuild_decomposed
from core.models.family import family_of, recognise
from core.models.inert_pickle import Placeholder, code_names, inert_load, module_tensors
from core.models.names import DEMO
from core.models.pruning_history import HISTORY, rebuild_structure

__all__ = ["ARCH_KEY", "PICKLE_HINT", "Checkpoint", "Loaded", "Placeholder", "decomposed_convs", "inert_load",
           "load_model", "read_checkpoint", "rebuild_decomposed", "save_model"]

ARCH_KEY = "workbench_arch"
FORMATS = {
    "state_dict": "state dict",
    "wrapped": "wrapped state dict",
    "reference-pruned": "reference pruned cfg+state_dict",
    "safetensors": "safetensors",
    "reference-pickle": "pickled model object, read inertly",
    "trusted-pickle": "pickled model object, loaded with its own code",
}
FORMAT_NOTES = {
    "reference-pickle": "read with the inert unpickler: no code from the file ran",
    "trusted-pickle": "loaded with --trust-pickle: the file's own code ran",
}
TRUST_HINT = ("if the class comes from a package you trust and can import, --trust-pickle (it runs that "
              "package's code; a session records the need as trust_pickle = true)")
MODEL_HINT = "pass --model NAME (the architecture, e.g. resnet56; in a session: [model] name)"
PICKLE_HINT = f"{MODEL_HINT} or, {TRUST_HINT}"
MAX_PARAMS = 1 << 31  # parameters of a model built to fit a checkpoint: 8 GiB of float32
KIND_NAMES = {"tucker2": "Tucker-2", "cp3": "CP3", "svd": "truncated-SVD"}
MAX_DETAIL_LINES = 20


@dataclass
class Checkpoint:
    """The tensors of a checkpoint file and what the file says about its model."""

    state_dict: dict[str, torch.Tensor]
    format: str
    cfg: list[int] | None = None
    arch: Arch | None = None
    decomposed: dict[str, str] = field(default_factory=dict)
    pickled: str | None = None  # class of the pickled model object the tensors came from
    module: nn.Module | None = None  # that object itself, when loaded with trust_pickle
    code: list[str] = field(default_factory=list)  # standard-library callables the pickle names (os.system, ...)


@dataclass
class Loaded:
    """A model with its weights, its rebuildable description and how it was obtained."""

    model: nn.Module
    arch: Arch
    source: str
    notes: list[str] = field(default_factory=list)


def pickle_hint(pickled: str | None, code: list[str]) -> str:
    """What to do about a pickle read inertly: never --trust-pickle for one that holds code;
    for a class, --trust-pickle only when its package can be imported here."""
    if code:
        return (f"it holds code that would run when loaded ({', '.join(code[:3])}), not just a model: do not pass "
                f"--trust-pickle for it; {MODEL_HINT} to read its tensors inertly")
    package = pickled.split(".")[0] if pickled else None
    try:
        importable = package is None or importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # `__main__` of the saving script, a broken name
        importable = False
    if importable:
        return PICKLE_HINT
    return (f"{MODEL_HINT}; --trust-pickle (trust_pickle = true in a session) would need its package {package} "
            "importable here, and runs that package's code: only for a file you trust")


# ----------------------------------------------------------------------------- reading


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    """The tensors of `path` (safetensors or torch file). Pickled objects that safe loading
    refuses are read inertly, or with `trust_pickle` by torch.load running their code."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"checkpoint {path} does not exist: check the path")
    if path.stat().st_size == 0:
        raise WorkbenchError(f"checkpoint {path} is empty (0 bytes): re-export or re-copy it")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _read_safetensors(path)
    _check_zip(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or damaged files
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if refused is None:
            raise _unreadable(path, exc) from None
    else:
        return _unwrap(obj, path, None)
    if not trust_pickle:
        named: set[str] = set()
        try:
            obj = inert_load(path, named)
        except Exception as exc:
            raise WorkbenchError(
                f"cannot read the pickled {refused.group(1)} of {path} inertly: the file is damaged or not a "
                f"PyTorch checkpoint ({_first_line(exc)}); re-export it, or "
                f"{pickle_hint(refused.group(1), code_names(named))}"
            ) from None
        return _unwrap(obj, path, "reference-pickle", code_names(named))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the file's own code failed, or the file is damaged
        raise WorkbenchError(
            f"--trust-pickle could not load the pickled {refused.group(1)} of {path} ({_first_line(exc)}): "
            "put its code on PYTHONPATH, or pass --model NAME (the architecture, e.g. resnet56) "
            "without --trust-pickle to read its tensors inertly"
        ) from None
    return _unwrap(obj, path, "trusted-pickle")


def _check_zip(path: Path) -> None:
    """Refuse a zip whose records unpack to more than the file's size before torch inflates
    them: torch stores its records uncompressed, so this is a damaged or crafted file."""
    if not zipfile.is_zipfile(path):
        return
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            big = next((i for i in archive.infolist() if i.file_size > size), None)
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load reports the damage
    if big is not None:
        raise WorkbenchError(f"cannot read {path}: its record {big.filename} unpacks to {big.file_size:,} bytes from "
                             f"a {size:,}-byte file, which a PyTorch checkpoint never does (damaged or crafted); "
                             "re-export it")


def _check_extents(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Every tensor's declared shape is backed by data in the file (a stride-0 or oversized
    shape would make the model built from it allocate what the file never held)."""
    for name, t in tensors.items():
        if t.numel() == 0:
            continue
        held = t.untyped_storage().nbytes() // t.element_size()
        end = t.storage_offset() + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1
        if t.numel() > held or end > held:
            raise WorkbenchError(f"{path}: tensor {name} declares shape {list(t.shape)} ({t.numel():,} values) but "
                                 f"the file holds {held:,} for it: the file is damaged or crafted; re-export it")


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_safetensors(path: Path) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        arch = Arch.from_json(meta[ARCH_KEY]) if ARCH_KEY in meta else None
    except (json.JSONDecodeError, TypeError) as exc:
        raise WorkbenchError(f"{path} has unreadable '{ARCH_KEY}' metadata ({exc}); re-save it") from None
    except Exception as exc:
        raise _unreadable(path, exc) from None
    return _checkpoint(tensors, "safetensors", arch.cfg if arch else None, arch)


@contextmanager
def _no_init():
    """torch.nn.init's functions as no-ops while a shapes-only probe is built: drawing random
    values on the meta device means nothing, and `normal_` there imports torch._dynamo (seconds)."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def _first_line(exc: Exception) -> str:
    """The exception's first line; torch's warning that loading with weights_only=False "can
    result in arbitrary code execution" is kept when it comes later in the message."""
    text, line = str(exc).strip(), describe(exc)
    caveat = "arbitrary code execution"
    return line if caveat not in text or caveat in line else \
        f"{line} [torch: loading it with weights_only=False can result in {caveat}]"


def _unreadable(path: Path, exc: Exception) -> WorkbenchError:
    return WorkbenchError(
        f"cannot read {path}: it is not a PyTorch or safetensors checkpoint, or it is damaged "
        f"({_first_line(exc)}); check the path or re-export the file"
    )


def _unwrap(obj: object, path: Path, fmt: str | None, code: list[str] | None = None) -> Checkpoint:
    """Find the tensors in a loaded object: a state dict, a wrapper dict or a pickled module
    (`fmt`: the pickle format the object was read with, None for safe loading; `code`: the
    standard-library callables an inert read met)."""
    cfg, wrapped = None, False
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        cfg = cfg if cfg is not None else obj.get("cfg")
        keys = ("state_dict", "model", "net")
        inner = next((obj[k] for k in keys if isinstance(obj.get(k), (dict, Placeholder, nn.Module))), None)
        if inner is None:
            break
        obj, wrapped = inner, True
    pickled, module = None, None
    if isinstance(obj, nn.Module):
        module, pickled = obj, f"{type(obj).__module__}.{type(obj).__qualname__}"
        cfg = cfg if cfg is not None else getattr(obj, "cfg", None)
        tensors = dict(obj.state_dict())
    elif isinstance(obj, Placeholder):
        pickled = obj.qualname
        if cfg is None and isinstance(obj.state, dict):
            cfg = obj.state.get("cfg")
        tensors = dict(module_tensors(obj))
    elif isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    else:
        tensors = {}
    if not tensors:
        hint = pickle_hint(pickled, code or []) if fmt == "reference-pickle" else "pass a checkpoint with weights"
        raise WorkbenchError(f"{path} holds no model tensors ({pickled or type(obj).__name__}): {hint}")
    cfg = [int(c) for c in cfg] if isinstance(cfg, (list, tuple)) and all(isinstance(c, int) for c in cfg) else None
    fmt = fmt or (("reference-pruned" if cfg else "wrapped") if wrapped else "state_dict")
    _check_extents(tensors, path)
    ckpt = _checkpoint(tensors, fmt, cfg, None, pickled, module)
    ckpt.code = list(code or [])
    return ckpt


def _checkpoint(tensors: dict[str, torch.Tensor], fmt: str, cfg: list[int] | None, arch: Arch | None,
                pickled: str | None = None, module: nn.Module | None = None) -> Checkpoint:
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return Checkpoint(tensors, fmt, cfg, arch, decomposed_convs(tensors), pickled, module)


# ----------------------------------------------------------------------------- building


def load_model(
    model: str | None = None,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    weights: str | None = None,
    trust_pickle: bool = False,
) -> Loaded:
    """Build `model` (or the architecture the checkpoint implies) and load the checkpoint into it.

    Checks every tensor's name and shape first and raises one WorkbenchError listing the
    misfits. With `trust_pickle`, a pickled model object of no known architecture is itself
    the model. The model is returned in eval mode.
    """
    base = None
    if model == DEMO:
        base = demo.demo_arch()
        model = base.model
        checkpoint = checkpoint if checkpoint is not None or weights else _demo_weights()
    if weights:
        if checkpoint is not None or not model:
            raise WorkbenchError("--weights needs --model and no --checkpoint (the weights file is the checkpoint)")
        checkpoint = zoo.pretrained_file(model, weights)
    ckpt = read_checkpoint(checkpoint, trust_pickle) if checkpoint is not None else None
    sd = ckpt.state_dict if ckpt else {}
    if ckpt and ckpt.arch and model in (None, ckpt.arch.model):
        base = ckpt.arch
    name = model or (base.model if base else None) or recognise(sd)
    inert = ckpt is not None and ckpt.format == "reference-pickle"
    hint = pickle_hint(ckpt.pickled, ckpt.code) if inert else PICKLE_HINT
    if name is None and ckpt and ckpt.module is not None:
        return _trusted_module(ckpt, Path(checkpoint).name, num_classes, in_channels)
    if name is None and inert and ckpt.pickled:
        raise WorkbenchError(
            f"{Path(checkpoint).name} pickles a whole {ckpt.pickled}, which is not a known architecture: {hint}"
        )
    if name is None:
        what = f"the architecture of {checkpoint}" if checkpoint is not None else "which model to build"
        raise WorkbenchError(f"cannot tell {what}: {hint if inert else 'pass --model'}")

    or_trust = (f" or, {TRUST_HINT}" if hint == PICKLE_HINT else f"; {hint}") if inert else ""
    notes = []
    family = family_of(name)
    from_file = _num_classes(sd, notes) if family.classes_from_checkpoint else None
    classes = num_classes or from_file or (base.num_classes if base else None)
    # the Arch a safetensors file records is exact; guessing from its (alphabetically sorted) keys is not
    recorded = base.in_channels if base is not None and ckpt and base is ckpt.arch else None
    channels = in_channels or recorded or _in_channels(sd) or (base.in_channels if base else 3)
    cfg = None
    if family.widths:
        cfg = (ckpt.cfg if ckpt else None) or (base.cfg if base else None)
        if cfg is None and sd:
            cfg = family.cfg_from_state_dict(name, sd)  # None: not this family's keys, the fit check says so
            if cfg:
                notes.append("widths (cfg) read from the BN shapes")
    extra = {k: v for k, v in (base.extra if base else {}).items() if k != "decomposed"}
    arch = Arch(model=name, num_classes=classes, in_channels=channels, cfg=cfg, extra=extra)
    if family.probe:  # user and library code is not run twice
        with torch.device("meta"), _no_init():  # shapes only: nothing is allocated or drawn
            probe = _build(arch, checkpoint, or_trust)
            if ckpt is not None:
                rebuild_decomposed(probe, sd, ckpt.decomposed)
        params = sum(p.numel() for p in probe.parameters())
        if params > MAX_PARAMS:
            raise WorkbenchError(f"{name} with these sizes (classes {classes}, input channels {channels}"
                                 f"{', cfg from ' + str(checkpoint) if cfg and ckpt and ckpt.cfg else ''}) would "
                                 f"have {params:,} parameters, over {MAX_PARAMS:,}: check --num-classes, "
                                 "--in-channels and the checkpoint")
        if ckpt is not None:
            _check_fit(probe, sd, Path(checkpoint).name, name, or_trust)
    net = _build(arch, checkpoint, or_trust)
    if family.widths:
        arch.cfg = list(net.cfg)

    if ckpt is None:
        return Loaded(net.eval(), arch, f"{name} (freshly initialised, no checkpoint)", notes)
    rebuilt = rebuild_decomposed(net, sd, ckpt.decomposed)
    if rebuilt:
        arch.extra["decomposed"] = rebuilt
        for kind, label in KIND_NAMES.items():
            count = sum(1 for k in rebuilt.values() if k == kind)
            if count:
                notes.append(f"{count} layers rebuilt as {label} sequences")
    _check_fit(net, sd, Path(checkpoint).name, name, or_trust)
    net.load_state_dict(sd, strict=False)
    if ckpt.format in FORMAT_NOTES:
        notes.append(FORMAT_NOTES[ckpt.format])
    source = f"{Path(checkpoint).name} ({f'torchvision {weights} weights' if weights else FORMATS[ckpt.format]})"
    return Loaded(net.eval(), arch, source, notes)


def _build(arch: Arch, checkpoint, or_trust: str) -> nn.Module:
    """`zoo.build(arch)` with its pruned structure; sizes it cannot build are one line."""
    try:
        net = zoo.build(arch)
        if arch.extra.get(HISTORY):
            net = rebuild_structure(net, arch)
    except WorkbenchError:
        raise
    except (ValueError, RuntimeError, TypeError, IndexError, KeyError) as exc:
        where = f" for {checkpoint}" if checkpoint is not None else ""
        raise WorkbenchError(f"cannot build {arch.model}{where}: {_first_line(exc)}; pass the right "
                             f"--model{or_trust}") from None
    return net


def _trusted_module(ckpt: Checkpoint, file_name: str, num_classes: int | None, in_channels: int | None) -> Loaded:
    """The model object a trusted pickle holds, described by its class as a factory `module:Class`."""
    cls, notes = type(ckpt.module), []
    arch = Arch(
        model=f"{cls.__module__}:{cls.__qualname__}",
        num_classes=num_classes or _num_classes(ckpt.state_dict, notes),
        in_channels=in_channels or _in_channels(ckpt.state_dict) or 3,
        extra={"decomposed": ckpt.decomposed} if ckpt.decomposed else {},
    )
    notes.append(FORMAT_NOTES[ckpt.format])
    return Loaded(ckpt.module.eval(), arch, f"{file_name} ({FORMATS[ckpt.format]})", notes)


def _demo_weights() -> Path:
    if not demo.DEMO_WEIGHTS.is_file():
        raise WorkbenchError(
            f"the demo weights {demo.DEMO_WEIGHTS} are missing: reinstall the package or run scripts/train_demo.py"
        )
    return demo.DEMO_WEIGHTS


def _num_classes(sd: dict[str, torch.Tensor], notes: list[str]) -> int | None:
    key = next((k for k in reversed(sd) if k.endswith("weight") and sd[k].dim() == 2), None)
    if key is None:
        return None
    notes.append(f"{sd[key].shape[0]} classes read from {key}")
    return int(sd[key].shape[0])


def _in_channels(sd: dict[str, torch.Tensor]) -> int | None:
    return next((int(v.shape[1]) for k, v in sd.items() if k.endswith("weight") and v.dim() == 4), None)


def _check_fit(model: nn.Module, sd: dict[str, torch.Tensor], file_name: str, model_name: str,
               or_trust: str = "") -> None:
    """Raise one WorkbenchError listing every missing, unexpected or other-shaped tensor
    (`or_trust`: the --trust-pickle hint added to the advice for pickled files)."""
    expected = model.state_dict()
    optional = "num_batches_tracked"  # BN counters: older files lack them
    missing = [f"  {k}: missing from the checkpoint" for k in expected if k not in sd and not k.endswith(optional)]
    unexpected = [
        f"  {k}: in the checkpoint, not in the model" for k in sd if k not in expected and not k.endswith(optional)
    ]
    shapes = [
        f"  {k}: checkpoint {list(sd[k].shape)}, model {list(v.shape)}"
        for k, v in expected.items() if k in sd and sd[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    counts = [f"{len(x)} {label}" for x, label in
              ((missing, "missing"), (unexpected, "unexpected"), (shapes, "with another shape")) if x]
    lines = shapes + missing + unexpected
    if len(lines) > MAX_DETAIL_LINES:
        lines = lines[:MAX_DETAIL_LINES] + [f"  ... and {len(lines) - MAX_DETAIL_LINES} more"]
    raise WorkbenchError(
        f"checkpoint {file_name} does not fit model {model_name}: {', '.join(counts)}; "
        f"pass the right --model / --num-classes{or_trust}\n" + "\n".join(lines)
    )


# ----------------------------------------------------------------------------- saving


def save_model(model: nn.Module, arch: Arch, path: str | Path) -> None:
    """Write the weights as safetensors with `arch` in the metadata, atomically.

    Decomposed convs found in the state dict are recorded in `arch.extra["decomposed"]`,
    so `load_model(checkpoint=path)` rebuilds the model without --model.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    decomposed = decomposed_convs(tensors)
    if decomposed:
        arch = replace(arch, extra={**arch.extra, "decomposed": decomposed})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={ARCH_KEY: arch.to_json(), "format": "pt"})
