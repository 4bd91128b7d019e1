"""How many filters each layer keeps (METHOD.md "Strategies P1-P5"), as pure functions of numbers.

Layer ids count every conv of the network from 1 (the stem conv is 1); in a CIFAR ResNet the
prunable convs (each block's conv1) have the even ids.
"""

from __future__ import annotations

import bisect
import copy
import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from core.errors import WorkbenchError
from core.models.family import FAMILIES, family_of

STRATEGIES = ("P1", "P2", "P3", "P4", "P5")
# the ResNet scripts' coef, for every model without its own (each family's `coefs`, METHOD.md)
DEFAULT_COEF = {"resnet": 3.7} | {name: coef for f in FAMILIES for name, coef in f.coefs.items()}
T_FACTOR = {"P1": 1.0, "P2": 2.0, "P3": 1.0}


@dataclass(frozen=True)
class Smoothing:
    """How P2 and P3 turn a layer statistic into T, per reference script (METHOD.md):
    P2: T = 1 - log10(jb) / p2_divisor, entering eq. 9 as p2_factor * T;
    P3: T = log10(p3_scale * |k3 k4|) / p3_divisor."""

    p2_divisor: float = 4.2
    p2_factor: float = 2.0
    p3_scale: float = 1e13
    p3_divisor: float = 21.0


RESNET56_SMOOTHING = Smoothing()  # res56prune_normality.py, also the default of every other model
RESNET110_SMOOTHING = Smoothing(**family_of("resnet110").smoothing["resnet110"])  # res110prune_normality.py


@dataclass(frozen=True)
class ScriptRow:
    """One reference script's constants (METHOD.md's table): coef and, per strategy it states,
    the [Tmin, Tmax] that eq. 9 uses (for P2 the range against which p2_factor * T is set)."""

    coef: float
    t_range: dict[str, tuple[float, float]]


@cache  # one ScriptRow per row of constants: reference_row returns REFERENCE_ROWS' own
def _row(coef: float, p1: tuple[float, float], p2: tuple[float, float] | None = None,
         p3: tuple[float, float] | None = None) -> ScriptRow:
    """A row from METHOD.md's (Tmin, span) pairs: Tmax = Tmin + span."""
    given = {"P1": p1, "P2": p2, "P3": p3}
    return ScriptRow(coef, {k: (tmin, tmin + span) for k, (tmin, span) in
                            ((k, v) for k, v in given.items() if v is not None)})


# (model, data set) -> its pruning script's row: the built-in families' `reference_rows`
REFERENCE_ROWS: dict[tuple[str, str], ScriptRow] = {key: _row(*row) for f in FAMILIES
                                                    for key, row in f.reference_rows.items()}


def reference_row(model_name: str, dataset: str | None) -> ScriptRow | None:
    """The row of the reference script for `model_name` on `dataset` ("cifar10"/"cifar100"), if any
    (the model's family's `reference_rows`)."""
    row = family_of(model_name).reference_rows.get((model_name, dataset or ""))
    return _row(*row) if row else None


def default_coef(model_name: str, dataset: str | None = None) -> float:
    """The reference `coef`: the family's row for `dataset` (its CIFAR-10 row when the data set is
    unknown or has no row), else the family's own coef (2.52 / 2.4 for the CIFAR MobileNets v1 / v2),
    else 3.7."""
    row = reference_row(model_name, dataset) or reference_row(model_name, "cifar10")
    return row.coef if row else family_of(model_name).coefs.get(model_name, DEFAULT_COEF["resnet"])


def default_smoothing(model_name: str) -> Smoothing:
    """The P2/P3 smoothing of the family's script (ResNet-110's own), else ResNet-56's."""
    fields = family_of(model_name).smoothing.get(model_name)
    return Smoothing(**fields) if fields else RESNET56_SMOOTHING


def layer_t(strategy: str, shapiro_w: float, jb: float, k34: float, smoothing: Smoothing) -> float:
    """A layer's T for P1 (Shapiro-Wilk W), P2 (from the Jarque-Bera statistic) or P3 (from
    k3 * k4 of its weights), smoothed as `smoothing` says; NaN where undefined."""
    if strategy == "P1":
        return shapiro_w
    if strategy == "P2":
        return 1.0 - math.log10(jb) / smoothing.p2_divisor if jb > 0 and math.isfinite(jb) else math.nan
    if strategy == "P3":
        c = abs(k34)
        return math.log10(smoothing.p3_scale * c) / smoothing.p3_divisor if c > 0 and math.isfinite(c) else math.nan
    raise WorkbenchError(f"strategy {strategy} has no layer statistic T: only {', '.join(T_FACTOR)} do")


def prune_ratio(t: float, tmin: float, tmax: float, coef: float) -> float:
    """Eq. 9, "T-value calculation": r = ceil(10 (T - Tmin) / (coef (Tmax - Tmin))) / 10,
    clamped to [0, 1]; an undefined (NaN) T prunes nothing."""
    if not (math.isfinite(tmin) and math.isfinite(tmax) and tmax > tmin):
        raise WorkbenchError(f"T range [{tmin}, {tmax}] is empty or undefined: Tmax must be above Tmin")
    if not (math.isfinite(coef) and coef > 0):
        raise WorkbenchError(f"coef must be a positive number, got {coef}")
    if math.isnan(t):
        return 0.0
    r = float(np.ceil(10 * (t - tmin) / (coef * (tmax - tmin))) / 10)
    return 0.0 if r <= 0 else min(r, 1.0)


