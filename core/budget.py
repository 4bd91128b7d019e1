"""Budgets: a session's `[target]` (FLOPs, parameters or latency as a fraction of the baseline)
turned into the free knob of the chosen method, solved by bisection on the exact cost model of the
plans (core/prune/plan.py, core/decompose/plan.py), never by building a model; latency on the
per-layer time table (core/layer_times.py: measured once at the planner's or decomposer's
`timing`, cached, interpolated between grid points), so re-planning stays arithmetic.

Knobs: P1-P3 `coef` (larger keeps more), P4 `percent` (larger prunes more), P5 a scale of the
stage ratios (given or of the built-in variant), decomposition `x` (larger compresses more). The
solution is the setting whose cost is nearest the target, on either side (costs move in steps:
whole filters, whole ranks, taken by many layers at once); `achieved` says where it landed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import WorkbenchError
from core.session import DecomposeSection, LayerRanks, PruneSection, TargetSection

STEPS = 40          # bisection steps: the knob to ~1e-12 of its range, far below a filter or a rank
SCAN = 9            # latency: knob values tried when the most compressing end is not the fastest
REFITS = 3          # latency: at most this many fits of the table to a solved plan timed whole
TIMED_STEPS = 4     # latency: whole-model timings bisecting between a plan above a refused target and one within
X_RANGE = (1.0 + 1e-6, 1e4)
COEF_RANGE = (1e-3, 1e4)


@dataclass
class Solved:
    knob: str          # "coef", "percent", "stage_scale" or "x"
    value: float
    metric: str        # "flops", "params" or "latency"
    target: float      # fraction of the baseline asked for
    achieved: float    # fraction the plan reaches (latency: predicted on the per-layer table, unless `timed`)
    timed: bool = False  # latency: `achieved` was measured, the plan pruned and timed whole
    cached: str | None = None  # latency: when the per-layer times read from core.timing_cache were measured

    def as_dict(self) -> dict:
        return {"knob": self.knob, "value": self.value, "metric": self.metric, "target": self.target,
                "achieved": self.achieved, "timed": self.timed, "cached": self.cached}


class OutOfReach(WorkbenchError):
    """A target no knob value meets; `best` is the knob value that came nearest."""

    def __init__(self, message: str, best: float):
        super().__init__(message)
        self.best = best


def timing_note(target: TargetSection, timing: tuple[str, int]) -> str:
    """What a latency target's solve spends its seconds on, for a progress line ("" for the other
    metrics, solved in milliseconds): the first solve times layers and the whole model."""
    return f"timing layers and the whole model: {timing[0]}, batch {timing[1]}" if target.latency is not None else ""


def _metric(target: TargetSection) -> tuple[str, float]:
    return next((k, v) for k in ("flops", "params", "latency") if (v := getattr(target, k)) is not None)


def _bisect(cost: Callable[[float], float], low: float, high: float, goal: float, increasing: bool,
            log: bool = False, scan: int = 0) -> float:
    """The knob in [low, high] whose cost is nearest `goal` (cost monotone in the knob, in steps): the
    two sides of the step that crosses the goal are found by bisection and the nearer one is taken."""
    ok, bad = _bracket(cost, low, high, goal, increasing, log, scan)
    return ok if bad is None or goal - cost(ok) <= cost(bad) - goal else bad


def _between(a: float, b: float, t: float, log: bool) -> float:
    return a * (b / a) ** t if log else a + (b - a) * t


def _bracket(cost: Callable[[float], float], low: float, high: float, goal: float, increasing: bool,
             log: bool = False, scan: int = 0) -> tuple[float, float | None]:
    """The two knob values either side of the step where the cost crosses `goal`: (fits, does not),
    or (the end that fits best, None) when all of [low, high] fits.

    `scan` > 0 is for a cost that need not fall all the way as the knob compresses more (measured
    time: very narrow convs can run slower than wider ones): when the most compressing end does not
    fit, the knob values at 1/(scan+1) steps are tried from the least compressing side, and the first
    that fits takes the end's place."""
    def fits(v: float) -> bool:
        return cost(v) <= goal

    ok, bad = (low, high) if increasing else (high, low)  # the end that compresses most, and the other
    if not fits(ok) and scan:
        tried = [_between(bad, ok, i / (scan + 1), log) for i in range(1, scan + 1)]
        fitting = next((v for v in tried if fits(v)), None)
        if fitting is None:
            best = min([ok, *tried], key=cost)
            raise OutOfReach(f"target: the fastest plan found (at {best:g}) keeps {cost(best):.4f} of the "
                             f"baseline, above the {goal} asked for: compress more layers or raise the target", best)
        ok = fitting
    if not fits(ok):
        raise OutOfReach(f"target: even at {ok:g} the plan keeps {cost(ok):.4f} of the baseline, above the "
                         f"{goal} asked for: compress more layers or raise the target", ok)
    if fits(bad):
        return bad, None
    for _ in range(STEPS):
        mid = math.sqrt(ok * bad) if log else (ok + bad) / 2
        ok, bad = (mid, bad) if fits(mid) else (ok, mid)
    return ok, bad


