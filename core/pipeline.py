"""Replay a session headless: open -> baseline -> prune -> decompose -> fine-tune stages,
measuring after each step, writing the run directory (core.finetune.rundir).

The compression steps are computed and validated before anything is written, and every
file is written atomically, so a bad session never leaves a half-written output directory
and a crash or kill never leaves a damaged file. The report's `steps` start with `baseline`
and gain one entry per step run (`pruned`, `decomposed`, `finetune:<mode>` per stage)."""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from pydantic import ValidationError

from core.atomic import atomic_path, write_json
from core.report import markdown, time_ratio
from core.errors import WorkbenchError
from core.finetune.events import Done, RunEvent, Steps
from core.finetune.rundir import (
    BASELINE_CHECKPOINT, CHECKPOINT, REPORT, REPORT_MD, SESSION, STATUS, RunWriter, check_out_folder, check_owner,
    is_alive, model_file, read_status, set_aside,
)
from core.finetune.trainer import Placement, Stopped, Trainer, check_amp, load_checkpoint
from core.models.checkpoint import Loaded, load_model, save_model
from core.models.zoo import is_cifar_family
from core.data import make_loader
from core.chain import check, check_pivots, compress
from core.measure import evaluate, latency_entries, parse_device
from core.overview import Opened, measure_costs, open_target
from core.decompose.plan import DecomposePlan
from core.prune.plan import PrunePlan
from core.prune.surgery import save_reference_format
from core.tracking import Tracker
from core.threads import configure_threads
from core.session import (DataSection, MeasureSection, Session, dump_session, first_error, load_session,
                          measure_override, save_session)
from core.stats import conv_layers

Progress = Callable[[str], None]
Events = Callable[[RunEvent], None]


@dataclass
class Run:
    """The outcome of a replay: the report, the model each step produced, the network as
    opened (the fine-tuning teacher) and the compressed one."""

    report: dict
    models: dict  # step name -> (model, arch)
    opened: Opened
    compressed: Opened
    measure: MeasureSection | None = None  # the session's [measure]: where latency is measured


def measure_step(name: str, opened: Opened, latency: bool, layers: list[dict], measure: bool = True,
                 device: str | torch.device = "cpu") -> dict:
    """A step's entry: params, FLOPs, latency and test accuracy (on `device`); without
    `measure` (the other processes under torchrun) only its name and layers."""
    if not measure:
        return {"name": name, "layers": layers}
    costs = measure_costs(opened, latency)
    accuracy = None
    if opened.data is not None:
        accuracy = evaluate(opened.model, make_loader(opened.data.test, 256), device)
        opened.model.cpu()
    return {
        "name": name,
        "params": costs.params,
        "flops": costs.flops,
        "latency_ms": costs.latency.median_ms if costs.latency else None,
        "accuracy": accuracy,
        "layers": layers,
    }


@contextmanager
def measuring(place: Placement):
    """Rank 0 of several processes measures as a single process would: with every CPU it may
    use (torchrun gives each process one thread unless OMP_NUM_THREADS says otherwise)."""
    if place.world == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_run(run: Run, latency: bool, device: str | torch.device = "cpu") -> None:
    """Measure the steps `run_session(measure=False)` left bare (rank 0 of several processes,
    once the compression is done, so that the others wait instead of competing for the CPU)."""
    for entry in run.report["steps"]:
        model, arch = (run.opened.model, run.opened.loaded.arch) if entry["name"] == "baseline" \
            else run.models[entry["name"]]
        opened = Opened(Loaded(model, arch, entry["name"], []), run.opened.data, run.opened.input_shape)
        entry.update(measure_step(entry["name"], opened, False, entry["layers"], device=device))
    if latency:
        models = {"baseline": run.opened.model, **{name: model for name, (model, _) in run.models.items()}}
        _attach_latency(run.report, models, run.opened.input_shape, run.measure)


def _attach_latency(report: dict, models: dict, input_shape: tuple, settings: MeasureSection | None) -> None:
    """Every step's latency on the session's [measure] device and batch sizes, all steps measured
    interleaved in one loop so that their ratios survive a busy machine; the spread warning, if any."""
    s = settings or MeasureSection()
    entries, warning = latency_entries(models, input_shape, s.device, tuple(s.batch_sizes))
    for step in report["steps"]:
        step.update(entries.get(step["name"], {}))
    if warning:
        report["latency_warning"] = warning


