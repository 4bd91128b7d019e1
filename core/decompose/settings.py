"""The decomposition choices of a session file (`[decompose]`, step 2 of METHOD.md)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from core.section import Section


class LayerRanks(Section):
    """Explicit ranks of one layer: (r_out, r_in) for Tucker-2, rank for CP3 and SVD."""

    r_out: Optional[int] = Field(None, ge=1)
    r_in: Optional[int] = Field(None, ge=1)
    rank: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _shape(self):
        if (self.r_out is None) != (self.r_in is None) or (self.rank is None) == (self.r_out is None):
            raise ValueError("give r_out and r_in (tucker2), or rank (cp3, linear SVD)")
        return self


class DecomposeSection(Section):
    """Step 2 of METHOD.md: which layers, which method, which ranks."""

    method: Literal["tucker2", "cp3"] = "tucker2"
    x: float = Field(1.71, gt=1)                       # compression factor per layer
    rank_rule: Literal["x", "vbmf"] = "x"              # ranks from X, or VBMF estimation
    layers: Optional[list[str]] = None                 # default: the architecture's usual layers
    exclude: list[str] = []
    linear: bool = False                               # also the Linear layers, by truncated SVD
    ranks: dict[str, LayerRanks] = {}                  # per-layer explicit ranks
    skip_slower: bool = False                          # leave whole each layer whose decomposed form is not faster