def solve_prune(planner, settings: PruneSection, target: TargetSection,
                baseline: tuple[int, int] | None = None) -> tuple[PruneSection, Solved]:
    """`settings` with its strategy's knob set so the pruned network meets `target` (fractions of
    `baseline` (params, FLOPs), by default the planner's own network; latency: of its measured time)."""
    metric, goal = _metric(target)
    if metric == "latency":
        from core.layer_times import prune_latency, refit_prune, table_for

        table = table_for(planner, planner.model, planner.input_shape)  # times the model when first asked

        def fraction(s: PruneSection) -> float:
            return prune_latency(planner, planner.plan(s)) / table.model_ms()
    else:
        base = dict(zip(("params", "flops"), baseline or planner.baseline))[metric]

        def fraction(s: PruneSection) -> float:
            return getattr(planner.plan(s), metric)[1] / base

    strategy = settings.strategy
    if strategy in ("P1", "P2", "P3"):
        knob, make = "coef", lambda v: settings.model_copy(update={"coef": v})
        low, high, increasing, log = *COEF_RANGE, True, True
    elif strategy == "P4":
        knob, make = "percent", lambda v: settings.model_copy(update={"percent": v})
        low, high, increasing, log = 0.0, 1.0 - 1e-9, False, False
    elif strategy == "P5":
        stages = planner._stage_plan(settings)
        top = max(stages.ratios)
        if top <= 0:
            raise WorkbenchError("target: the P5 stage ratios are all 0, so there is nothing to scale; give "
                                 "prune.stage_ratios")
        knob = "stage_scale"

        def make(v: float) -> PruneSection:
            return settings.model_copy(update={"stage_bounds": list(stages.bounds), "skip": list(stages.skip),
                                               "stage_ratios": [min(r * v, 1.0) for r in stages.ratios]})
        low, high, increasing, log = 0.0, 1.0 / top, False, False
    else:
        raise WorkbenchError(f"target: strategy {strategy} has no knob to solve (P1-P5 do); drop [target] or "
                             "pick one of those")
    def solve() -> float:
        return _bisect(lambda v: fraction(make(v)), low, high, goal, increasing, log, SCAN if metric == "latency" else 0)

    if metric != "latency":
        value = solve()
        return make(value), Solved(knob, value, metric, goal, fraction(make(value)))
    # the same target for the same settings (their knob aside: the TUI saves it solved) and weights, solved
    # before on this machine (core.timing_cache), is the same plan again: a replay prunes what the TUI showed
    key = table.solve_key(settings.model_dump(mode="json", exclude={"coef", "percent"}), goal)
    if (known := table.solves.get(key)) is not None:
        return make(known["value"]), Solved(knob, known["value"], metric, goal, known["achieved"], known["timed"],
                                            table.cached)
    try:  # solved on the table, then again with the table fitted to the plan found, pruned and timed whole,
        # while the solve moves away from the plan the table was fitted to
        try:
            value = _on_table(solve, table)
            for _ in range(REFITS):
                if not refit_prune(planner, planner.plan(make(value))):
                    break
                value = solve()
            solved = Solved(knob, value, metric, goal, fraction(make(value)), cached=table.cached)
        except OutOfReach as out:  # refused on the table, as first timed or as fitted
            value, measured = _solve_timed(planner, table, make, solve, knob, goal, out.best,
                                           low if increasing else high, log)
            solved = Solved(knob, value, metric, goal, fraction(make(value)) if measured is None else measured,
                            timed=measured is not None, cached=table.cached if measured is None else None)
        table.solves[key] = {"value": value, "achieved": solved.achieved, "timed": solved.timed}
    finally:
        table.save()  # for the next session on this machine (core.timing_cache)
    return make(value), solved


def _solve_timed(planner, table, make: Callable, solve: Callable[[], float], knob: str, goal: float, best: float,
                 end: float, log: bool) -> tuple[float, float | None]:
    """A latency target the table refused: time whole the plan it found fastest (`best`), then the
    most compressing one (`end`; a table can be wrong about narrow plans), each fitting the table
    even through a noisy timing, after which the table may solve: (knob, None). Where it still cannot
    but a plan ran within the target, bisect between one above and one within on whole-model
    timings, TIMED_STEPS times, and take the least compressing plan measured within: (knob, its
    measured fraction). No plan within: OutOfReach with the fastest one's measured time."""
    from core.layer_times import calibrate_prune, measured_fraction

    def timed(v: float) -> float:
        calibrate_prune(planner, planner.plan(make(v)), noisy_too=True)
        return measured_fraction(table)

    above, within = {}, {}
    for v in dict.fromkeys((best, end)):  # the same plan once
        if v != best and planner.plan(make(v)).keep() == planner.plan(make(best)).keep():
            continue
        measured = timed(v)
        (within if measured <= goal else above)[v] = measured
        try:
            return solve(), None
        except OutOfReach:
            if within:
                break
    if not within:
        v = min(above, key=above.get)
        raise OutOfReach(f"target: the fastest plan found ({knob} = {v:.4g}), pruned and timed whole, runs at "
                         f"{above[v]:.4f} of the original's time, above the {goal} asked for: compress more layers "
                         "or raise the target", v) from None
    (ok, measured), bad = next(iter(within.items())), next(iter(above), None)
    for _ in range(TIMED_STEPS if bad is not None else 0):
        mid = _between(bad, ok, 0.5, log)
        if (m := timed(mid)) <= goal:
            ok, measured = mid, m
        else:
            bad = mid
    return ok, measured


