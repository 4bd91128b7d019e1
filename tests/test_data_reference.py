"""CIFAR as the reference loader reads it (METHOD.md "Data"): the fixed normalisation constants
by default, `computed` or explicit values on request, and the reference validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.data import REFERENCE_CIFAR_MEAN, REFERENCE_CIFAR_STD, load_data, reference_split
from core.errors import WorkbenchError
from core.session import parse_session
from tests.test_data import cifar10_dir, cifar100_dir, image_dir, marker, write_fashion  # noqa: F401  (fixtures)

MEAN = torch.tensor(REFERENCE_CIFAR_MEAN).view(3, 1, 1)
STD = torch.tensor(REFERENCE_CIFAR_STD).view(3, 1, 1)


def test_reference_constants_are_methods():
    assert REFERENCE_CIFAR_MEAN == (0.4914, 0.4822, 0.4465) and REFERENCE_CIFAR_STD == (0.2023, 0.1994, 0.2010)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_defaults_to_the_reference_constants(kind, request):
    root = request.getfixturevalue(f"{kind}_dir")
    d = load_data(f"{kind}:{root}", augment=False)
    assert d.normalization == {"mode": "reference", "mean": list(REFERENCE_CIFAR_MEAN), "std": list(REFERENCE_CIFAR_STD)}
    for part in (d.train, d.val, d.test):  # every split, pixel by pixel as torchvision's Normalize does
        x, _ = part[0]
        torch.testing.assert_close(x, (part.images[0].float() / 255 - MEAN) / STD)


def test_computed_and_explicit_normalisation(cifar10_dir):
    computed = load_data(str(cifar10_dir), augment=False, normalize="computed")
    raw = computed.train.images.double()
    assert computed.normalization["mode"] == "computed"
    np.testing.assert_allclose(computed.normalization["mean"], (raw.mean(dim=(0, 2, 3)) / 255).tolist(), rtol=1e-6)
    np.testing.assert_allclose(computed.normalization["std"], (raw.std(dim=(0, 2, 3)) / 255).tolist(), rtol=1e-6)
    assert computed.normalization["std"] != pytest.approx(list(REFERENCE_CIFAR_STD), rel=0.05)
    explicit = load_data(str(cifar10_dir), augment=False, normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert explicit.normalization == {"mode": "explicit", "mean": [0.5] * 3, "std": [0.25] * 3}
    x, _ = explicit.test[0]
    torch.testing.assert_close(x, (explicit.test.images[0].float() / 255 - 0.5) / 0.25)


def test_normalisation_errors(cifar10_dir, image_dir, tmp_path):
    with pytest.raises(WorkbenchError, match="one value per channel \\(3\\), got 1 and 1"):
        load_data(f"cifar10:{cifar10_dir}", normalize=((0.5,), (0.2,)))
    with pytest.raises(WorkbenchError, match="CIFAR's fixed mean/std, but the data is digits"):
        load_data("demo", normalize="reference")
    with pytest.raises(WorkbenchError, match="must be one of reference, computed"):
        load_data("demo", normalize="imagenet")
    with pytest.raises(WorkbenchError, match="split must be one of seeded, reference"):
        load_data("demo", split="random")
    with pytest.raises(WorkbenchError, match="needs an in-memory data set"):
        load_data(f"imagefolder:{image_dir}", normalize="computed")
    folder = load_data(f"imagefolder:{image_dir}", image_size=8, normalize=((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    assert folder.normalization["mode"] == "explicit"
    assert load_data(f"imagefolder:{image_dir}", image_size=8).normalization["mode"] == "imagenet"
    write_fashion(tmp_path, gz=False)
    assert load_data(f"fashion-mnist:{tmp_path}").normalization["mode"] == "computed"  # no reference constants


def test_reference_split_is_the_reference_loaders():
    """np.random.seed(1); np.random.shuffle(list(range(50000))); indices[:5000] held out."""
    indices = list(range(50000))
    state = np.random.get_state()
    try:
        np.random.seed(1)
        np.random.shuffle(indices)
    finally:
        np.random.set_state(state)
    kept, held = reference_split(50000)
    assert held.tolist() == indices[:5000] and kept.tolist() == indices[5000:]


def test_reference_split_on_cifar(cifar10_dir):
    d = load_data(str(cifar10_dir), split="reference")
    assert d.split == "reference" and marker(d.val) == reference_split(40)[1].tolist()  # markers are the indices
    assert len(d.val) == 4 and sorted(marker(d.train) + marker(d.val)) == list(range(40))
    assert load_data(str(cifar10_dir), seed=5, split="reference").val.images.equal(d.val.images)  # seed-free
    assert load_data(str(cifar10_dir)).split == "seeded"


def test_session_data_keys(tmp_path):
    text = ('version = 1\n[model]\nname = "resnet20"\n[data]\nspec = "cifar10:x"\nsplit = "reference"\n'
            'normalize = { mean = [0.5, 0.5, 0.5], std = [0.2, 0.2, 0.2] }\n')
    target = parse_session(text).target()
    assert (target.data_normalize, target.data_split) == (((0.5,) * 3, (0.2,) * 3), "reference")
    plain = parse_session('version = 1\n[model]\nname = "resnet20"\n[data]\nspec = "demo"\n').target()
    assert (plain.data_normalize, plain.data_split) == (None, "seeded")
    for bad, where in (('normalize = "imagenet"', "data.normalize"), ('split = "random"', "data.split"),
                       ("normalize = { mean = [0.5], std = [0.0] }", "data.normalize")):
        with pytest.raises(WorkbenchError, match=where):
            parse_session(f'version = 1\n[model]\nname = "resnet20"\n[data]\nspec = "demo"\n{bad}\n')


def test_replay_keeps_and_reports_the_data_options():
    from core.pipeline import override_session, run_session

    session = parse_session('version = 1\n[model]\nname = "demo"\n[data]\nspec = "demo"\nsplit = "reference"\n'
                            'normalize = "computed"\n')
    moved = override_session(session, data="cifar10:/elsewhere/cifar-10-batches-py")  # --data
    assert (moved.data.spec, moved.data.normalize, moved.data.split) == (
        "cifar10:/elsewhere/cifar-10-batches-py", "computed", "reference")
    report = run_session(session, latency=False).report
    assert report["data"]["name"] == "digits" and report["data"]["split"] == "reference"
    assert report["data"]["normalization"]["mode"] == "computed" and len(report["data"]["normalization"]["std"]) == 1
