"""The pruning choices of a session file (`[prune]`, step 1 of METHOD.md)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from core.prune import METRICS
from core.section import Section


class LayerChoice(Section):
    """A per-layer override: a prune ratio or a keep count (not both)."""

    ratio: Optional[float] = Field(None, ge=0, lt=1)
    keep: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _one(self):
        if (self.ratio is None) == (self.keep is None):
            raise ValueError("give exactly one of ratio or keep")
        return self


class PruneSection(Section):
    """Step 1 of METHOD.md. Unset constants take the reference script's row for the model on the
    session's data set (core.prune.strategies.REFERENCE_ROWS); without one Tmin/Tmax are the
    network's range of T, coef and the P2/P3 smoothing the family's."""

    strategy: Literal["P1", "P2", "P3", "P4", "P5", "manual", "torch-pruning"] = "P1"
    metric: Literal[METRICS] = "k34"  # type: ignore[valid-type]
    tmin: Optional[float] = None
    tmax: Optional[float] = None
    coef: Optional[float] = Field(None, gt=0)
    p2_divisor: Optional[float] = Field(None, gt=0)    # P2: T = 1 - log10(jb) / p2_divisor
    p2_factor: Optional[float] = Field(None, gt=0)     # P2: eq. 9 takes p2_factor * T
    p3_scale: Optional[float] = Field(None, gt=0)      # P3: T = log10(p3_scale |k3 k4|) / p3_divisor
    p3_divisor: Optional[float] = Field(None, gt=0)
    percent: float = Field(0.32, ge=0, lt=1)
    variant: Optional[str] = None
    stage_bounds: Optional[list[int]] = None
    stage_ratios: Optional[list[float]] = None
    skip: list[int] = []
    ignore: list[str] = []
    coupled: bool = False
    multiple_of: int = Field(1, ge=1)
    seed: int = 0
    layers: dict[str, LayerChoice] = {}
    importance: Optional[Literal["magnitude", "group-norm"]] = None  # torch-pruning: its importance (group-norm)
    flops: Optional[float] = Field(None, gt=0, lt=1)   # torch-pruning: FLOPs to keep, a fraction of the baseline's
    flops_of: Optional[str] = None                     # torch-pruning: or those another session's [prune] keeps

    @model_validator(mode="after")
    def _consistent(self):
        if self.strategy == "torch-pruning" and ((self.flops is None) == (self.flops_of is None) or self.layers):
            raise ValueError("strategy \"torch-pruning\" needs one of flops (the fraction of the baseline FLOPs to "
                             "keep) or flops_of (a session file whose pruning it matches), and no per-layer overrides")
        if self.tmin is not None and self.tmax is not None and self.tmax <= self.tmin:
            raise ValueError(f"tmax ({self.tmax}) must be above tmin ({self.tmin})")
        if self.stage_ratios is not None:
            if any(not 0 <= r < 1 for r in self.stage_ratios):
                raise ValueError("stage_ratios must each be in [0, 1)")
            if len(self.stage_ratios) != len(self.stage_bounds or []) + 1:
                raise ValueError("stage_ratios needs one ratio per stage: len(stage_bounds) + 1")
        if self.strategy == "P5" and self.variant is None and self.stage_ratios is None:
            raise ValueError("P5 needs variant (A/B/C) or stage_bounds + stage_ratios")
        return self
