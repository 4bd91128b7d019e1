"""Where a training run stands, and the checkpoint that holds it: weights, optimizer,
schedule, fp16 gradient scaler and progress, written atomically and read safely
(weights_only), so a run can stop anywhere and resume to the same weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.atomic import atomic_path
from core.errors import WorkbenchError, first_line

CHECKPOINT_VERSION = 1


@dataclass
class StageState:
    """Where a stage stands: what a checkpoint stores besides the tensors."""

    stage: int = 0
    epoch: int = 0            # epochs completed in this stage
    step: int = 0             # batches completed in the current epoch
    best_val: float | None = None
    best_epoch: int | None = None
    sums: dict[str, float] = field(default_factory=dict)  # loss sums of the epoch (from a checkpoint)
    completed: list[dict] = field(default_factory=list)   # what each finished stage reported


def save_checkpoint(path: Path, state: StageState, sums: dict[str, float], model: nn.Module, best: dict | None,
                    optimizer=None, scheduler=None, scaler=None) -> None:
    """Write the checkpoint at `path` atomically: `state` with the epoch's loss `sums`, the
    model's weights, the best-validation weights so far, and the optimizer, schedule and
    (when enabled) gradient scaler of the current stage."""
    sched = scheduler.state_dict() if scheduler is not None else None
    if sched is not None:
        sched["milestones"] = dict(sched["milestones"])
    document = {
        "version": CHECKPOINT_VERSION, "stage": state.stage, "epoch": state.epoch, "step": state.step,
        "best_val": state.best_val, "best_epoch": state.best_epoch,
        "sums": {k: float(v) for k, v in sums.items()}, "completed": list(state.completed),
        "model": model.state_dict(), "best": best,
        "optimizer": optimizer.state_dict() if optimizer is not None else None, "scheduler": sched,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    with atomic_path(path) as tmp:
        torch.save(document, tmp)


def restore(document: dict, model: nn.Module) -> StageState:
    """Load a checkpoint's weights into `model` and return where its run stood (one line when
    it is another version's or does not fit the model)."""
    if document.get("version") != CHECKPOINT_VERSION:
        raise WorkbenchError(f"the checkpoint has version {document.get('version')}, this workbench reads "
                             f"{CHECKPOINT_VERSION}: start the run again without --resume")
    try:
        model.load_state_dict(document["model"])
    except RuntimeError as exc:
        raise WorkbenchError("the checkpoint does not fit the compressed model (was the session changed?): "
                             f"{first_line(exc)}") from None
    return StageState(document["stage"], document["epoch"], document["step"], document["best_val"],
                      document["best_epoch"], dict(document["sums"]), list(document["completed"]))


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint, read safely (weights_only)."""
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WorkbenchError(f"nothing to resume: {path} does not exist (run without --resume)") from None
    except Exception as exc:
        raise WorkbenchError(f"cannot read the checkpoint {path} ({type(exc).__name__}); it is damaged: "
                             "start the run again without --resume") from None
    if not isinstance(document, dict) or "model" not in document:
        raise WorkbenchError(f"{path} is not a fine-tuning checkpoint of this workbench")
    return document
