"""A pruning plan: what each prunable layer keeps and what the network will cost, computed
from the session's choices without touching the model. `surgery.apply_pruning` applies it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from torch import nn

from core.errors import WorkbenchError
from core.models.zoo import Arch
from core.prune.cost import CostModel
from core.prune.groups import ChannelGroup, prunable_groups
from core.prune.peer import flops_target_keep
from core.prune.scores import filter_scores, keep_indices
from core.prune.settings import PruneSection
from core.prune.strategies import (
    T_FACTOR, Smoothing, StagePlan, default_coef, default_smoothing, global_threshold_keep, keep_count, layer_t,
    p5_plan, prune_ratio, reference_row, round_keep, stage_ratios, strategy_t,
)
from core.stats import NetworkStats, network_stats


@dataclass
class LayerPlan:
    name: str
    layer_id: int
    channels: int
    keep: int
    ratio: float             # the prune ratio asked for (by the strategy or an override)
    statistic: float | None  # the layer's T value for P1-P3, else None
    source: str              # the strategy's name, "override" or "skip"
    kept: list[int] = field(default_factory=list)
    time_ms: tuple[float, float] | None = None  # its conv's measured time before, after (core.layer_times)

    @property
    def achieved(self) -> float:
        """Fraction of filters actually removed (after flooring, clamping and rounding)."""
        return 1 - self.keep / self.channels

    @property
    def slower(self) -> str | None:
        """`slower: 0.31 -> 0.38 ms` when its measured time goes up."""
        if self.time_ms is None or self.time_ms[1] <= self.time_ms[0]:
            return None
        return f"slower: {self.time_ms[0]:.3f} -> {self.time_ms[1]:.3f} ms"


@dataclass
class PrunePlan:
    settings: PruneSection
    layers: list[LayerPlan]
    t_range: tuple[float, float] | None
    coef: float | None
    params: tuple[int, int]  # before, after
    flops: tuple[int, int]
    smoothing: Smoothing | None = None  # the P2/P3 constants used (P1-P3)
    latency_ms: tuple[float, float] | None = None  # measured before, predicted after (core.layer_times)
    timing: tuple[str, int] | None = None          # the device and batch size the times are for

    def keep(self) -> dict[str, list[int]]:
        return {layer.name: layer.kept for layer in self.layers}


class Planner:
    """Plans for one model. Groups, costs, statistics and scores are computed once and
    reused, so planning new settings is quick (the TUI re-plans on every edit)."""

    def __init__(self, model: nn.Module, arch: Arch, input_shape: tuple[int, int, int],
                 stats: NetworkStats | None = None, coupled: bool = False, ignore: Sequence[str] = (),
                 dataset: str | None = None):
        """`dataset` (a DataSplits name: "cifar10", ...) picks the reference script's row of constants."""
        self.model, self.arch, self.input_shape, self.dataset = model, arch, input_shape, dataset
        self.groups: list[ChannelGroup] = prunable_groups(model, arch, input_shape, coupled, ignore)
        if not self.groups:
            raise WorkbenchError(f"{arch.model} has no prunable channel groups" + ("" if coupled else
                                 "; set prune.coupled = true to include channels tied to residual additions"))
        self.cost = CostModel(model, input_shape, self.groups)
        self.baseline = self.cost.cost({})
        self._stats = stats
        self._modules = dict(model.named_modules())
        self._scores: dict[tuple[str, int], dict] = {}
        self.timing = ("cpu", 1)  # device and batch size of the per-layer times (core.layer_times)

    @property
    def stats(self) -> NetworkStats:
        if self._stats is None:
            self._stats = network_stats(self.model)
        return self._stats

    def scores(self, metric: str, seed: int) -> dict:
        """Filter scores of every group's root conv (seeded per layer for `random`), cached."""
        if (metric, seed) not in self._scores:
            self._scores[metric, seed] = {
                g.name: filter_scores(self._modules[g.name].weight, metric, seed + g.layer_id) for g in self.groups}
        return self._scores[metric, seed]

    def smoothing(self, s: PruneSection) -> Smoothing:
        """The session's P2/P3 constants, each unset one the family script's."""
        base = default_smoothing(self.arch.model)
        return Smoothing(*(getattr(s, k) if getattr(s, k) is not None else getattr(base, k)
                           for k in ("p2_divisor", "p2_factor", "p3_scale", "p3_divisor")))

    def layer_ts(self, strategy: str, smoothing: Smoothing) -> dict[str, float]:
        """T of every conv layer (by name) for P1-P3 under `smoothing`."""
        return {layer.name: layer_t(strategy, layer.shapiro_w, layer.jb, layer.k34, smoothing)
                for layer in self.stats.layers}

    def t_range(self, s: PruneSection, ts: dict[str, float]) -> tuple[float, float]:
        """[Tmin, Tmax] of eq. 9: the session's, else the reference row's for this model and data
        set, else the network's range of T over all its conv layers."""
        row = reference_row(self.arch.model, self.dataset)
        default = row.t_range.get(s.strategy) if row else None
        if default is None:
            finite = [t for t in ts.values() if math.isfinite(t)]
            default = (min(finite), max(finite)) if finite else (math.nan, math.nan)
        return (s.tmin if s.tmin is not None else default[0], s.tmax if s.tmax is not None else default[1])

    def check(self, s: PruneSection) -> None:
        """What `s` names must fit this model's structure (layers, P5 skips, keep counts, the
        session torch-pruning matches); checked without computing any statistic."""
        names = [g.name for g in self.groups]
        for name in s.layers:
            if name not in names:
                raise WorkbenchError(f"prune.layers: '{name}' is not a prunable layer of {self.arch.model} "
                                     f"(prunable: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})")
        if s.strategy == "torch-pruning":
            if s.flops is None:
                self._matched(s)
            return
        convs = sum(isinstance(m, nn.Conv2d) for m in self.model.modules())
        outside = [i for i in s.skip if not 1 <= i <= convs] if s.strategy == "P5" else []
        if outside:
            raise WorkbenchError(f"prune.skip: {outside} are not layer ids of {self.arch.model} (its conv layers "
                                 f"are 1..{convs}, counted in order)")
        for g in self.groups:
            choice = s.layers.get(g.name)
            if choice is not None and choice.keep is not None and choice.keep > g.channels:
                raise WorkbenchError(f"prune.layers.{g.name}.keep: {choice.keep} is more than its "
                                     f"{g.channels} channels")

    def plan(self, s: PruneSection) -> PrunePlan:
        self.check(s)
        if s.strategy == "torch-pruning":
            return self._peer_plan(s)
        ratios, stat, t_range, coef, counts = self._strategy(s)
        skips = set(self._stage_plan(s).skip) if s.strategy == "P5" else set()
        scores = self.scores(s.metric, s.seed)
        layers = []
        for g in self.groups:
            choice = s.layers.get(g.name)
            ratio, source = ratios.get(g.name, 0.0), "skip" if g.layer_id in skips else s.strategy
            if choice is not None and choice.keep is not None:
                keep, ratio, source = choice.keep, 1 - choice.keep / g.channels, "override"
            elif choice is not None:
                ratio, source = choice.ratio, "override"
                keep = keep_count(g.channels, ratio, s.multiple_of)
            elif g.name in counts:
                keep = round_keep(counts[g.name], g.channels, s.multiple_of)
                ratio = 1 - counts[g.name] / g.channels
            else:
                keep = keep_count(g.channels, ratio, s.multiple_of)
            layers.append(LayerPlan(g.name, g.layer_id, g.channels, keep, ratio, stat.get(g.name), source,
                                    keep_indices(scores[g.name], keep)))
        params, flops = self.cost.cost({layer.name: layer.keep for layer in layers})
        return PrunePlan(s, layers, t_range, coef, (self.baseline[0], params), (self.baseline[1], flops),
                         self.smoothing(s) if t_range is not None else None)

    def _peer_plan(self, s: PruneSection) -> PrunePlan:
        """Torch-Pruning's global pruner landed on `s.flops` of the baseline FLOPs, or on the FLOPs the
        pruning of session `s.flops_of` (an absolute path) keeps of this model (core.prune.peer)."""
        target = s.flops
        if target is None:
            matched = self.plan(self._matched(s)).flops
            target = matched[1] / matched[0]
        keep, _ = flops_target_keep(self, target, s.importance or "group-norm", s.multiple_of)
        layers = [LayerPlan(g.name, g.layer_id, g.channels, len(keep[g.name]), 1 - len(keep[g.name]) / g.channels,
                            None, s.strategy, keep[g.name]) for g in self.groups]
        params, flops = self.cost.cost({layer.name: layer.keep for layer in layers})
        return PrunePlan(s, layers, None, None, (self.baseline[0], params), (self.baseline[1], flops))

    def _matched(self, s: PruneSection) -> PruneSection:
        """The [prune] of session `s.flops_of`, the method's pruning torch-pruning matches."""
        # imported here: the session composes this package's settings
        from core.session import load_session

        try:
            other = load_session(s.flops_of).prune
        except WorkbenchError as exc:
            raise WorkbenchError(f"prune.flops_of: {exc}") from None
        if other is None or other.strategy == "torch-pruning":
            raise WorkbenchError(f"prune.flops_of: {s.flops_of} has no [prune] section of the method to match "
                                 "(P1-P5 or manual)")
        return other

    def _stage_plan(self, s: PruneSection) -> StagePlan:
        if s.stage_ratios is not None:
            return StagePlan(list(s.stage_bounds or []), list(s.stage_ratios), list(s.skip))
        return p5_plan(self.arch.model, s.variant or "")

    def _strategy(self, s: PruneSection):
        """Per-layer ratios (P1-P3, P5) or keep counts (P4), T values, [Tmin, Tmax] and coef."""
        ratios: dict[str, float] = {}
        stat: dict[str, float] = {}
        counts: dict[str, int] = {}
        t_range = coef = None
        if s.strategy in T_FACTOR:
            smoothing = self.smoothing(s)
            ts = self.layer_ts(s.strategy, smoothing)
            t_range = self.t_range(s, ts)
            if not all(math.isfinite(t) for t in t_range) or t_range[1] <= t_range[0]:
                raise WorkbenchError(f"prune: the network's {s.strategy} T range {t_range} is empty or undefined; "
                                     "set prune.tmin and prune.tmax")
            coef = s.coef if s.coef is not None else default_coef(self.arch.model, self.dataset)
            for g in self.groups:
                stat[g.name] = ts[g.name]
                ratios[g.name] = prune_ratio(strategy_t(s.strategy, stat[g.name], smoothing.p2_factor), *t_range, coef)
        elif s.strategy == "P4":
            counts = global_threshold_keep(self.scores(s.metric, s.seed), s.percent)
        elif s.strategy == "P5":
            ratios = stage_ratios({g.name: g.layer_id for g in self.groups}, self._stage_plan(s))
        return ratios, stat, t_range, coef, counts
