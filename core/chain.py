"""The compression chain: prune the network as opened, then decompose the pruned one
(approach A1 prunes only, A2 decomposes only, A3 does both). Each step is planned once, on
the model it applies to; replay, the TUI and the tests all compress through here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from core.budget import Solved, solve_decompose, solve_prune, timing_note
from core.decompose.plan import DecomposePlan, Decomposer, apply_decomposition
from core.errors import WorkbenchError
from core.finetune.segments import resolve_pivots
from core.layer_times import time_decomposed, time_prune_plan
from core.measure import count_flops, count_params
from core.models.checkpoint import Loaded
from core.overview import Opened
from core.prune.plan import Planner, PrunePlan
from core.prune.surgery import apply_pruning
from core.session import PruneSection, Session

Progress = Callable[[str], None]


@dataclass
class Step:
    """One applied step: its name (`pruned`, `decomposed`), the model it made and its plan."""

    name: str
    opened: Opened
    plan: PrunePlan | DecomposePlan


@dataclass
class Compression:
    """The steps a session asks for, in order, and what its `[target]` solved (if anything)."""

    opened: Opened
    steps: list[Step] = field(default_factory=list)
    solved: Solved | None = None

    @property
    def compressed(self) -> Opened:
        """The last step's model (the network as opened when there is no step)."""
        return self.steps[-1].opened if self.steps else self.opened

    @property
    def models(self) -> dict:
        """Step name -> (model, arch)."""
        return {step.name: (step.opened.model, step.opened.loaded.arch) for step in self.steps}


def planner(opened: Opened, settings: PruneSection, dataset: str | None = None) -> Planner:
    """The pruning planner for `opened` (`dataset` picks the reference constants; by default
    the name of the opened data)."""
    return Planner(opened.model, opened.loaded.arch, opened.input_shape, coupled=settings.coupled,
                   ignore=settings.ignore, dataset=dataset or (opened.data.name if opened.data else None))


def apply(opened: Opened, plan: PrunePlan | DecomposePlan, decomposer: Decomposer | None = None,
          source: str | None = None) -> Opened:
    """`opened` with a pruning or decomposition plan applied (a copy; `decomposer`, the one that
    made a decomposition plan, lends the layers it decomposed). `source` names the result."""
    if isinstance(plan, PrunePlan):
        model, arch = apply_pruning(opened.model, opened.loaded.arch, plan.keep(), opened.input_shape)
    else:
        model, arch = apply_decomposition(opened.model, opened.loaded.arch, plan, decomposer)
    name = source or ("pruned" if isinstance(plan, PrunePlan) else "decomposed")
    return Opened(Loaded(model, arch, name, []), opened.data, opened.input_shape)


def compress(session: Session, opened: Opened, progress: Progress | None = None,
             dataset: str | None = None) -> Compression:
    """Plan and apply the session's `[prune]` on `opened`, then its `[decompose]` on the result,
    each planned once (with `[target]`, its knob solved first). Measures nothing but, with
    `[measure]`, the per-layer times (core.layer_times) at its device and first batch size."""
    say = progress or (lambda what: None)
    chain = Compression(opened)
    current = opened
    if session.prune is not None:
        say("planning the pruning")
        p = session.prune
        prune_planner = planner(opened, p, dataset)
        if session.measure is not None:  # per-layer times (and a latency budget) where the model will run
            prune_planner.timing = (session.measure.device, session.measure.batch_sizes[0])
        if session.budget is not None and session.decompose is None:  # the budget solves the pruning's knob
            note = timing_note(session.budget, prune_planner.timing)
            say("solving the pruning for [target]" + (f" ({note})" if note else ""))
            p, chain.solved = solve_prune(prune_planner, p, session.budget)
        plan = prune_planner.plan(p)
        if session.measure is not None:
            say("timing the pruned layers")
            time_prune_plan(prune_planner, plan)
        say("pruning")
        current = apply(opened, plan)
        chain.steps.append(Step("pruned", current, plan))
    if session.decompose is not None:
        say("decomposing (planning ranks, reconstruction errors)")
        decomposer = Decomposer(current.model, current.loaded.arch, current.input_shape)
        if session.measure is not None:  # skip_slower times layers where the model will run
            decomposer.timing = (session.measure.device, session.measure.batch_sizes[0])
        settings = session.decompose
        if session.budget is not None:  # the budget (of the network as opened) solves x
            note = timing_note(session.budget, decomposer.timing)
            say("solving x for [target]" + (f" ({note})" if note else ""))
            settings, chain.solved = solve_decompose(decomposer, settings, session.budget, (
                count_params(opened.model), count_flops(opened.model, opened.input_shape)), opened.model)
        plan = decomposer.plan(settings, errors=True)
        if session.measure is not None:  # each layer's time before and after (cached by skip_slower)
            time_decomposed(decomposer, plan.layers)
        chain.steps.append(Step("decomposed", apply(current, plan, decomposer), plan))
    return chain


def check(session: Session, opened: Opened) -> None:
    """What can be checked on the structure of the network alone, without planning: the layers
    `[prune]` and `[decompose]` name, the ranks (against the unpruned widths) and the aux stages'
    pivots. A session that trains its baseline first (`[train]`) fails here, before training;
    pivot modules that only decomposition creates are left to `check_pivots` on the result."""
    if session.prune is not None:
        planner(opened, session.prune).check(session.prune)
    if session.decompose is not None:
        Decomposer(opened.model, opened.loaded.arch, opened.input_shape).selection(session.decompose)
    check_pivots(session, opened, structural=True)


def check_pivots(session: Session, opened: Opened, structural: bool = False) -> None:
    """Resolve every aux stage's pivots on `opened`, the model it will train (one line if they do
    not fit). `structural`: `opened` is not decomposed yet, so pivot modules are not checked
    when the session decomposes (decomposition adds modules)."""
    for index, stage in enumerate(session.finetune):
        if stage.mode != "aux" or (structural and session.decompose is not None and stage.pivot_modules is not None):
            continue
        try:
            resolve_pivots(opened.model, opened.loaded.arch, stage)
        except WorkbenchError as exc:
            raise WorkbenchError(f"finetune.{index}: {exc}") from None
