"""The target field of the Prune and Decompose screens: `[target]` (FLOPs, parameters or latency
as a fraction of the baseline) from a choice and a number, and the line that shows what the
budget solved (core/budget.py) beside it."""

from __future__ import annotations

from pydantic import ValidationError

from core.budget import Solved, timing_note
from core.errors import WorkbenchError
from core.session import TargetSection, first_error

CHOICES = [("no target", "none"), ("FLOPs", "flops"), ("params", "params"), ("latency", "latency")]
HELP = ("[b]target[/] FLOPs, params or latency as a fraction of the opened model's (0.5): the budget\n"
        "         solves the method's knob (coef, percent, P5 stage scale, X) and shows it with the\n"
        "         fraction reached; latency is predicted from per-layer times at the Model screen's\n"
        "         device and first batch size (measured once, a few seconds). One [target] per session:\n"
        "         it solves the last step (the decomposition when there is one).\n"
        "[b]t[/]      time each layer before and after at that device (column ms; `slower` marks the layers\n"
        "         whose time goes up); again to stop timing")


def budget_from(metric: str, text: str) -> TargetSection | None:
    """The `[target]` a choice (`none`, `flops`, `params`, `latency`) and a typed fraction give."""
    text = text.strip()
    if metric == "none" or not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise WorkbenchError(f"target.{metric}: '{text}' is not a number: give a fraction of the baseline "
                             "between 0 and 1, e.g. 0.6") from None
    try:
        return TargetSection.model_validate({metric: value})
    except ValidationError as exc:
        raise WorkbenchError(f"target.{first_error(exc)}") from None


def metric_of(budget: TargetSection | None) -> tuple[str, str]:
    """The choice and the text that show `budget`."""
    if budget is None:
        return "none", ""
    for _, key in CHOICES[1:]:
        if getattr(budget, key) is not None:
            return key, f"{getattr(budget, key):g}"
    return "none", ""


def solving_text(budget: TargetSection | None, timing: tuple[str, int]) -> str:
    """The line shown while a latency target is solved (core.budget.timing_note; seconds, tens on a
    large model on a CPU); empty for the other metrics."""
    note = timing_note(budget, timing) if budget is not None else ""
    return f"[dim]solving: {note} …[/]" if note else ""


def solved_text(solved: Solved | None, timing: tuple[str, int]) -> str:
    """`coef = 1.23 → 0.498`: the solved knob and the fraction of the baseline it reaches. Latency:
    `percent = 0.9315 → 0.797 (cpu b1)`, predicted at the device and batch size (`, cached`: on
    times from core.timing_cache), or measured there with the plan timed whole (`, timed`)."""
    if solved is None:
        return ""
    how = ", timed" if solved.timed else ", cached" if solved.cached else ""
    where = f" ({timing[0]} b{timing[1]}{how})" if solved.metric == "latency" else ""  # fits 80 columns
    return f"{solved.knob} = [b]{solved.value:.4g}[/] → {solved.achieved:.3f}{where}"


def time_cell(time_ms: tuple[float, float] | None) -> str:
    """A layer's measured time before→after in ms; red with `slower` when it goes up; empty until timed."""
    if time_ms is None:
        return ""
    before, after = time_ms
    text = f"{before:.3f}→{after:.3f}"
    return f"[red]{text} slower[/]" if after > before else text