def _on_table(solve: Callable[[], float], table) -> float:
    """`solve()` on the latency table; refused, again with plans predicted in every memory format
    (`LatencyTable.predict_everywhere`): a table timed in channels-last alone, where the model is
    faster, can find no plan fast enough where narrow convs would run faster in contiguous format
    (ResNet-56 P4 at `latency = 0.8`: 0.88 at best in channels-last, 0.57 in contiguous, in one run)."""
    try:
        return solve()
    except OutOfReach:
        if not table.predict_everywhere():
            raise
        return solve()


def solve_decompose(decomposer, settings: DecomposeSection, target: TargetSection,
                    baseline: tuple[int, int] | None = None, base_model=None) -> tuple[DecomposeSection, Solved]:
    """`settings` with `x` set so the decomposed network meets `target` (fractions of `baseline`
    (params, FLOPs), e.g. the network before pruning for A3; by default the decomposer's own;
    latency: of the measured time of `base_model`, by default the decomposer's model)."""
    if settings.rank_rule != "x":
        raise WorkbenchError("target: decompose.rank_rule = \"vbmf\" has no compression factor to solve; use "
                             "rank_rule = \"x\" or drop [target]")
    metric, goal = _metric(target)
    if metric == "latency":
        from core.layer_times import LatencyTable, decompose_latency, table_for

        table = table_for(decomposer, decomposer.model, decomposer.input_shape)
        if base_model is None or base_model is decomposer.model:
            base = table.model_ms()
        else:  # measured once per model and timing, as the table is
            measured = decomposer.__dict__.setdefault("_base_ms", {})
            key = (id(base_model), decomposer.timing)
            if key not in measured:
                measured[key] = LatencyTable(base_model, decomposer.input_shape, *decomposer.timing).model_ms()
            base = measured[key]

        def fraction(s: DecomposeSection) -> float:
            plan = decomposer.plan(s.model_copy(update={"skip_slower": False}))
            return decompose_latency(decomposer, plan, settings.skip_slower) / base
    else:
        base = dict(zip(("params", "flops"), baseline or (decomposer.params, decomposer.flops)))[metric]

        def fraction(s: DecomposeSection) -> float:
            return getattr(decomposer.plan(s.model_copy(update={"skip_slower": False})), metric)[1] / base

    def at(x: float) -> DecomposeSection:
        return settings.model_copy(update={"x": x})

    # on the cost model alone, never timed; then layer by layer up to the next step's ranks
    try:
        ok, bad = _bracket(lambda x: fraction(at(x)), *X_RANGE, goal, increasing=False, log=True,
                           scan=SCAN if metric == "latency" else 0)
        best = at(ok) if bad is None else _refine(decomposer, at(ok), at(bad), goal, fraction)
        achieved = fraction(best) if not settings.skip_slower or metric == "latency" else \
            getattr(decomposer.plan(best), metric)[1] / base
    finally:
        if metric == "latency":
            table.save()  # for the next session on this machine (core.timing_cache)
    return best, Solved("x", best.x, metric, goal, achieved, cached=table.cached if metric == "latency" else None)


def _refine(decomposer, low: DecomposeSection, high: DecomposeSection, goal: float,
            fraction: Callable[[DecomposeSection], float]) -> DecomposeSection:
    """One x moves the ranks of every layer of a shape at once (18 convs of a ResNet-56 stage), a
    step too coarse for a budget: starting from `low` (fits), give layers one by one the ranks they
    have at `high` (does not fit) while the total still fits; then take whichever of that and `high`
    is nearer the goal. The raised layers' ranks are written into `ranks`, so the plan is explicit."""
    ranks = dict(low.ranks)
    current = low
    for a, b in zip(decomposer.plan(low).layers, decomposer.plan(high).layers):
        if a.name in low.ranks or a.skipped or b.skipped or a.ranks == b.ranks:
            continue
        given = LayerRanks(r_out=b.ranks[0], r_in=b.ranks[1]) if b.method == "tucker2" else LayerRanks(rank=b.ranks[0])
        trial = low.model_copy(update={"ranks": {**ranks, a.name: given}})
        if fraction(trial) <= goal:
            ranks, current = trial.ranks, trial
    return current if goal - fraction(current) <= fraction(high) - goal else high
