"""Read checkpoints (ours and the reference scripts'), build the model they fit, save models.

Formats read: safetensors (ours carry the `Arch` as JSON in the metadata key
`workbench_arch`); torch files (zip or legacy, CUDA-saved or not) holding a state dict, a
wrapper such as `{'state_dict': ...}` or the reference `{'cfg': [...], 'state_dict': ...}`;
and files that pickle whole model objects. Those are read by an inert unpickler that knows
torch's tensor-rebuild functions and a few containers and turns every other class into a
`Placeholder` that only stores data, so no code named by the file runs; only `trust_pickle`
loads them with their own code (`torch.load(weights_only=False)`).

Decomposed convs are recognised by their keys `<path>.<name>-0/-1/-2.weight` (Tucker-2 or
CP3, see METHOD.md) and rebuilt as `nn.Sequential` from the tensor shapes.
"""

from __future__ import annotations

import _compat_pickle
import importlib.util
import json
import pickle
import re
import sys
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from core import demo
from core.atomic import atomic_path
from core.errors import WorkbenchError
from core.models import zoo
from core.models.cifar_mobilenet import v1_cfg_from_state_dict, v2_cfg_from_state_dict
from core.models.cifar_resnet import cfg_from_state_dict, depth_from_state_dict
from core.models.zoo import Arch

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
# standard-library modules a checkpoint may name as plain data; any other one it calls is code
DATA_MODULES = {"collections", "copyreg", "_codecs", "codecs", "argparse", "datetime", "decimal", "fractions",
                "enum", "numbers", "pathlib", "uuid"}
MAX_PARAMS = 1 << 31  # parameters of a model built to fit a checkpoint: 8 GiB of float32
KIND_NAMES = {"tucker2": "Tucker-2", "cp3": "CP3", "svd": "truncated-SVD"}
MAX_DETAIL_LINES = 20
_DECOMPOSED_KEY = re.compile(r"^((?:.+\.)?([^.]+))\.\2-0\.weight$")


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


# ----------------------------------------------------------------------------- inert reader


class Placeholder:
    """Stands in for any class a pickle names: accepts any arguments, keeps them, runs nothing."""

    qualname = "?"
    dump_patches = False  # torch's legacy loader reads this on module classes

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def _tensor(storage, offset, size, stride, *_ignored):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("tensor data is not a torch storage")
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _parameter(data, *_ignored):
    return data  # requires_grad, hooks and extra state are dropped: only the values matter


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor"): _tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
}


