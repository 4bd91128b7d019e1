"""The TUI's single state: the session's choices (each domain's settings) and the models they
produced. It is never changed in place: the app's message handlers replace it (workbench/messages.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

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


@dataclass(frozen=True, eq=False)  # compared by identity: each change is a new state
class WorkbenchState:
    prune: PruneSection | None = None         # None until the user makes a pruning choice
    decompose: DecomposeSection | None = None  # likewise for the decomposition
    finetune: tuple[FinetuneStage, ...] = ()   # the stages the fine-tune screen shows
    measure: MeasureSection | None = None      # [measure]: device and batch sizes of latencies (Model screen)
    budget: TargetSection | None = None        # [target]: solves the last step's knob (Prune/Decompose screens)
    stats: NetworkStats | None = None          # the opened model's statistics, before its costs are in
    base: Overview | None = None               # the model as opened
    pruned: Overview | None = None             # after the pruning plan was applied
    decomposed: Overview | None = None         # after the decomposition was applied
    overview: Overview | None = None           # the latest of these, shown by the screens
    error: str | None = None                   # why the model could not be opened

    def but(self, **changes) -> WorkbenchState:
        """This state with `changes`."""
        return replace(self, **changes)
