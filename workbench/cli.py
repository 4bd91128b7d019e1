"""The `workbench` command: `inspect` prints statistics, `open` starts the TUI, `replay`
runs session files headless; no command opens the TUI on the embedded demo.

Everything that can be checked without a model (paths, names, session files, option values)
is checked before torch is imported, so a typo is answered at once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from core.errors import WorkbenchError

EXIT_CODES = """\b
Exit codes: 0 done; 2 bad input or a failed step (one `error:` line);
3 a training run stopped by SIGTERM or Ctrl-C (it checkpointed first:
resume it with --resume); 130 interrupted (Ctrl-C) anywhere else."""

cli = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    no_args_is_help=False,
    rich_markup_mode=None,  # click's plain help: wraps cleanly at 80 columns, and loads no rich
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="""HOS Workbench: compress CNNs with higher-order statistics (CVPRW 2020).

With no command, opens the terminal workbench on the embedded demo model.

\b
Examples:
  workbench
  workbench inspect --checkpoint res56.pth.tar --data cifar10:~/cifar
  workbench open --session sessions/demo-p1.toml
  workbench replay sessions/demo.toml --out runs/demo""",
    epilog=EXIT_CODES,
)

MODEL_HELP = ("resnet20/32/44/56/110, mobilenet_v1_cifar, mobilenet_v2_cifar, a torchvision classifier "
              "(resnet50, mobilenet_v2, vgg16_bn, ...), demo, timm:NAME, hf:FOLDER, or package.module:factory; "
              "optional when the checkpoint tells")
DATA_HELP = ("demo, or a directory: CIFAR-10/100 python batches, Fashion-MNIST idx files, ImageFolder "
             "(train/ and test/); prefix cifar10:, cifar100:, fashion-mnist:, imagefolder: to force a format")
DEVICE_HELP = "where latency is measured: cpu (default), cuda or cuda:N (the device the model will run on)"
BATCH_HELP = "batch sizes latency is measured at, e.g. 1,64 (default: 1)"
THREADS_HELP = "torch intra-op threads (default: OMP_NUM_THREADS, else the cores not busy with other processes)"
TRUST_HELP = ("load a whole pickled model with its own code (torch.load, only for files you trust); "
              "without it such files are read inertly, running nothing. Also needed for a session or run "
              "that asks for it (trust_pickle = true) or names a package.module:factory model")


def _target(model, checkpoint, num_classes, in_channels, weights, trust_pickle, data, input_size):
    """What to open, every part checked that can be without torch (one line if wrong)."""
    from core.data.spec import parse_spec
    from core.models.names import check_model_name
    from core.target import Target, parse_input_size

    if checkpoint is not None and not checkpoint.exists():
        raise WorkbenchError(f"checkpoint {checkpoint} does not exist")
    if checkpoint is not None and not checkpoint.is_file():
        raise WorkbenchError(f"checkpoint {checkpoint} is not a file: give the weights file itself")
    if model is None and checkpoint is None:
        raise WorkbenchError("say what to open: --model NAME and/or --checkpoint FILE (or run `workbench` for the demo)")
    if model is not None:
        check_model_name(model)
    if data is not None:
        parse_spec(data)
    return Target(model, checkpoint, num_classes, in_channels, weights, trust_pickle, data,
                  parse_input_size(input_size) if input_size else None)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"hos-workbench {version('hos-workbench')}")
        raise typer.Exit()


@cli.callback()
def default(ctx: typer.Context,
            version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                         help="print the version and exit")) -> None:
    """Open the workbench on the embedded demo when no command is given."""
    if ctx.invoked_subcommand is None:
        from core.target import Target
        from workbench.app import Workbench

        Workbench(Target.demo()).run()  # its loader sets torch's threads once the first frame is up


@cli.command(short_help="print weight statistics and totals of a model")
def inspect(
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="NAME", help=MODEL_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", metavar="FILE", help="weights: .pth/.pth.tar/.pt (zip or legacy), .safetensors"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", metavar="N", min=1, help="classes (default: from the checkpoint)"),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", metavar="N", min=1, help="input channels (default: from the checkpoint)"),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="NAME", help="torchvision weights name, read from torch's hub cache only"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", metavar="SPEC", help=DATA_HELP),
    input_size: Optional[str] = typer.Option(None, "--input-size", metavar="CxHxW", help="CxHxW for FLOPs and latency (default: from the model family)"),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="also write the statistics as JSON to this file"),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="measure latency (torch.utils.benchmark)"),
    device: Optional[str] = typer.Option(None, "--device", metavar="cpu|cuda[:N]", help=DEVICE_HELP),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", metavar="N,N", help=BATCH_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help=THREADS_HELP),
) -> None:
    """Print every conv layer's weight statistics and the model's totals.

    \b
    Examples:
      workbench inspect --model demo --data demo
      workbench inspect -c res56_norm.pth.tar --json stats.json --no-latency"""
    target = _target(model, checkpoint, num_classes, in_channels, weights, trust_pickle, data, input_size)
    from core.session import measure_override

    measure = measure_override(None, device, batch_sizes, threads)
    from core.threads import configure_threads
    from workbench.inspect_view import run_inspect

    configure_threads(threads)
    run_inspect(target, json_out, latency, measure)


RUN_FILES = ("status.json", "report.json", "session.toml")
PEER = "torch-pruning"  # a [prune] strategy the TUI's prune screen does not offer


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.exists():
        raise WorkbenchError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise WorkbenchError(f"{run_dir} is not a directory: give a run directory (a replay's --out), "
                             "or a session file with --session")
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        raise WorkbenchError(f"{run_dir} holds no run ({', '.join(RUN_FILES)}): give the --out folder of a replay")


def _run_session(run_dir: Path):
    """The session a run directory was made from: its frozen session.toml, else the one the
    workbench saved beside it, else the copy in report.json."""
    import json

    import tomli_w

    from core.session import load_session, parse_session

    for file in (run_dir / "session.toml", run_dir.parent / f"{run_dir.name}.toml"):
        if file.is_file():
            return load_session(file).resolved(file.resolve().parent)
    try:
        report = json.loads((run_dir / "report.json").read_text())
    except (OSError, ValueError):
        report = None
    if isinstance(report, dict) and isinstance(report.get("session"), dict):
        return parse_session(tomli_w.dumps(report["session"]), f"{run_dir / 'report.json'} (session)") \
            .resolved(run_dir.resolve())
    raise WorkbenchError(f"{run_dir} has no session.toml yet (the run is just starting?): try again in a moment")


@cli.command("open", short_help="the TUI on a model, a session file or a run")
def open_(
    run_dir: Optional[Path] = typer.Argument(None, metavar="RUN_DIR", show_default=False, hidden=True),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="NAME", help=MODEL_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", metavar="FILE", help="weights file"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", metavar="N", min=1),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", metavar="N", min=1),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="NAME", help="torchvision weights name, from torch's hub cache only"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", metavar="SPEC", help=DATA_HELP),
    input_size: Optional[str] = typer.Option(None, "--input-size", metavar="CxHxW", help="CxHxW (default: from the model family)"),
    session: Optional[Path] = typer.Option(None, "--session", "-s", metavar="FILE",
                                           help="open what a session file names, with its choices; ctrl+s saves back to it"),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help=THREADS_HELP),
) -> None:
    """Open the terminal workbench on a model, a session file, or a run directory.

    RUN_DIR is a run directory (a replay's --out): the workbench opens its session and
    follows the run (results, plots; live while it runs). A folder of runs (a queue's --out)
    opens the Compare screen: every run's final step, sortable, and the accuracy-vs-cost
    frontier, re-read while runs go on.

    \b
    Examples:
      workbench open --model resnet56 -c res56_norm.pth.tar -d cifar10:~/cifar
      workbench open --session sessions/demo-p3.toml
      workbench open runs/demo
      workbench open runs"""
    if run_dir is not None:  # checked before the heavy imports: a wrong path answers at once
        given = [flag for flag, value in (("--session", session), ("--model", model), ("--checkpoint", checkpoint),
                                          ("--num-classes", num_classes), ("--in-channels", in_channels),
                                          ("--weights", weights), ("--data", data),
                                          ("--input-size", input_size)) if value is not None]
        if given:
            raise WorkbenchError(f"{given[0]} does not go with RUN_DIR: a run opens the model and data its "
                                 "session.toml names")
        from core.compare import is_runs_folder

        if is_runs_folder(run_dir):  # a queue's --out: the Compare screen
            from workbench.screens.compare import CompareApp

            CompareApp([run_dir]).run()
            return
        _check_run_dir(run_dir)
        _open_run(run_dir, trust_pickle)
        return
    prune = decompose = finetune = measure = budget = None
    if session is not None:
        from core.session import load_session

        if not session.is_file():
            raise WorkbenchError(f"session file {session} does not exist")
        loaded = load_session(session).resolved(session.resolve().parent)
        if loaded.prune is not None and loaded.prune.strategy == PEER:
            raise WorkbenchError(f"{session}: the TUI does not edit [prune] strategy \"{PEER}\" (the Torch-Pruning "
                                 f"peer): run it with `workbench replay {session}`, then open its run directory")
        target, prune, decompose, finetune = loaded.target(trust_pickle), loaded.prune, loaded.decompose, \
            loaded.finetune
        measure, budget = loaded.measure, loaded.budget
    else:
        target = _target(model, checkpoint, num_classes, in_channels, weights, trust_pickle, data, input_size)
    from core.overview import open_target
    from core.threads import configure_threads
    from workbench.app import Workbench

    configure_threads(threads)
    opened = open_target(target)  # fail here, before the screen takes over the terminal
    Workbench(target, opened=opened, prune=prune, decompose=decompose, finetune=finetune, session_path=session,
              measure=measure, budget=budget).run()


def _open_run(run_dir: Path, trust: bool = False) -> None:
    """The TUI on a run directory: its session's model (if it still opens) and the run followed;
    code its session names runs only with `trust` (--trust-pickle)."""
    from core.overview import Target, open_target, parse_input_size
    from workbench.app import Workbench

    loaded = _run_session(run_dir)
    loaded.require_trust(trust)
    m = loaded.model
    # built without checking the files: a run whose checkpoint moved is still followed, and
    # the app says why its model cannot be opened
    target = Target(m.name, Path(m.checkpoint) if m.checkpoint else None, m.num_classes, m.in_channels,
                    m.weights, trust, loaded.data.spec if loaded.data else None,
                    parse_input_size(m.input_size) if m.input_size else None)
    try:
        opened = open_target(target)
    except WorkbenchError:
        opened = None  # the app's loader fails again and notifies the error
    prune = None if loaded.prune is not None and loaded.prune.strategy == PEER else loaded.prune  # not editable
    app = Workbench(target, opened=opened, prune=prune, decompose=loaded.decompose, finetune=loaded.finetune,
                    measure=loaded.measure, budget=loaded.budget)
    app.follow_run(run_dir)
    app.run()


@cli.command(short_help="run session files headless (batch, torchrun)")
def replay(
    sessions: list[Path] = typer.Argument(..., metavar="SESSION", show_default=False, hidden=True),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR",
                                       help="run directory (default: runs/<session name>); with several sessions "
                                            "the folder that gets one run directory per session"),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="measure the latency of every step"),
    device: Optional[str] = typer.Option(None, "--device", metavar="cpu|cuda[:N]",
                                         help=DEVICE_HELP + "; replaces the session's [measure] device"),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", metavar="N,N",
                                              help=BATCH_HELP + "; replaces [measure] batch_sizes"),
    threads: Optional[int] = typer.Option(None, "--threads", metavar="N", help=THREADS_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue the training run in --out from its checkpoint; "
                                "`--resume auto`: continue it if --out holds one, else start it (torchrun restarts)"),
    resume_auto: bool = typer.Option(False, "--resume-auto", hidden=True),
    restart: bool = typer.Option(False, "--restart", help="start the training run in --out again (its checkpoints "
                                 "are kept as finetune.ckpt.old, baseline.ckpt.old)"),
    force: bool = typer.Option(False, "--force", help="write into a --out that holds another session's run or "
                               "other files (files of the same names are replaced)"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", metavar="SPEC",
                                       help=f"replace the session's data spec (paths from the current folder): {DATA_HELP}"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", metavar="FILE",
                                              help="replace the session's model checkpoint (from the current folder)"),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="also write the training events for TensorBoard "
                                                                  "into the run directory (as [log] tensorboard)"),
    csv: bool = typer.Option(False, "--csv", help="also write them as metrics.csv (as [log] csv)"),
) -> None:
    """Run session files headless: prune, decompose, fine-tune, measure each step, write the
    run directory.

    Each SESSION is a session file (.toml). Several sessions run one after the other, each
    in its own run directory; one that fails does not stop the others, and a summary table
    ends the queue. Under torchrun the fine-tuning runs on every process (DDP).

    \b
    Examples:
      workbench replay sessions/demo.toml --out runs/demo
      workbench replay sessions/demo.toml --out runs/demo --resume
      workbench replay sessions/demo-p*.toml --out runs
      torchrun --nproc_per_node 4 -m workbench replay a3.toml -d cifar10:~/cifar"""
    from core.finetune.rundir import check_out_folder

    if checkpoint is not None and not checkpoint.is_file():
        raise WorkbenchError(f"--checkpoint {checkpoint} does not exist")
    if restart and (resume or resume_auto):
        raise WorkbenchError("--restart starts the run again and --resume continues it: give one of them")
    check_out_folder(out or Path("runs"))
    from core.session import measure_override

    measure_override(None, device, batch_sizes, threads)  # a bad value fails before anything runs
    measure = {k: v for k, v in (("device", device), ("batch_sizes", batch_sizes), ("threads", threads)) if v}
    how = "auto" if resume_auto else resume
    if len(sessions) > 1:
        from workbench.replay_view import run_queue

        raise typer.Exit(run_queue(sessions, out, latency, how, data, checkpoint, trust_pickle, restart, force,
                                   tensorboard, csv, measure))
    session = sessions[0]
    _precheck_session(session, data, checkpoint, trust_pickle)
    from workbench.replay_view import run_replay

    run_replay(session, out, latency, how, data, checkpoint, trust_pickle, restart, force, tensorboard, csv, measure)


def _precheck_session(path: Path, data: str | None, checkpoint: Path | None, trust: bool = False) -> None:
    """The session file, its data and its checkpoint, checked before torch is imported."""
    from core.data.spec import parse_spec
    from core.session import load_session

    if not path.is_file():
        raise WorkbenchError(f"session file {path} does not exist")
    session = load_session(path).resolved(path.resolve().parent)
    session.require_trust(trust)
    if checkpoint is None and session.model.checkpoint is not None:
        session.target(trust)  # a missing checkpoint file: one line
    spec = data if data is not None else session.data.spec if session.data else None
    if spec is not None:
        parse_spec(spec)


@cli.command(short_help="export a run's model to ONNX, TorchScript or torch.export")
def export(
    source: Path = typer.Argument(..., metavar="SOURCE", show_default=False, hidden=True),
    fmt: str = typer.Option("onnx", "--format", "-f", metavar="FORMAT", help="onnx, torchscript, or exported (torch.export .pt2)"),
    step: Optional[str] = typer.Option(None, "--step", metavar="STEP", help="baseline, pruned, decomposed, finetune:MODE or "
                                                            "finetune-N-MODE (default: the run's last)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="FILE",
                                       help="file to write (default: RUN_DIR/<step>.onnx|.torchscript.pt|.pt2, "
                                            "or beside MODEL_FILE)"),
    opset: Optional[int] = typer.Option(None, "--opset", min=7, metavar="N", help="ONNX opset (default: the exporter's; "
                                                                     "below 18 the TorchScript-based exporter)"),
    dynamic_batch: bool = typer.Option(True, "--dynamic-batch/--static-batch",
                                       help="a dynamic batch axis (checked on a batch of one too)"),
    batch: int = typer.Option(8, "--batch", min=1, metavar="N", help="images in the check batch"),
    input_size: Optional[str] = typer.Option(None, "--input-size", metavar="CxHxW", help="CxHxW of the random check inputs when "
                                                                        "there is no data (default: the model's)"),
    tolerance: float = typer.Option(1e-3, "--tolerance", min=0, metavar="X", help="largest max-abs difference accepted"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
) -> None:
    """Export a model and check it against torch on a batch (the run's first test images,
    else random inputs): the max abs difference is printed, and over --tolerance nothing
    is written. ONNX needs the export extra: pip install 'hos-workbench[export]'.

    SOURCE is a run directory (a replay's --out) or a model file the workbench reads.

    \b
    Examples:
      workbench export runs/demo
      workbench export runs/demo --step pruned --format torchscript
      workbench export model.safetensors --format onnx --opset 17 --static-batch
    """
    from core.export import check_options, default_out, export_model, load_source
    from core.target import parse_input_size

    check_options(fmt, opset)
    src = load_source(source, step, batch, parse_input_size(input_size) if input_size else None, trust_pickle)
    done = export_model(src, fmt, out or default_out(source, src, fmt), opset, dynamic_batch, tolerance)
    shape = "dynamic batch" if dynamic_batch else f"static batch {len(src.batch)}"
    print(f"wrote {done.path} ({src.name} as {fmt}{f', {done.detail}' if done.detail else ''}, {shape})")
    print(f"max abs difference vs torch: {done.max_abs_diff:.3g} on {src.batch_from} "
          f"(batch sizes {', '.join(map(str, done.batch_sizes))}; {done.checked_with})")


@cli.command(short_help="compare runs: final steps, deltas, accuracy-vs-cost frontier")
def compare(
    runs: list[Path] = typer.Argument(..., metavar="RUN_DIR", show_default=False, hidden=True),
    by: str = typer.Option("flops", "--by", metavar="flops|latency", help="the cost of the frontier and the plot"),
    sort: Optional[str] = typer.Option(None, "--sort", metavar="KEY", help="run, params, flops, latency, accuracy, "
                                       "delta, params_ratio, flops_ratio, latency_ratio (default: --by)"),
    csv_file: Optional[Path] = typer.Option(None, "--csv", metavar="FILE", help="also write the table as CSV"),
    md_file: Optional[Path] = typer.Option(None, "--md", metavar="FILE", help="also write it as Markdown"),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="draw the accuracy-vs-cost scatter"),
) -> None:
    """Compare runs, finished or still going: each run's final step (params, FLOPs, latency,
    accuracy, deltas to its own baseline) in one table, the Pareto frontier of accuracy
    against FLOPs (or latency) marked and drawn in a terminal scatter. Each RUN_DIR is a run
    directory (a replay's --out) or a folder of them (a queue's --out).

    \b
    Examples:
      workbench compare runs
      workbench compare runs/a1 runs/a3 --by latency --sort accuracy
      workbench compare runs/fmnist --csv grid.csv --md grid.md --no-plot"""
    from workbench.compare_view import run_compare

    run_compare(runs, by, sort, csv_file, md_file, plot)


def _resume_auto(args: list[str]) -> list[str]:
    """`--resume auto` (or `--resume=auto`) as the hidden flag --resume-auto, so `--resume`
    alone stays a flag that never takes the next word as its value."""
    out, i = [], 0
    while i < len(args):
        pair = args[i] == "--resume" and args[i + 1:i + 2] == ["auto"]
        out.append("--resume-auto" if pair or args[i] == "--resume=auto" else args[i])
        i += 2 if pair else 1
    return out


USAGE_ERROR = typer.BadParameter.__mro__[1]  # click's UsageError (typer may vendor click)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one `error:` line and exit 2, never a traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = cli(args=_resume_auto(args), standalone_mode=False)
    except USAGE_ERROR as exc:  # a bad option: one line, not click's usage box
        where = f" ({exc.ctx.command_path})" if exc.ctx else ""
        print(f"error: {exc.format_message()}{where}; see --help", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