def plan_layers(plan: PrunePlan) -> list[dict]:
    return [{"name": layer.name, "channels_before": layer.channels, "channels_after": layer.keep,
             "statistic": layer.statistic, "ratio": layer.ratio, "achieved": layer.achieved, "source": layer.source,
             "time_ms": list(layer.time_ms) if layer.time_ms else None, "slower": layer.slower}
            for layer in plan.layers]


def decomposition_layers(plan: DecomposePlan) -> list[dict]:
    return [{"name": layer.name, "shape": list(layer.shape), "method": layer.method, "ranks": list(layer.ranks),
             "error": layer.error, "params_before": layer.params[0], "params_after": layer.params[1],
             "skipped": layer.skipped, "time_ms": list(layer.time_ms) if layer.time_ms else None}
            for layer in plan.layers]


def run_session(session: Session, latency: bool = True, progress: Progress | None = None,
                opened: Opened | None = None, measure: bool = True) -> Run:
    """Run every compression step the session names (paths already resolved) on `opened` (by
    default the session's model, opened here), measuring each (unless not `measure`: then
    `measure_run` does it later); nothing is written here. Every step is planned (core.chain)
    before anything is measured, so a bad layer name fails first."""
    say = progress or (lambda what: None)
    if opened is None:
        say("opening the model")
        opened = open_target(session.target())
    chain = compress(session, opened, say)
    say("measuring the baseline")
    convs = [{"name": n, "channels_before": m.out_channels, "channels_after": m.out_channels, "statistic": None,
              "ratio": 0.0} for n, m in conv_layers(opened.model)]
    steps = [measure_step("baseline", opened, False, convs, measure)]  # latency: all steps at once, below
    for step in chain.steps:
        say(f"measuring the {step.name} model")
        layers = plan_layers(step.plan) if isinstance(step.plan, PrunePlan) else decomposition_layers(step.plan)
        steps.append(measure_step(step.name, step.opened, False, layers, measure))
        steps[-1]["predicted"] = {"params": step.plan.params[1], "flops": step.plan.flops[1]}
    report = {"session": session.model_dump(mode="json", exclude_none=True), "steps": steps}
    if chain.solved is not None:
        report["target"] = chain.solved.as_dict()
    if measure and latency:
        say("measuring latency (every step, interleaved)")
        _attach_latency(report, {"baseline": opened.model, **{n: m for n, (m, _) in chain.models.items()}},
                        opened.input_shape, session.measure)
        if chain.solved is not None and chain.solved.metric == "latency":  # beside the table's prediction
            report["target"]["measured"] = time_ratio(steps[-1], steps[0])
    if opened.data is not None:  # what the images were normalised with and how validation was held out
        report["data"] = {"name": opened.data.name, "normalization": opened.data.normalization,
                          "split": opened.data.split}
    return Run(report, chain.models, opened, chain.compressed, session.measure)


def save_step_model(out: Path, name: str, model, arch) -> None:
    """A step's model as safetensors (+ the reference cfg format for the CIFAR families)."""
    save_model(model, arch, out / f"{model_file(name)}.safetensors")
    if is_cifar_family(arch.model):
        save_reference_format(model, arch, out / f"{model_file(name)}.pth.tar")


def write_report(out: Path, report: dict) -> None:
    with atomic_path(out / REPORT_MD) as tmp:
        tmp.write_text(markdown(report))
    write_json(out / REPORT, report)


