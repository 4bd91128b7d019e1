"""Step 2: rank rules, Tucker-2/CP3/SVD layers, plans and applying them (core/decompose), on real models."""

from __future__ import annotations

import math

import pytest
import tensorly as tl
import torch
from tensorly.decomposition import partial_tucker
from torch import nn

from core.decompose.layers import composed_weight, cp_conv, relative_error, svd_linear, tucker_conv
from core.decompose.plan import Decomposer, apply_decomposition
from core.decompose.ranks import cp_rank, tucker_ranks, vbmf_rank
from core.decompose.tucker import tucker2
from core.errors import WorkbenchError
from core.measure import count_flops, count_params
from core.models import zoo
from core.models.checkpoint import load_model, read_checkpoint, save_model
from core.models.zoo import Arch
from core.session import DecomposeSection, LayerRanks

CIFAR = (3, 32, 32)


@pytest.fixture(scope="module")
def norm(seeds):
    """res56_norm: ResNet-56 pruned by P1 (approach A3 decomposes this)."""
    return load_model(checkpoint=seeds / "res56_norm.pth.tar")


@pytest.fixture(scope="module")
def decomposer(norm):
    return Decomposer(norm.model, norm.arch, CIFAR)


def tucker_by_hand(cin, cout, k, x):
    """METHOD.md's rank formula, written out again."""
    beta = ((cout / cin - 1) / x + 1) if cout > cin else (1 / ((cin / cout - 1) / x + 1) if cin > cout else 1.0)
    b = (cin + beta * cout) / (beta * k)
    c = -cin * cout / (x * beta)
    r_in = int((-b + math.sqrt(b ** 2 - 4 * c)) / 2)
    return math.ceil(beta * r_in), r_in


def test_method_worked_examples():
    assert tucker_ranks(16, 19, 3, 3, 1.71) == (12, 10)
    assert cp_rank(16, 12, 3, 3, 1.71) == 27


def test_rank_rules_on_every_res56_norm_layer(norm, decomposer):
    names = decomposer.default_layers()
    assert len(names) == 54 and all(".conv" in n and n.startswith("layer") for n in names)
    tucker = {l.name: l.ranks for l in decomposer.plan(DecomposeSection(x=1.71)).layers}
    cp = {l.name: l.ranks for l in decomposer.plan(DecomposeSection(method="cp3", x=1.71)).layers}
    for name in names:
        cout, cin, kh, kw = norm.model.get_submodule(name).weight.shape
        assert tucker_ranks(cin, cout, kh, kw, 1.71) == tucker_by_hand(cin, cout, kh * kw, 1.71) == tucker[name]
        assert cp_rank(cin, cout, kh, kw, 1.71) == math.floor(cout * cin * 9 / (1.71 * (cin + 9 + cout))) == cp[name][0]


def test_tucker2_parameter_count_by_hand(norm, decomposer):
    plan = decomposer.plan(DecomposeSection(x=1.71))
    model, _ = apply_decomposition(norm.model, norm.arch, plan, decomposer)
    expected = count_params(norm.model)
    for name in decomposer.default_layers():
        cout, cin, kh, kw = norm.model.get_submodule(name).weight.shape
        r_out, r_in = tucker_ranks(cin, cout, kh, kw, 1.71)
        expected += r_in * cin + r_out * r_in * kh * kw + cout * r_out - cout * cin * kh * kw
    assert count_params(model) == expected == plan.params[1]


def test_full_rank_reproduces_the_layer(norm):
    torch.manual_seed(0)
    conv = norm.model.get_submodule("layer2.0.conv1")  # stride 2, 16 -> 19 channels
    seq = tucker_conv(conv, conv.out_channels, conv.in_channels, "conv1")
    x = torch.randn(4, conv.in_channels, 32, 32)
    with torch.no_grad():
        assert torch.allclose(seq(x), conv(x), rtol=1e-5, atol=1e-5)
        linear = norm.model.linear
        h = torch.randn(8, linear.in_features)
        full = svd_linear(linear, min(linear.weight.shape), "linear")
        assert torch.allclose(full(h), linear(h), rtol=1e-5, atol=1e-5)