def strategy_t(strategy: str, layer_t: float, p2_factor: float | None = None) -> float:
    """The value entering eq. 9 for the layer's T (core.stats t_p1 / t_p2 / t_p3, or `layer_t`).

    P1 and P3 use T itself. P2 uses p2_factor * T (default 2, the ResNet-56 script's: its ratio is
    r = ceil(10 (2T - 0.01) / (coef 0.72)) / 10 while [0.01, 0.73] is the range of T itself;
    the ResNet-110 script's factor is 1).
    """
    if strategy not in T_FACTOR:
        raise WorkbenchError(f"strategy {strategy} has no layer statistic T: only {', '.join(T_FACTOR)} do")
    factor = p2_factor if strategy == "P2" and p2_factor is not None else T_FACTOR[strategy]
    return factor * layer_t


def round_keep(keep: int, channels: int, multiple_of: int = 1) -> int:
    """`keep` clamped to [1, channels], then rounded up to a multiple of `multiple_of` (at most channels)."""
    if channels < 1 or multiple_of < 1:
        raise WorkbenchError(f"need channels >= 1 and multiple_of >= 1, got {channels} and {multiple_of}")
    keep = min(max(keep, 1), channels)
    return min(-(-keep // multiple_of) * multiple_of, channels)


def keep_count(channels: int, ratio: float, multiple_of: int = 1) -> int:
    """Filters a layer keeps at prune ratio r: num_keep = int(channels (1 - r)) (floor), via round_keep."""
    if not 0 <= ratio <= 1:
        raise WorkbenchError(f"prune ratio must be between 0 and 1, got {ratio}")
    return round_keep(int(channels * (1 - ratio)), channels, multiple_of)


def global_threshold_keep(scores: dict[str, torch.Tensor], percent: float) -> dict[str, int]:
    """P4 (global): all layers' filter scores sorted together ascending; threshold = the score at
    index int(total * percent); each layer keeps its filters scoring strictly above it (at least 1)."""
    if not 0 <= percent < 1:
        raise WorkbenchError(f"P4 percent must be in [0, 1), got {percent}")
    if not scores:
        raise WorkbenchError("P4 needs the filter scores of at least one layer")
    scores = {name: s.reshape(-1).to(torch.float64) for name, s in scores.items()}
    ranked = torch.sort(torch.cat(list(scores.values()))).values
    threshold = ranked[int(ranked.numel() * percent)]
    return {name: max(int((s > threshold).sum()), 1) for name, s in scores.items()}


@dataclass
class StagePlan:
    """P5 (fixed, after Li et al. "Pruning Filters for Efficient ConvNets"): `bounds` are the
    inclusive upper layer id of each stage but the last, `ratios` one prune ratio per stage,
    `skip` the layer ids never pruned."""

    bounds: list[int]
    ratios: list[float]
    skip: list[int]

    def __post_init__(self):
        if len(self.ratios) != len(self.bounds) + 1:
            raise WorkbenchError(f"P5 needs one ratio per stage: {len(self.bounds)} bounds give "
                                 f"{len(self.bounds) + 1} stages, got {len(self.ratios)} ratios")
        if any(a >= b for a, b in zip(self.bounds, self.bounds[1:])):
            raise WorkbenchError(f"P5 stage bounds must increase, got {self.bounds}")
        if not all(0 <= r <= 1 for r in self.ratios):
            raise WorkbenchError(f"P5 stage ratios must be between 0 and 1, got {self.ratios}")


def _stage_plans(variants: dict[str, tuple]) -> dict[str, StagePlan]:
    return {variant: StagePlan(*copy.deepcopy(plan)) for variant, plan in variants.items()}


# model -> variant -> plan: the built-in families' `p5_variants`
P5_VARIANTS: dict[str, dict[str, StagePlan]] = {name: _stage_plans(variants) for f in FAMILIES
                                                for name, variants in f.p5_variants.items()}


def stage_ratios(layer_ids: dict[str, int], plan: StagePlan) -> dict[str, float]:
    """P5 prune ratio of each layer (name -> id): its stage's ratio, 0.0 for skipped ids."""
    return {name: 0.0 if i in plan.skip else plan.ratios[bisect.bisect_left(plan.bounds, i)]
            for name, i in layer_ids.items()}


def p5_plan(model_name: str, variant: str) -> StagePlan:
    """A copy of the reference P5 variant `variant` of `model_name` (its family's `p5_variants`)."""
    variants = family_of(model_name).p5_variants.get(model_name)
    if variants is None:
        known = [name for f in FAMILIES for name in f.p5_variants]
        raise WorkbenchError(f"no predefined P5 variants for {model_name} (only {', '.join(known)}): "
                             "give the stage bounds, ratios and skipped layer ids")
    if variant not in variants:
        raise WorkbenchError(f"unknown P5 variant '{variant}' for {model_name}: use one of {', '.join(variants)}")
    return _stage_plans({variant: variants[variant]})[variant]
