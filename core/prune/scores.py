"""Per-filter scores (METHOD.md "Filter scores") and the choice of which filters to keep."""

from __future__ import annotations

import torch

from core.errors import WorkbenchError
from core.prune import METRICS
from core.stats import filter_stats

STAT_OF = {"l1norm": "l1", "k3": "k3", "k4": "k4", "k34": "k34", "skew": "skew", "kur": "kurt"}


def skew_kur(skew: torch.Tensor, kurt: torch.Tensor) -> torch.Tensor:
    """Paper's `skew_kur` score: skewness * excess kurtosis."""
    return skew * kurt


def random_scores(n: int, seed: int) -> torch.Tensor:
    """Paper's `random` score: a seeded random permutation of 0..n-1 (float64)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(torch.float64)


def filter_scores(weight: torch.Tensor, metric: str, seed: int = 0) -> torch.Tensor:
    """Float64 (out,) score of every filter of `weight` (out, ...) under `metric`.

    Undefined scores (NaN, e.g. skew of a constant filter) become -inf so they are pruned first.
    """
    if metric not in METRICS:
        raise WorkbenchError(f"unknown filter metric '{metric}': use one of {', '.join(METRICS)}")
    if weight.dim() < 2:
        raise WorkbenchError(f"filter scores need a weight of shape (out, ...), got shape {tuple(weight.shape)}")
    if metric == "random":
        return random_scores(weight.shape[0], seed)
    stats = filter_stats(weight)
    scores = skew_kur(stats["skew"], stats["kurt"]) if metric == "skew_kur" else stats[STAT_OF[metric]]
    return torch.where(torch.isnan(scores), -torch.inf, scores)


def keep_indices(scores: torch.Tensor, num_keep: int) -> list[int]:
    """Indices of the `num_keep` highest scores, ascending; on ties the lower index is kept."""
    if scores.dim() != 1:
        raise WorkbenchError(f"filter scores must be one value per filter, got shape {tuple(scores.shape)}")
    if not 0 < num_keep <= scores.numel():
        raise WorkbenchError(f"cannot keep {num_keep} of {scores.numel()} filters (keep 1 to {scores.numel()})")
    order = torch.sort(-scores, stable=True).indices  # highest first; equal scores in index order
    return order[:num_keep].sort().values.tolist()
