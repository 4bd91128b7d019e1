"""One fine-tuning stage as the session file states it (`[[finetune]]`).

Unset fields take METHOD.md's reference values for the stage's mode: step 3 (`mse`,
`aux`) lr 1e-3, 140 epochs, milestones [80, 120] (`aux` with nesterov); step 4 (`ce`)
lr 1e-4, 30 epochs, or after a decomposition (A2/A3, `AFTER_DECOMPOSITION`, filled in by the
session) lr 1e-3, 40 epochs, milestones [20]."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

REFERENCE = {  # METHOD.md: step 3 (reconstruction losses) and step 4 (plain CE)
    "ce": {"lr": 1e-4, "epochs": 30, "milestones": []},
    "mse": {"lr": 1e-3, "epochs": 140, "milestones": [80, 120]},
    "aux": {"lr": 1e-3, "epochs": 140, "milestones": [80, 120], "nesterov": True},
}
# step 4 after a decomposition step (main_finetune_model_decomposed.py); after pruning alone REFERENCE["ce"]
AFTER_DECOMPOSITION = {"lr": 1e-3, "epochs": 40, "milestones": [20]}


def step4_after_decomposition(stage):
    """A `[[finetune]]` table (dict) with AFTER_DECOMPOSITION under its own keys if it is a `ce`
    stage; anything else unchanged."""
    if isinstance(stage, dict) and stage.get("mode") == "ce":
        return {**AFTER_DECOMPOSITION, **stage}
    return stage


def reference_stage(mode: str, decomposed: bool = False) -> "FinetuneStage":
    """A stage of `mode` with every key at its default, in a session with (`decomposed`) or
    without a decomposition step."""
    return FinetuneStage.model_validate(step4_after_decomposition({"mode": mode}) if decomposed else {"mode": mode})


class FinetuneStage(BaseModel):
    """A stage: its loss (`mode`), optimizer (SGD), schedule (MultiStepLR) and batch size."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mode: Literal["ce", "mse", "aux"]
    epochs: int = Field(None, ge=1)            # type: ignore[assignment]  # filled per mode
    lr: float = Field(None, gt=0)              # type: ignore[assignment]
    milestones: list[int] = None               # type: ignore[assignment]
    gamma: float = Field(0.1, gt=0, le=1)      # MultiStepLR factor
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    mse_factor: float = Field(5.0, ge=0)       # weight of the logits MSE (mse, aux)
    n_losses: int = Field(2, ge=1)             # auxiliary losses (aux)
    decay: float = Field(3.0, ge=0)            # v of eq. 14 (aux)
    pivots: Optional[list[int]] = None         # aux pivots in blocks; default predefined/even
    pivot_modules: Optional[list[str]] = None  # aux pivots as module names (models without blocks)
    max_steps: Optional[int] = Field(None, ge=1)  # cap on batches per epoch (quick runs)
    checkpoint_every: int = Field(200, ge=1)   # steps between checkpoints (and every epoch)
    log_every: int = Field(10, ge=1)           # steps between step events
    aux_target: Literal["teacher", "zeros"] = "teacher"  # aux: intermediate targets ("zeros": the reference's bug)
    amp: Literal["off", "bf16", "fp16"] = "off"   # autocast on CUDA (refused without a GPU)
    channels_last: bool = False
    deterministic: bool = False                # deterministic CUDA kernels (bit-for-bit resume on GPUs)
    seed: int = 0
    workers: Optional[int] = Field(None, ge=0)  # batch-building processes (None: core.finetune.loader decides)

    @model_validator(mode="before")
    @classmethod
    def _reference_defaults(cls, data):
        if isinstance(data, dict) and data.get("mode") in REFERENCE:
            data = {**{k: v for k, v in REFERENCE[data["mode"]].items()}, **data}
            data["milestones"] = list(data["milestones"])
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"milestones must be increasing epoch numbers >= 1 (got {self.milestones})")
        if self.mode != "aux" and (self.pivots is not None or self.pivot_modules is not None):
            raise ValueError("pivots and pivot_modules only apply to mode = \"aux\"")
        if self.mode != "aux" and self.aux_target != "teacher":
            raise ValueError("aux_target only applies to mode = \"aux\"")
        if self.pivots is not None and self.pivot_modules is not None:
            raise ValueError("give pivots (block counts) or pivot_modules (module names), not both")
        for given in (self.pivots, self.pivot_modules):
            if given is not None and len(given) != self.n_losses:
                raise ValueError(f"n_losses is {self.n_losses} but {len(given)} pivots are given")
        if self.pivots is not None and (self.pivots != sorted(set(self.pivots)) or self.pivots[0] < 1):
            raise ValueError(f"pivots must be increasing block counts >= 1 (got {self.pivots})")
        return self
