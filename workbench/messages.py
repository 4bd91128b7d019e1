"""Typed messages: how screens change the app's state (workbench/state.py) and how workers
hand over their results. Workers post them from their thread (post_message is thread-safe);
only the app's handlers, in the main thread, change the state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from textual.message import Message

if TYPE_CHECKING:  # types only: the app imports without torch
    from core.finetune.settings import FinetuneStage
    from core.overview import Overview
    from core.session import (
        DecomposeSection,
        MeasureSection,
        PruneSection,
        TargetSection,
    )
    from core.stats import NetworkStats


@dataclass
class SettingsChanged(Message):
    """A screen changed the session's choices; a section left None is unchanged."""

    prune: PruneSection | None = None
    decompose: DecomposeSection | None = None
    finetune: tuple[FinetuneStage, ...] | None = None


@dataclass
class MeasureChanged(Message):
    """The Model screen's device and batch sizes ([measure]); None: the defaults (CPU, batch 1)."""

    measure: MeasureSection | None


@dataclass
class BudgetChanged(Message):
    """A target field ([target]) changed; None: no budget."""

    budget: TargetSection | None


@dataclass
class Progress(Message):
    """A worker finished `done` of `total` steps; `what` is the next."""

    done: int
    total: int
    what: str


@dataclass
class StatsReady(Message):
    """The opened model's per-layer statistics exist (the normality tests maybe not yet)."""

    stats: NetworkStats


@dataclass
class ModelOpened(Message):
    """The model is open and measured: statistics, costs and accuracy."""

    overview: Overview


@dataclass
class OpenFailed(Message):
    """The model could not be opened: `message` says why and what to do."""

    message: str


@dataclass
class PlanApplied(Message):
    """A pruning or decomposition plan was applied and the result measured."""

    step: Literal["pruned", "decomposed"]
    overview: Overview
    note: str       # what was measured against what was planned
    as_planned: bool


@dataclass
class ApplyFailed(Message):
    """Applying a plan failed: `message` says why."""

    message: str