def _check_out(out: Path, session: Session, resume: bool | str, restart: bool, force: bool) -> bool:
    """What can be checked before anything is computed: no live replay writes `out`, a training
    run there is not started over by accident, and what --resume needs is there (the same
    session, checkpoints that read). Returns whether to resume (`"auto"`: when `out` holds a
    training checkpoint). Reads only; a run killed before its first checkpoint resumes by
    starting over."""
    status = read_status(out)
    if is_alive(status) and status["pid"] != os.getpid():
        raise WorkbenchError(f"{out} is being written by another replay (pid {status['pid']}): wait for it, "
                             "stop it, or pick another --out")
    started = _started(out)
    if resume == "auto":
        resume = bool(started)
    if not resume:
        if started and not (restart or force):
            check_owner(out, dump_session(session))  # another session's run: say so first
            raise _holds_run(out, started)
        return False
    if not started and not (out / STATUS).is_file():
        raise WorkbenchError(f"nothing to resume in {out}: no run was started there (run without --resume, or "
                             "with --resume auto)")
    frozen = out / SESSION
    try:
        same = not frozen.is_file() or frozen.read_text() == dump_session(session)
    except (OSError, ValueError):
        same = False
    if not same:
        raise WorkbenchError(f"{out} was started from a different session than this one: "
                             "resume with the same session file, or choose another --out")
    for name in started:
        try:
            load_checkpoint(out / name)
        except WorkbenchError:
            raise WorkbenchError(f"cannot resume {out}: {name} is damaged or not a checkpoint of this workbench; "
                                 f"`--restart` starts the run again (keeping the file as {name}.old), or choose "
                                 "another --out") from None
    return True


def _started(out: Path) -> list[str]:
    return [name for name in (CHECKPOINT, BASELINE_CHECKPOINT) if (out / name).exists()]


def _holds_run(out: Path, started: list[str]) -> WorkbenchError:
    return WorkbenchError(f"{out} holds a training run already ({started[0]}): pass --resume to continue it, "
                          f"--restart to start it again (the old checkpoint is kept as {started[0]}.old), or "
                          "choose another --out")


def _claim_check(out: Path, session: Session, resume: bool, restart: bool, force: bool) -> None:
    """Run under the folder's lock, before the first write: the folder holds nothing but this
    session's run (unless `force`), and a training run there is resumed or, with `restart` or
    `force`, set aside (`finetune.ckpt.old`) to start again."""
    if not force:
        check_owner(out, dump_session(session))
    started = _started(out)
    if resume:
        return
    if started and not (restart or force):
        raise _holds_run(out, started)
    for name in started:
        set_aside(out / name)


def agree(place: Placement, check: Callable, share: bool = True):
    """Run `check` on rank 0 only and give every process its outcome: its one-line error, raised
    everywhere, or (with `share`) its result; without `share` the other ranks get None. Alone,
    just `check()`."""
    if place.world == 1:
        return check()
    outcome: list = [None, None]
    if place.main:
        try:
            outcome[0] = check()
        except Exception as exc:  # noqa: BLE001 - every rank must hear of it, not wait forever
            outcome[1] = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
    message = [outcome[1], outcome[0] if share else None]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise WorkbenchError(message[0])
    return outcome[0] if place.main else message[1]


