"""core.data as a package: one list of kinds (core.data.spec.KINDS) that the spec parser,
the layout detection, the loaders and the normalisation defaults all read."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from core.data import load_data
from core.data.spec import KINDS, LAYOUTS, ON_DISK, detect, split_spec
from core.errors import WorkbenchError


def test_every_kind_names_a_loader_and_every_kind_on_disk_a_layout_and_a_prefix(tmp_path):
    for name, kind in KINDS.items():
        module, function = kind.loader.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
    assert set(ON_DISK) == set(KINDS) - {"digits"}
    for name in ON_DISK:
        assert KINDS[name].layout in LAYOUTS
        assert split_spec(f"{name.upper()}:{tmp_path}") == (name, str(tmp_path))
    assert split_spec("Demo") == split_spec("digits") == ("digits", "")
    assert split_spec("digits:x") == (None, "digits:x")  # the built-in data takes no path


def test_detection_follows_the_kinds_in_order(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    assert detect(tmp_path) == "imagefolder"
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert detect(tmp_path) == "fashion-mnist"
    (tmp_path / "data_batch_1").write_bytes(b"")
    assert detect(tmp_path) == "cifar10"


def test_reference_normalization_is_the_kinds_say():
    assert [n for n, k in KINDS.items() if k.reference_normalization] == ["cifar10", "cifar100"]
    with pytest.raises(WorkbenchError, match="CIFAR's fixed mean/std, but the data is digits"):
        load_data("demo", normalize="reference")
    assert load_data("demo").normalization["mode"] == "computed"


def test_the_spec_parser_loads_no_torch():
    """The session file and the command line check specs at once: core.data.spec needs no torch."""
    script = "import json, sys, core.data.spec, core.session\nprint(json.dumps('torch' in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) is False