def test_error_falls_with_rank(norm):
    conv = norm.model.get_submodule("layer1.0.conv1")  # 16 -> 12
    tucker = [relative_error(conv.weight, composed_weight(tucker_conv(conv, r, r + 2, "c"))) for r in (2, 5, 8, 12)]
    cp = [relative_error(conv.weight, composed_weight(cp_conv(conv, r, "c"))) for r in (10, 27, 60)]
    linear = norm.model.linear
    svd = [relative_error(linear.weight, composed_weight(svd_linear(linear, r, "l"))) for r in range(1, 11)]
    for errors in (tucker, cp, svd):
        assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert cp[-1] < 0.02 and svd[-1] < 1e-5


def test_tucker2_reaches_tensorlys_hooi_error(norm):
    """Same HOOI as tensorly's partial_tucker (default settings): the same error, computed independently."""
    for name in ("layer1.0.conv1", "layer2.4.conv2", "layer3.8.conv1"):
        w = norm.model.get_submodule(name).weight.detach()
        ranks = tucker_ranks(w.shape[1], w.shape[0], 3, 3, 1.71)
        core, u_out, u_in = tucker2(w, *ranks)
        ours = relative_error(w, torch.einsum("abhw,oa,ib->oihw", core, u_out, u_in))
        with tl.backend_context("pytorch", local_threadsafe=True):
            (g, (a, b)), _ = partial_tucker(w.reshape(*w.shape[:2], -1), ranks, modes=[0, 1])
        theirs = relative_error(w, torch.einsum("abk,oa,ib->oik", g, a, b).reshape(w.shape))
        assert ours == pytest.approx(theirs, abs=2e-5)


def test_apply_tucker2_measures_as_planned_and_reloads(norm, decomposer, tmp_path):
    plan = decomposer.plan(DecomposeSection(x=1.71), errors=True)
    model, arch = apply_decomposition(norm.model, norm.arch, plan, decomposer)
    assert (count_params(model), count_flops(model, CIFAR)) == (plan.params[1], plan.flops[1])
    assert plan.params[0] == count_params(norm.model) == 665_470
    assert isinstance(norm.model.layer1[0].conv1, nn.Conv2d)  # the input model is left alone
    keys = model.state_dict()
    assert all(f"layer1.0.conv1.conv1-{i}.weight" in keys for i in range(3))
    assert keys["layer1.0.conv1.conv1-1.weight"].shape == (8, 9, 3, 3)
    assert arch.extra["decomposed"] == {l.name: "tucker2" for l in plan.layers} and arch.cfg == norm.arch.cfg
    assert all(0 < l.error < 1 for l in plan.layers)
    assert decomposer.layer_error("layer2.3.conv2", DecomposeSection(x=1.71)) == next(
        l.error for l in plan.layers if l.name == "layer2.3.conv2")
    x = torch.randn(2, *CIFAR)
    path = tmp_path / "res56_norm_tucker2.safetensors"
    save_model(model, arch, path)
    loaded = load_model(checkpoint=path)
    with torch.no_grad():
        assert model(x).shape == norm.model(x).shape == (2, 10)
        assert torch.equal(loaded.model(x), model.eval()(x))
    assert loaded.arch.extra["decomposed"] == arch.extra["decomposed"]


def test_apply_cp3_on_an_unpruned_network_reloads(tmp_path):
    torch.manual_seed(0)
    arch = Arch("resnet20", 10)
    model = zoo.build(arch).eval()
    settings = DecomposeSection(method="cp3", layers=["layer1.0.conv1", "layer2.0.conv1", "layer3.2.conv2"])
    decomposer = Decomposer(model, arch, CIFAR)
    plan = decomposer.plan(settings)
    new, new_arch = apply_decomposition(model, arch, plan)
    assert (count_params(new), count_flops(new, CIFAR)) == (plan.params[1], plan.flops[1])
    depthwise = new.layer2[0].conv1[1]
    assert depthwise.groups == depthwise.in_channels == plan.layers[1].ranks[0] and depthwise.stride == (2, 2)
    save_model(new, new_arch, tmp_path / "cp3.safetensors")
    loaded = load_model(checkpoint=tmp_path / "cp3.safetensors")
    assert loaded.arch.extra["decomposed"] == dict.fromkeys(settings.layers, "cp3")
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), new(x))


