"""Read a pickled torch file without running any code it names.

The inert unpickler knows torch's tensor-rebuild functions and a few containers and turns
every other class into a `Placeholder` that only stores data; `module_tensors` then reads a
pickled nn.Module's parameters and buffers off those placeholders as a state dict.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

# standard-library modules a checkpoint may name as plain data; any other one it calls is code
DATA_MODULES = {"collections", "copyreg", "_codecs", "codecs", "argparse", "datetime", "decimal", "fractions",
                "enum", "numbers", "pathlib", "uuid"}


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


def module_tensors(obj: Placeholder, prefix: str = "", seen: set | None = None):
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
            yield from module_tensors(child, f"{prefix}{name}.", seen)