def override_session(session: Session, data: str | None = None, checkpoint: str | Path | None = None,
                     source: str = "session") -> Session:
    """The (resolved) session with its `[data] spec` and/or `[model] checkpoint` replaced (a
    missing `[data]` is created); relative paths are taken from the current folder. The
    result is validated again as a whole: a conflict is one WorkbenchError line."""
    update = {}
    if data is not None:
        update["data"] = (session.data.model_copy(update={"spec": str(data)}) if session.data  # keeps normalize, split
                          else DataSection(spec=str(data)))
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
           resume: bool | str = False, on_event: Events | None = None, data: str | None = None,
           checkpoint: str | Path | None = None, trust: bool = False, restart: bool = False,
           force: bool = False, tensorboard: bool = False, csv: bool = False, measure: dict | None = None) -> Run:
    """Run the session at `path` and write the run directory `out` (on rank 0 only when
    torchrun started several processes). `on_event` receives every training event. `data`
    and `checkpoint` replace the session's `[data] spec` and `[model] checkpoint` (relative
    paths from the current folder); the frozen session.toml holds the replaced values.

    `resume` continues the training run in `out` (`"auto"`: if it holds a checkpoint, else
    starts one); `restart` starts it again, its checkpoints set aside; `force` writes into a
    folder that holds another session's files; `trust` lets code the session names run. The
    folder is checked first (rank 0 decides for every process), and again under its lock
    right before the first write. `tensorboard` and `csv` add those views of the events
    (core.tracking), as the session's `[log]` does. `measure` (device, batch_sizes "1,64", threads)
    replaces those keys of the session's `[measure]`."""
    say = progress or (lambda what: None)
    session = override_session(load_session(path).resolved(Path(path).resolve().parent), data, checkpoint, str(path))
    if measure:
        session = session.model_copy(update={"measure": measure_override(session.measure, **measure)})
    if session.measure is not None:
        parse_device(session.measure.device)  # a CUDA device this machine lacks: one line, before anything runs
    configure_threads(session.measure.threads if session.measure else None)
    out = Path(out)
    check_out_folder(out)
    target = session.target(trust)
    place = Placement.detect()
    check_amp(session.finetune, place)
    if session.train is not None and session.model.checkpoint is None:
        check_amp([session.train], place, "baseline")
    resume = agree(place, lambda: _check_out(out, session, resume, restart, force))
    say("opening the model")
    opened = open_target(target)
    train = session.train is not None and session.model.checkpoint is None
    if train:  # bad layer names or pivots fail now, not after training the baseline
        say("checking the compression steps on the untrained model")
        check(session, opened)
    writer = None
    log = session.log
    tracker = Tracker(out, tensorboard or bool(log and log.tensorboard), csv or bool(log and log.csv))

    def emit(event: RunEvent) -> None:
        if writer is not None:
            writer.event(event)
            tracker(event)
        if on_event is not None and place.main:
            on_event(event)

    def claim() -> RunWriter:
        return RunWriter(out, lambda: _claim_check(out, session, resume, restart, force))

    try:
        if train:
            writer = agree(place, claim, share=False)
            if place.main:
                save_session(session, out / SESSION)
            opened = _train_baseline(opened, session.train, out, resume, place, emit, say)
        run = run_session(session, latency, progress, opened, measure=place.world == 1)
        if place.world > 1 and place.main:  # measured once, by rank 0, on its device, the others waiting
            say("measuring the baseline and the compressed models")
            with measuring(place):
                measure_run(run, latency, place.device)
        run.report["device"] = place.name
        check_pivots(session, run.compressed)
        if not train:  # the compression is computed and valid: take the folder, then write it
            writer = agree(place, claim, share=False)
        if place.main:
            say(f"writing {out}")
            save_session(session, out / SESSION)
            for name, (model, arch) in run.models.items():
                save_step_model(out, name, model, arch)
            emit(Steps(steps=run.report["steps"]))
        if session.finetune:
            resumed = load_checkpoint(out / CHECKPOINT) if resume and (out / CHECKPOINT).exists() else None
            _finetune(run, session, out, latency, resumed, place, emit, say)
        if writer is not None:
            write_report(out, run.report)
            emit(Done())
            writer.close("done")
    except Stopped as exc:
        if writer is not None:
            writer.close("stopped", str(exc))
        raise
    except BaseException as exc:
        if writer is not None:
            writer.close("failed", str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}")
        raise
    finally:
        tracker.close()
    return run


def _train_baseline(opened: Opened, stage, out: Path, resume: bool, place: Placement, emit: Events,
                    say: Progress) -> Opened:
    """Train the uncompressed network from scratch (`[train]`), once: a finished baseline is
    read back from the run directory, an interrupted one resumes from its checkpoint."""
    arch = opened.loaded.arch
    done = out / "baseline.safetensors"
    if resume and done.is_file():
        say("reading the trained baseline")
        return Opened(load_model(arch.model, done), opened.data, opened.input_shape)
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
        # measured as the earlier steps: a contiguous copy on the CPU (channels_last is a training layout)
        measured = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
        where = session.measure or MeasureSection()
        with measuring(place):
            costs = measure_costs(Opened(Loaded(measured, arch, name, []), compressed.data, compressed.input_shape),
                                  latency, where.device, tuple(where.batch_sizes))
        step = {"name": name, "params": costs.params, "flops": costs.flops,
                "latency_ms": costs.latency.median_ms if costs.latency else None,
                "latency": [lat.as_dict() for lat in costs.latencies], "accuracy": result["test_acc"],
                "layers": [], **result}
        save_step_model(out, f"finetune-{index + 1}-{result['mode']}", model.cpu(), arch)
        model.to(place.device)
        emit(Steps(steps=[*steps, *trainer.state.completed, step]))
        return step

    steps.extend(trainer.run(resumed, stage_end))