def test_cp3_ranks_match_the_reference_file(seeds, decomposer):
    """The paper's own A3 output: res56_norm, then CP3 of every residual-block conv at X = 1.71."""
    ref = read_checkpoint(seeds / "res56_norm_cp3_model.pth.tar")
    ref_ranks = {p: ref.state_dict[f"{p}.{p.rsplit('.', 1)[1]}-1.weight"].shape[0] for p in ref.decomposed}
    plan = decomposer.plan(DecomposeSection(method="cp3", x=1.71))
    assert {l.name: l.ranks[0] for l in plan.layers} == ref_ranks
    assert plan.params[1] == 388_766


@pytest.mark.parametrize("name, layers", [("mobilenet_v1_cifar", 13), ("mobilenet_v2_cifar", 44)])
def test_cifar_mobilenets_default_layers(name, layers):
    arch = Arch(name, 10)
    model = zoo.build(arch).eval()
    decomposer = Decomposer(model, arch, CIFAR)
    names = decomposer.default_layers()
    assert len(names) == layers
    pointwise = names[1:] if name == "mobilenet_v2_cifar" else names
    assert all(model.get_submodule(n).kernel_size == (1, 1) and model.get_submodule(n).groups == 1 for n in pointwise)
    if name == "mobilenet_v2_cifar":
        # the reference script's filter (names ending in conv1, conv3 or 0): the stem, every block's
        # expansion and projection, and the 5 shortcut convs (stride-1 blocks that change width)
        blocks = [f"layers.{i}" for i in range(19)]
        shortcuts = [f"layers.{i}.shortcut.0" for i in (0, 1, 3, 10, 18)]
        assert names[0] == "conv1" and model.conv1.kernel_size == (3, 3)
        assert set(names) == {"conv1", *shortcuts, *(f"{b}.{c}" for b in blocks for c in ("conv1", "conv3"))}
        plan = decomposer.plan(DecomposeSection(x=2.0, layers=names[:4]))
        new, _ = apply_decomposition(model, arch, plan)
        assert (count_params(new), count_flops(new, CIFAR)) == (plan.params[1], plan.flops[1])


def test_torchvision_model_with_linear_and_skips():
    torch.manual_seed(0)
    shape = (3, 64, 64)
    arch = Arch("resnet18", 10)
    model = zoo.build(arch).eval()
    decomposer = Decomposer(model, arch, shape)
    names = decomposer.default_layers()
    assert "conv1" not in names and len(names) == 16  # every 3x3 conv but the 7x7 stem
    plan = decomposer.plan(DecomposeSection(x=2.0, linear=True, layers=names[:3] + ["fc"]))
    assert plan.layers[-1].method == "svd" and plan.layers[-1].ranks == (math.floor(512 * 10 / (2 * 522)),)
    new, arch2 = apply_decomposition(model, arch, plan, decomposer)
    assert (count_params(new), count_flops(new, shape)) == (plan.params[1], plan.flops[1])
    assert arch2.extra["decomposed"]["fc"] == "svd" and isinstance(new.fc[1], nn.Linear)
    mobile_arch = Arch("mobilenet_v2", 10)
    mobile = Decomposer(zoo.build(mobile_arch).eval(), mobile_arch, shape)
    [layer] = mobile.plan(DecomposeSection(layers=["features.1.conv.0.0"])).layers
    assert layer.skipped.startswith("grouped conv") and layer.params[0] == layer.params[1]


def test_layer_that_would_not_shrink_is_skipped():
    demo = load_model(model="demo")  # ResNet-20 on 1-channel 8x8 digits: the stem is 1 -> 16
    decomposer = Decomposer(demo.model, demo.arch, (1, 8, 8))
    [stem] = decomposer.plan(DecomposeSection(layers=["conv1"])).layers
    assert stem.skipped.startswith("would not save parameters") and stem.params == (144, 144)
    explicit = DecomposeSection(layers=["conv1"], ranks={"conv1": LayerRanks(r_out=10, r_in=1)})
    assert decomposer.plan(explicit).layers[0].skipped is None  # explicit ranks are honoured


