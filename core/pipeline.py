"""Replay a session headless: open -> baseline -> prune -> decompose -> fine-tune stages,
measuring after each step, writing the run directory (core.finetune.rundir).

The compression steps are computed and validated before anything is written, and every
file is written atomically, so a bad session never leaves a half-written output directory
and a crash or kill never leaves a damaged file. The report's `steps` start with `baseline`
and gain one entry per step run (`pruned`, `decomposed`, `finetune:<mode>` per stage)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from core.atomic import atomic_path, write_json
from core.errors import WorkbenchError
from core.finetune.rundir import BASELINE_CHECKPOINT, CHECKPOINT, STATUS, RunWriter, is_alive, read_status
from core.finetune.segments import resolve_pivots
from core.finetune.trainer import Placement, Stopped, Trainer, load_checkpoint
from core.models.checkpoint import Loaded, load_model, save_model
from core.models.zoo import is_cifar_family
from core.overview import Opened, measure_costs, open_target, test_accuracy
from core.decompose.plan import DecomposePlan, Decomposer, apply_decomposition
from core.prune.plan import PrunePlan, Planner
from core.prune.surgery import apply_pruning, save_reference_format
from core.session import DataSection, Session, dump_session, load_session, save_session, first_error
from core.stats import conv_layers

Progress = Callable[[str], None]
Events = Callable[[dict], None]


@dataclass
class Run:
    """The outcome of a replay: the report, the model each step produced, the network as
    opened (the fine-tuning teacher) and the compressed one."""

    report: dict
    models: dict  # step name -> (model, arch)
    opened: Opened
    compressed: Opened


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


def run_session(session: Session, latency: bool = True, progress: Progress | None = None,
                opened: Opened | None = None) -> Run:
    """Run every compression step the session names (paths already resolved) on `opened` (by
    default the session's model, opened here); nothing is written here."""
    say = progress or (lambda what: None)
    if opened is None:
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
    return Run({"session": session.model_dump(mode="json", exclude_none=True), "steps": steps}, models,
               opened, current)


def model_file(step: str) -> str:
    """File stem of a step's model: `pruned`, `finetune-2-ce`, ..."""
    return step.replace(":", "-")


def save_step_model(out: Path, name: str, model, arch) -> None:
    """A step's model as safetensors (+ the reference cfg format for the CIFAR families)."""
    save_model(model, arch, out / f"{model_file(name)}.safetensors")
    if is_cifar_family(arch.model):
        save_reference_format(model, arch, out / f"{model_file(name)}.pth.tar")


def report_markdown(report: dict) -> str:
    """report.md: the steps as a table (params, FLOPs, accuracy, latency) and the ratios."""
    steps = report["steps"]
    base = steps[0]
    rows = ["| step | params | FLOPs | test accuracy | latency (ms, batch 1) | params ÷ | FLOPs ÷ |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for step in steps:
        acc = f"{100 * step['accuracy']:.2f}%" if step.get("accuracy") is not None else "-"
        ms = f"{step['latency_ms']:.3f}" if step.get("latency_ms") is not None else "-"
        rows.append(f"| {step['name']} | {step['params']:,} | {step['flops']:,} | {acc} | {ms} | "
                    f"{base['params'] / step['params']:.2f} | {base['flops'] / step['flops']:.2f} |")
    tuned = [s for s in steps if s["name"].startswith("finetune:")]
    notes = [f"- {s['name']}: {s['epochs']} epochs, best validation {100 * s['best_val']:.2f}% at epoch "
             f"{s['best_epoch']}" for s in tuned if s.get("best_val") is not None]
    return "# Replay report\n\n" + "\n".join(rows) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")


def write_report(out: Path, report: dict) -> None:
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(report_markdown(report))
    write_json(out / "report.json", report)


def _check_out(out: Path, session: Session, resume: bool) -> None:
    """Refuse to clobber a training run, and to resume one from another session. A run killed
    before its first checkpoint resumes by starting over."""
    status = read_status(out)
    if is_alive(status) and status["pid"] != os.getpid():
        raise WorkbenchError(f"{out} is being written by another replay (pid {status['pid']}): wait for it, "
                             "stop it, or pick another --out")
    frozen = out / "session.toml"
    started = [name for name in (CHECKPOINT, BASELINE_CHECKPOINT) if (out / name).exists()]
    if not resume:
        if started:
            raise WorkbenchError(f"{out} holds a training run already ({started[0]}): pass --resume to continue "
                                 "it, or choose another --out")
        return
    if not started and not (out / STATUS).is_file():
        raise WorkbenchError(f"nothing to resume in {out}: no run was started there (run without --resume)")
    if frozen.is_file() and frozen.read_text() != dump_session(session):
        raise WorkbenchError(f"{out} was started from a different session than this one: "
                             "resume with the same session file, or choose another --out")


def override_session(session: Session, data: str | None = None, checkpoint: str | Path | None = None,
                     source: str = "session") -> Session:
    """The (resolved) session with its `[data] spec` and/or `[model] checkpoint` replaced (a
    missing `[data]` is created); relative paths are taken from the current folder. The
    result is validated again as a whole: a conflict is one WorkbenchError line."""
    update = {}
    if data is not None:
        update["data"] = DataSection(spec=str(data))
    if checkpoint is not None:
        update["model"] = session.model.model_copy(update={"checkpoint": str(checkpoint)})
    if not update:
        return session
    # the other paths are absolute already, so resolving again only touches the new ones
    session = session.model_copy(update=update).resolved(Path.cwd())
    try:
        return Session.model_validate(session.model_dump())
    except ValidationError as exc:
        raise WorkbenchError(f"{source} with --data/--checkpoint: {first_error(exc)}") from None


def replay(path: Path, out: Path, latency: bool = True, progress: Progress | None = None,
           resume: bool = False, on_event: Events | None = None, data: str | None = None,
           checkpoint: str | Path | None = None) -> Run:
    """Run the session at `path` and write the run directory `out` (on rank 0 only when
    torchrun started several processes). `on_event` receives every training event. `data`
    and `checkpoint` replace the session's `[data] spec` and `[model] checkpoint` (relative
    paths from the current folder); the frozen session.toml holds the replaced values."""
    say = progress or (lambda what: None)
    session = override_session(load_session(path).resolved(Path(path).resolve().parent), data, checkpoint, str(path))
    _check_out(out, session, resume)
    place = Placement.detect()
    say("opening the model")
    opened = open_target(session.target())
    train = session.train is not None and session.model.checkpoint is None
    if train:  # bad layer names or pivots fail now, not after training the baseline
        say("checking the compression steps on the untrained model")
        _check_pivots(session, *_compress_structure(session, opened))
    writer = None

    def emit(event: dict) -> None:
        if writer is not None:
            writer.event(event)
        if on_event is not None and place.main:
            on_event(event)

    try:
        if train:
            writer = RunWriter(out) if place.main else None
            if place.main:
                save_session(session, out / "session.toml")
            opened = _train_baseline(opened, session.train, out, resume, place, emit, say)
        run = run_session(session, latency, progress, opened)
        _check_pivots(session, run.compressed.model, run.compressed.loaded.arch)
        if place.main:  # the compression is computed and valid: write it
            writer = writer or RunWriter(out)
            say(f"writing {out}")
            save_session(session, out / "session.toml")
            for name, (model, arch) in run.models.items():
                save_step_model(out, name, model, arch)
            emit({"event": "steps", "steps": run.report["steps"]})
        if session.finetune:
            resumed = load_checkpoint(out / CHECKPOINT) if resume and (out / CHECKPOINT).exists() else None
            _finetune(run, session, out, latency, resumed, place, emit, say)
        if writer is not None:
            write_report(out, run.report)
            emit({"event": "done"})
            writer.close("done")
    except Stopped as exc:
        if writer is not None:
            writer.close("stopped", str(exc))
        raise
    except BaseException as exc:
        if writer is not None:
            writer.close("failed", str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}")
        raise
    return run


def _compress_structure(session: Session, opened: Opened):
    """The compressed (model, arch) the session asks for, without measuring anything."""
    model, arch, shape = opened.model, opened.loaded.arch, opened.input_shape
    if session.prune is not None:
        p = session.prune
        plan = Planner(model, arch, shape, coupled=p.coupled, ignore=p.ignore).plan(p)
        model, arch = apply_pruning(model, arch, plan.keep(), shape)
    if session.decompose is not None:
        decomposer = Decomposer(model, arch, shape)
        model, arch = apply_decomposition(model, arch, decomposer.plan(session.decompose), decomposer)
    return model, arch


def _check_pivots(session: Session, model, arch) -> None:
    """Resolve every aux stage's pivots on the model it will train (one line if they do not fit)."""
    for index, stage in enumerate(session.finetune):
        if stage.mode == "aux":
            try:
                resolve_pivots(model, arch, stage)
            except WorkbenchError as exc:
                raise WorkbenchError(f"finetune.{index}: {exc}") from None


def _train_baseline(opened: Opened, stage, out: Path, resume: bool, place: Placement, emit: Events,
                    say: Progress) -> Opened:
    """Train the uncompressed network from scratch (`[train]`), once: a finished baseline is
    read back from the run directory, an interrupted one resumes from its checkpoint."""
    arch = opened.loaded.arch
    done = out / "baseline.safetensors"
    if resume and done.is_file():
        say("reading the trained baseline")
        return Opened(load_model(checkpoint=done), opened.data, opened.input_shape)
    resumed = load_checkpoint(out / BASELINE_CHECKPOINT) if resume and (out / BASELINE_CHECKPOINT).exists() else None
    say("training the baseline")
    trainer = Trainer(opened.model, None, arch, opened.data, [stage], opened.input_shape, emit,
                      out / BASELINE_CHECKPOINT, place, phase="baseline")
    trainer.run(resumed)
    model = trainer.student.cpu().eval()
    if place.main:
        save_model(model, arch, done)
    return Opened(Loaded(model, arch, f"{opened.loaded.source}, trained here", []), opened.data, opened.input_shape)


def _finetune(run: Run, session: Session, out: Path, latency: bool, resumed: dict | None, place: Placement,
              emit: Events, say: Progress) -> None:
    """Train the compressed model stage by stage; each stage adds a `finetune:<mode>` step."""
    compressed, steps = run.compressed, run.report["steps"]
    arch = compressed.loaded.arch
    teacher = run.opened.model  # the uncompressed network; a copy when nothing was compressed
    teacher = copy.deepcopy(teacher) if teacher is compressed.model else teacher
    trainer = Trainer(compressed.model, teacher, arch, compressed.data, session.finetune,
                      compressed.input_shape, emit, out / CHECKPOINT, place)

    def stage_end(index: int, model, result: dict) -> dict:
        name = f"finetune:{result['mode']}"
        if not place.main:
            return {"name": name, **result}
        say(f"measuring after fine-tuning stage {index + 1} ({result['mode']})")
        costs = measure_costs(Opened(Loaded(model.eval(), arch, name, []), compressed.data, compressed.input_shape),
                              latency)
        step = {"name": name, "params": costs.params, "flops": costs.flops,
                "latency_ms": costs.latency.median_ms if costs.latency else None, "accuracy": result["test_acc"],
                "layers": [], **result}
        save_step_model(out, f"finetune-{index + 1}-{result['mode']}", model.cpu(), arch)
        model.to(place.device)
        emit({"event": "steps", "steps": [*steps, *trainer.state.completed, step]})
        return step

    steps.extend(trainer.run(resumed, stage_end))
