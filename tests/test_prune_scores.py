"""core.prune.scores against per-filter scipy loops on real ResNet-56 weights, and the keep rule."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from core.errors import WorkbenchError
from core.models.checkpoint import load_model
from core.prune.scores import METRICS, filter_scores, keep_indices

SCIPY_METRICS = {
    "l1norm": lambda x: np.abs(x).sum(),
    "k3": lambda x: scipy.stats.kstat(x, 3),
    "k4": lambda x: scipy.stats.kstat(x, 4),
    "k34": lambda x: scipy.stats.kstat(x, 3) * scipy.stats.kstat(x, 4),
    "skew": lambda x: scipy.stats.skew(x),
    "kur": lambda x: scipy.stats.kurtosis(x),
    "skew_kur": lambda x: scipy.stats.skew(x) * scipy.stats.kurtosis(x),
}


@pytest.fixture(scope="module")
def block_convs(seeds) -> dict[str, torch.Tensor]:
    """Weights of res56_norm's prunable convs: the even conv ids (each block's conv1)."""
    model = load_model(checkpoint=seeds / "res56_norm.pth.tar").model
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return {n: m.weight.detach() for i, (n, m) in enumerate(convs, 1) if i % 2 == 0}


def reference_argsort_keep(scores: np.ndarray, k: int) -> list[int]:
    """Highest k scores, ties to the lower index: lexsort on (-score, index)."""
    order = np.lexsort((np.arange(scores.size), -scores))
    return sorted(order[:k].tolist())


@pytest.mark.seed
@pytest.mark.parametrize("metric", sorted(SCIPY_METRICS))
def test_filter_scores_match_scipy_loop(block_convs, metric):
    assert len(block_convs) == 27 and all(n.endswith(".conv1") for n in block_convs)
    for name, w in block_convs.items():
        rows = w.numpy().astype(np.float64).reshape(w.shape[0], -1)
        ref = np.array([SCIPY_METRICS[metric](x) for x in rows])
        ours = filter_scores(w, metric)
        assert ours.dtype == torch.float64 and ours.shape == (w.shape[0],)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=0, err_msg=f"{metric} {name}")


@pytest.mark.seed
def test_keep_indices_match_independent_argsort(block_convs):
    for w in block_convs.values():
        for metric in ("k34", "l1norm", "skew_kur"):
            scores = filter_scores(w, metric)
            for k in (1, len(scores) // 3, len(scores) - 1, len(scores)):
                assert keep_indices(scores, k) == reference_argsort_keep(scores.numpy(), k)


def test_keep_indices_ties_keep_the_lower_index():
    scores = torch.tensor([0.5, 2.0, 0.5, 2.0, -1.0, 0.5], dtype=torch.float64)
    assert keep_indices(scores, 1) == [1]
    assert keep_indices(scores, 2) == [1, 3]
    assert keep_indices(scores, 3) == [0, 1, 3]
    assert keep_indices(scores, 4) == [0, 1, 2, 3]
    assert keep_indices(scores, 6) == [0, 1, 2, 3, 4, 5]
    assert keep_indices(torch.zeros(5), 2) == [0, 1]


@pytest.mark.seed
def test_undefined_scores_are_pruned_first(block_convs):
    w = block_convs["layer1.0.conv1"].clone()
    w[3] = 0.01  # a constant filter: skew and kurtosis undefined
    for metric in ("skew", "kur", "skew_kur"):
        scores = filter_scores(w, metric)
        assert scores[3] == -torch.inf and torch.isfinite(scores[torch.arange(len(scores)) != 3]).all()
        kept = keep_indices(scores, w.shape[0] - 1)
        assert 3 not in kept and len(kept) == w.shape[0] - 1
    raw = torch.tensor([1.0, float("nan"), -5.0, 2.0])
    assert keep_indices(raw, 3) == [0, 2, 3]


@pytest.mark.seed
def test_random_is_a_seeded_permutation(block_convs):
    w = block_convs["layer3.0.conv1"]
    a, b, c = filter_scores(w, "random", 7), filter_scores(w, "random", 7), filter_scores(w, "random", 8)
    assert a.dtype == torch.float64 and torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == list(range(w.shape[0]))
    assert keep_indices(a, 10) == sorted(np.argsort(-a.numpy())[:10].tolist())


def test_bad_input_raises_one_line():
    w = torch.randn(4, 2, 3, 3)
    with pytest.raises(WorkbenchError, match="l1norm, random, k3, k4, k34, skew, kur, skew_kur") as err:
        filter_scores(w, "l2")
    assert "\n" not in str(err.value) and len(METRICS) == 8
    with pytest.raises(WorkbenchError, match="shape"):
        filter_scores(torch.randn(4), "k34")
    for k in (0, 5, -1):
        with pytest.raises(WorkbenchError, match="keep 1 to 4"):
            keep_indices(torch.arange(4.0), k)
    with pytest.raises(WorkbenchError, match="one value per filter"):
        keep_indices(torch.zeros(2, 2), 1)