@pytest.mark.parametrize("settings, key", [
    (dict(ranks={"layer1.0.conv1": LayerRanks(r_out=13, r_in=4)}), "decompose.ranks.layer1.0.conv1.r_out: 13"),
    (dict(ranks={"layer1.0.conv1": LayerRanks(r_out=4, r_in=17)}), "decompose.ranks.layer1.0.conv1.r_in: 17"),
    (dict(ranks={"layer1.0.conv1": LayerRanks(rank=4)}), "decompose.ranks.layer1.0.conv1: tucker2 needs r_out"),
    (dict(method="cp3", ranks={"layer1.0.conv1": LayerRanks(r_out=4, r_in=4)}),
     "decompose.ranks.layer1.0.conv1: cp3 takes one rank"),
    (dict(method="cp3", ranks={"layer1.0.conv1": LayerRanks(rank=109)}), "decompose.ranks.layer1.0.conv1.rank: 109"),
    (dict(ranks={"layer9.conv1": LayerRanks(rank=4)}), "decompose.ranks.layer9.conv1: 'layer9.conv1' is not"),
    (dict(ranks={"conv1": LayerRanks(r_out=4, r_in=3)}), "decompose.ranks.conv1: this layer is not decomposed"),
    (dict(layers=["nope"]), "decompose.layers: 'nope' is not a Conv2d or Linear layer"),
    (dict(exclude=["layer1.0.bn1"]), "decompose.exclude: 'layer1.0.bn1' is not"),
    (dict(layers=["linear"]), "decompose.layers: 'linear' is a Linear layer"),
    (dict(method="cp3", rank_rule="vbmf"), "decompose.rank_rule: vbmf"),
])
def test_bad_settings_name_the_key(decomposer, settings, key):
    with pytest.raises(WorkbenchError, match=f"^{key}".replace("(", r"\(").replace(".", r"\.")):
        decomposer.plan(DecomposeSection(**settings))


def test_vbmf_recovers_the_rank_of_a_noisy_low_rank_matrix():
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(60, 5, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(200, 5, generator=gen, dtype=torch.float64))[0]
    signal = u @ torch.diag(torch.tensor([40.0, 30, 20, 15, 10], dtype=torch.float64)) @ v.T
    noisy = signal + 0.1 * torch.randn(60, 200, generator=gen, dtype=torch.float64)
    assert vbmf_rank(noisy) == vbmf_rank(noisy.T) == 5
    assert vbmf_rank(0.1 * torch.randn(60, 200, generator=gen)) == 0


def test_svd_linear_layers_reload_without_pickle(tmp_path):
    torch.manual_seed(0)
    arch = Arch("resnet20", 10)
    model = zoo.build(arch).eval()
    decomposer = Decomposer(model, arch, (3, 32, 32))
    plan = decomposer.plan(DecomposeSection(x=2.0, linear=True))
    assert [x.method for x in plan.decomposed if x.kind == "linear"] == ["svd"]
    new, new_arch = apply_decomposition(model, arch, plan, decomposer)
    save_model(new, new_arch, tmp_path / "d.safetensors")
    loaded = load_model(checkpoint=tmp_path / "d.safetensors")
    assert loaded.arch.extra["decomposed"]["linear"] == "svd"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), new.eval()(x), rtol=0, atol=0)
    assert count_params(loaded.model) == plan.params[1]


def test_layers_build_in_parallel_with_the_same_result_as_one_by_one(norm, monkeypatch):
    """The Decomposer builds the planned layers on torch's thread count at once, one torch thread
    each (core.decompose.layers.in_parallel): the modules equal those built one by one, in order,
    and torch's thread count is restored."""
    import core.decompose.layers as layers_module
    from core.decompose.layers import in_parallel

    threads_seen = []
    assert in_parallel(lambda x: (x * x, threads_seen.append(torch.get_num_threads())), list(range(7))) == \
        [(x * x, None) for x in range(7)]
    assert threads_seen == [1] * 7
    model, arch = norm.model, norm.arch
    settings = DecomposeSection(method="cp3", x=1.71, layers=["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv2"])
    torch.set_num_threads(2)
    parallel = Decomposer(model, arch, (3, 32, 32))
    plan = parallel.plan(settings, errors=True)
    assert torch.get_num_threads() == 2 and len(plan.decomposed) == 3
    monkeypatch.setattr(layers_module.torch, "get_num_threads", lambda: 1)  # in_parallel runs them in turn
    serial = Decomposer(model, arch, (3, 32, 32))
    serial.plan(settings, errors=True)
    for layer in plan.decomposed:
        for a, b in zip(parallel.decomposed(layer).state_dict().values(), serial.decomposed(layer).state_dict().values()):
            assert torch.equal(a, b), layer.name
