"""Replay a session headless: open -> baseline -> prune -> decompose, measuring after each
step, then write the run directory.

Everything is computed and validated before anything is written, and every file is written
atomically, so a bad session or a crash never leaves a half-written output directory. The
report's `steps` start with `baseline` and gain one entry per step run (`pruned`,
`decomposed`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.atomic import write_json
from core.models.checkpoint import Loaded, save_model
from core.models.zoo import is_cifar_family
from core.overview import Opened, measure_costs, open_target, test_accuracy
from core.decompose.plan import DecomposePlan, Decomposer, apply_decomposition
from core.prune.plan import PrunePlan, Planner
from core.prune.surgery import apply_pruning, save_reference_format
from core.session import Session, load_session, save_session
from core.stats import conv_layers

Progress = Callable[[str], None]


@dataclass
class Run:
    """The outcome of a replay: the report and the model each step produced."""

    report: dict
    models: dict  # step name -> (model, arch)


def measure_step(name: str, opened: Opened, latency: bool, layers: list[dict]) -> dict:
    costs = measure_costs(opened, latency)
    return {
        "name": name,
        "params": costs.params,
        "flops": costs.flops,
        "latency_ms": costs.latency.median_ms if costs.latency else None,
        "accuracy": test_accuracy(opened),
        "layers": layers,
    }


def plan_layers(plan: PrunePlan) -> list[dict]:
    return [{"name": layer.name, "channels_before": layer.channels, "channels_after": layer.keep,
             "statistic": layer.statistic, "ratio": layer.ratio, "achieved": layer.achieved, "source": layer.source}
            for layer in plan.layers]


def decomposition_layers(plan: DecomposePlan) -> list[dict]:
    return [{"name": layer.name, "shape": list(layer.shape), "method": layer.method, "ranks": list(layer.ranks),
             "error": layer.error, "params_before": layer.params[0], "params_after": layer.params[1],
             "skipped": layer.skipped} for layer in plan.layers]


def run_session(session: Session, latency: bool = True, progress: Progress | None = None) -> Run:
    """Run every step the session names (paths already resolved); nothing is written here."""
    say = progress or (lambda what: None)
    say("opening the model")
    opened = open_target(session.target())
    prune_plan = None
    if session.prune is not None:  # plan first: a bad layer name fails before any measuring
        say("planning the pruning")
        p = session.prune
        prune_plan = Planner(opened.model, opened.loaded.arch, opened.input_shape, coupled=p.coupled,
                             ignore=p.ignore).plan(p)
    say("measuring the baseline")
    convs = [{"name": n, "channels_before": m.out_channels, "channels_after": m.out_channels, "statistic": None,
              "ratio": 0.0} for n, m in conv_layers(opened.model)]
    steps = [measure_step("baseline", opened, latency, convs)]
    models = {}
    current = opened
    if prune_plan is not None:
        say("pruning")
        model, arch = apply_pruning(opened.model, opened.loaded.arch, prune_plan.keep(), opened.input_shape)
        current = Opened(Loaded(model, arch, "pruned", []), opened.data, opened.input_shape)
        say("measuring the pruned model")
        steps.append(measure_step("pruned", current, latency, plan_layers(prune_plan)))
        steps[-1]["predicted"] = {"params": prune_plan.params[1], "flops": prune_plan.flops[1]}
        models["pruned"] = (model, arch)
    if session.decompose is not None:
        say("decomposing (planning ranks, reconstruction errors)")
        decomposer = Decomposer(current.model, current.loaded.arch, current.input_shape)
        plan = decomposer.plan(session.decompose, errors=True)
        model, arch = apply_decomposition(current.model, current.loaded.arch, plan, decomposer)
        current = Opened(Loaded(model, arch, "decomposed", []), opened.data, opened.input_shape)
        say("measuring the decomposed model")
        steps.append(measure_step("decomposed", current, latency, decomposition_layers(plan)))
        steps[-1]["predicted"] = {"params": plan.params[1], "flops": plan.flops[1]}
        models["decomposed"] = (model, arch)
    return Run({"session": session.model_dump(mode="json", exclude_none=True), "steps": steps}, models)


def write_run(run: Run, session: Session, out: Path) -> list[Path]:
    """Write the run directory: each step's model, a frozen copy of the session (`session`
    must have absolute paths, see Session.resolved), report.json last."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (model, arch) in run.models.items():
        save_model(model, arch, out / f"{name}.safetensors")
        written.append(out / f"{name}.safetensors")
        if is_cifar_family(arch.model):
            save_reference_format(model, arch, out / f"{name}.pth.tar")
            written.append(out / f"{name}.pth.tar")
    save_session(session, out / "session.toml")
    write_json(out / "report.json", run.report)
    return written + [out / "session.toml", out / "report.json"]


def replay(path: Path, out: Path, latency: bool = True, progress: Progress | None = None) -> Run:
    session = load_session(path).resolved(Path(path).resolve().parent)
    run = run_session(session, latency, progress)
    (progress or (lambda what: None))(f"writing {out}")
    write_run(run, session, out)
    return run