class _InertUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED` names and torch dtypes; anything else becomes a Placeholder.

    torch.load wraps this class and resolves storage types (`torch.FloatStorage`, ...)
    itself before calling `find_class`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.placeholders: dict[str, type] = {}

    def find_class(self, module, name):
        # protocol-2 pickles name Python 2 modules (`__builtin__.set`); map them as pickle does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            return vars(torch)[name]
        qualname = f"{module}.{name}"
        if qualname not in self.placeholders:
            self.placeholders[qualname] = type(name, (Placeholder,), {"qualname": qualname})
        return self.placeholders[qualname]


class _InertPickle:
    """The `pickle_module` handed to torch.load for inert reads."""

    Unpickler = _InertUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _InertUnpickler(file, **kwargs).load()


def inert_load(path: Path, named: set[str] | None = None) -> object:
    """Unpickle a torch file without running any code it names (classes become Placeholders);
    `named` collects the qualified names of those placeholders."""
    named = set() if named is None else named

    class Recording(_InertUnpickler):
        def find_class(self, module, name):
            found = super().find_class(module, name)
            if isinstance(found, type) and issubclass(found, Placeholder):
                named.add(found.qualname)
            return found

    class Module(_InertPickle):
        Unpickler = Recording

        @staticmethod
        def load(file, **kwargs):
            return Recording(file, **kwargs).load()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=Module)


def code_names(named: set[str]) -> list[str]:
    """The names a pickle would call that are code, not data: standard-library callables
    (os.system, builtins.exec, subprocess.Popen, ...) outside DATA_MODULES."""
    return sorted(n for n in named if n.split(".")[0] in sys.stdlib_module_names
                  and n.split(".")[0] not in DATA_MODULES)


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


def _module_tensors(obj: Placeholder, prefix: str = "", seen: set | None = None):
    """(name, tensor) of a pickled nn.Module's parameters and persistent buffers, as state_dict."""
    seen = set() if seen is None else seen
    if id(obj) in seen or not isinstance(obj.state, dict):
        return
    seen.add(id(obj))
    state = obj.state
    skip = state.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset)) else set()
    for group in ("_parameters", "_buffers"):
        entries = state.get(group)
        for name, value in (entries.items() if isinstance(entries, dict) else ()):
            if isinstance(value, torch.Tensor) and not (group == "_buffers" and name in skip):
                yield f"{prefix}{name}", value
    children = state.get("_modules")
    for name, child in (children.items() if isinstance(children, dict) else ()):
        if isinstance(child, Placeholder):
            yield from _module_tensors(child, f"{prefix}{name}.", seen)


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


def _first_line(exc: Exception) -> str:
    """The exception's first line; torch's warning that loading with weights_only=False "can
    result in arbitrary code execution" is kept when it comes later in the message."""
    text = str(exc).strip()
    line = f"{type(exc).__name__}: {(text.splitlines() or [''])[0][:200]}"
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
        tensors = dict(_module_tensors(obj))
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


def decomposed_convs(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """Module path -> "tucker2" | "cp3" (three convs `-0/-1/-2`) or "svd" (two Linear layers
    `-0/-1`) for every `<path>.<name>-0.weight` key set."""
    found = {}
    for key, first in state_dict.items():
        match = _DECOMPOSED_KEY.match(key)
        if not match:
            continue
        path, name = match.groups()
        core = state_dict.get(f"{path}.{name}-1.weight")
        if core is None:
            continue
        if f"{path}.{name}-2.weight" not in state_dict:
            if first.dim() == core.dim() == 2:
                found[path] = "svd"
            continue
        depthwise = core.shape[1] == 1 and core.shape[0] == first.shape[0] != 1
        found[path] = "cp3" if depthwise else "tucker2"
    return found


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
    if model == zoo.DEMO:
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
    name = model or (base.model if base else None) or _cifar_family(sd)
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
    from_file = None if zoo.is_factory(name) and not zoo.is_family(name) else _num_classes(sd, notes)
    classes = num_classes or from_file or (base.num_classes if base else None)
    channels = in_channels or _in_channels(sd) or (base.in_channels if base else 3)
    cfg = None
    if zoo.is_cifar_family(name):
        cfg = (ckpt.cfg if ckpt else None) or (base.cfg if base else None)
        if cfg is None and sd:
            cfg = _cfg_from_shapes(name, sd)
            if cfg:
                notes.append("widths (cfg) read from the BN shapes")
    extra = {k: v for k, v in (base.extra if base else {}).items() if k != "decomposed"}
    arch = Arch(model=name, num_classes=classes, in_channels=channels, cfg=cfg, extra=extra)
    if not zoo.is_factory(name):  # user code is not run twice
        with torch.device("meta"):  # shapes only: nothing is allocated
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
    if zoo.is_cifar_family(name):
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
        if arch.extra.get("pruning_history"):
            from core.prune.surgery import rebuild_structure  # lazy: core.prune imports this package

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


def _cifar_family(sd: dict[str, torch.Tensor]) -> str | None:
    depth = depth_from_state_dict(sd)
    if depth:
        return f"resnet{depth}"
    if "linear.weight" not in sd:
        return None
    if any(k.startswith("layers.0.conv3.") for k in sd):
        return "mobilenet_v2_cifar"
    if any(k.startswith("layers.0.conv2.") for k in sd):
        return "mobilenet_v1_cifar"
    return None


def _num_classes(sd: dict[str, torch.Tensor], notes: list[str]) -> int | None:
    key = next((k for k in reversed(sd) if k.endswith("weight") and sd[k].dim() == 2), None)
    if key is None:
        return None
    notes.append(f"{sd[key].shape[0]} classes read from {key}")
    return int(sd[key].shape[0])


def _in_channels(sd: dict[str, torch.Tensor]) -> int | None:
    return next((int(v.shape[1]) for k, v in sd.items() if k.endswith("weight") and v.dim() == 4), None)


def _cfg_from_shapes(name: str, sd: dict[str, torch.Tensor]) -> list[int] | None:
    try:
        if name == "mobilenet_v1_cifar":
            return v1_cfg_from_state_dict(sd)
        if name == "mobilenet_v2_cifar":
            return v2_cfg_from_state_dict(sd)
        return cfg_from_state_dict(sd, int(name[len("resnet"):]))
    except KeyError:
        return None  # not this family's keys: the fit check reports them


def rebuild_decomposed(model: nn.Module, sd: dict[str, torch.Tensor], decomposed: dict[str, str]) -> dict[str, str]:
    """Replace each listed conv (Linear, for "svd") by the Sequential its `-0/-1/-2` tensors describe.

    Stride, padding, dilation and padding mode come from the original conv; channel counts
    and ranks from the tensors. Convs whose tensors do not fit stay as they are (the fit
    check then reports them). Returns the paths actually rebuilt.
    """
    done = {}
    for path, kind in decomposed.items():
        try:
            conv = model.get_submodule(path)
        except AttributeError:
            continue
        name = path.rsplit(".", 1)[-1]
        parent = model.get_submodule(path.rpartition(".")[0])
        if kind == "svd":
            w0, w1 = (sd[f"{path}.{name}-{i}.weight"] for i in range(2))
            if isinstance(conv, nn.Linear) and w0.shape[1] == conv.in_features and w1.shape[0] == conv.out_features:
                setattr(parent, name, nn.Sequential(OrderedDict(
                    (f"{name}-{i}", nn.Linear(w.shape[1], w.shape[0], bias=f"{path}.{name}-{i}.bias" in sd))
                    for i, w in enumerate((w0, w1)))))
                done[path] = kind
            continue
        w0, w1, w2 = (sd[f"{path}.{name}-{i}.weight"] for i in range(3))
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or w0.shape[1] != conv.in_channels \
                or w2.shape[0] != conv.out_channels:
            continue
        groups = w1.shape[0] if kind == "cp3" else 1
        seq = nn.Sequential(OrderedDict([
            (f"{name}-0", nn.Conv2d(w0.shape[1], w0.shape[0], tuple(w0.shape[2:]), bias=f"{path}.{name}-0.bias" in sd)),
            (f"{name}-1", nn.Conv2d(
                w1.shape[1] * groups, w1.shape[0], tuple(w1.shape[2:]), conv.stride, conv.padding, conv.dilation,
                groups, bias=f"{path}.{name}-1.bias" in sd, padding_mode=conv.padding_mode)),
            (f"{name}-2", nn.Conv2d(w2.shape[1], w2.shape[0], tuple(w2.shape[2:]), bias=f"{path}.{name}-2.bias" in sd)),
        ]))
        setattr(parent, name, seq)
        done[path] = kind
    return done


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
