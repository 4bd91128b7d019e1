"""The `workbench` command: `inspect` prints statistics, `open` starts the TUI; no command
opens the TUI on the embedded demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from core.errors import WorkbenchError

cli = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    no_args_is_help=False,
    help="HOS Workbench: compress CNNs with higher-order statistics. With no command, opens the demo.",
)

MODEL_HELP = ("resnet20/32/44/56/110, mobilenet_v1_cifar, mobilenet_v2_cifar, a torchvision classifier "
              "(resnet50, mobilenet_v2, vgg16_bn, ...), demo, or package.module:factory; "
              "optional when the checkpoint tells")
DATA_HELP = ("demo, or a directory: CIFAR-10/100 python batches, Fashion-MNIST idx files, ImageFolder "
             "(train/ and test/); prefix cifar10:, cifar100:, fashion-mnist:, imagefolder: to force a format")
TRUST_HELP = ("load a whole pickled model with its own code (torch.load, only for files you trust); "
              "without it such files are read inertly, running nothing")


def _target(model, checkpoint, num_classes, in_channels, weights, trust_pickle, data, input_size):
    from core.overview import Target, parse_input_size

    if checkpoint is not None and not checkpoint.exists():
        raise WorkbenchError(f"checkpoint {checkpoint} does not exist")
    if model is None and checkpoint is None:
        raise WorkbenchError("say what to open: --model NAME and/or --checkpoint FILE (or run `workbench` for the demo)")
    return Target(model, checkpoint, num_classes, in_channels, weights, trust_pickle, data,
                  parse_input_size(input_size) if input_size else None)


@cli.callback()
def default(ctx: typer.Context) -> None:
    """Open the workbench on the embedded demo when no command is given."""
    if ctx.invoked_subcommand is None:
        from core.overview import Target
        from workbench.app import Workbench

        Workbench(Target.demo()).run()


@cli.command()
def inspect(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="weights: .pth/.pth.tar/.pt (zip or legacy), .safetensors"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="classes (default: from the checkpoint)"),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", min=1, help="input channels (default: from the checkpoint)"),
    weights: Optional[str] = typer.Option(None, "--weights", help="torchvision weights name, read from torch's hub cache only"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="CxHxW for FLOPs and latency (default: from the model family)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the statistics as JSON to this file"),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="measure CPU latency (batch 1, median of 30)"),
) -> None:
    """Print every conv layer's weight statistics and the model's totals."""
    from workbench.inspect_view import run_inspect

    run_inspect(_target(model, checkpoint, num_classes, in_channels, weights, trust_pickle, data, input_size),
                json_out, latency)


RUN_FILES = ("status.json", "report.json", "session.toml")


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


@cli.command("open")
def open_(
    run_dir: Optional[Path] = typer.Argument(None, metavar="RUN_DIR", show_default=False,
                                             help="a run directory (a replay's --out): open its session and "
                                                  "follow the run (results, plots; live while it runs)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="weights file"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1),
    in_channels: Optional[int] = typer.Option(None, "--in-channels", min=1),
    weights: Optional[str] = typer.Option(None, "--weights", help="torchvision weights name, from torch's hub cache only"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="CxHxW (default: from the model family)"),
    session: Optional[Path] = typer.Option(None, "--session", "-s",
                                           help="open what a session file names, with its choices; ctrl+s saves back to it"),
) -> None:
    """Open the terminal workbench on a model, a session file, or a run directory."""
    if run_dir is not None:  # checked before the heavy imports: a wrong path answers at once
        given = [flag for flag, value in (("--session", session), ("--model", model), ("--checkpoint", checkpoint),
                                          ("--num-classes", num_classes), ("--in-channels", in_channels),
                                          ("--weights", weights), ("--trust-pickle", trust_pickle or None),
                                          ("--data", data), ("--input-size", input_size)) if value is not None]
        if given:
            raise WorkbenchError(f"{given[0]} does not go with RUN_DIR: a run opens the model and data its "
                                 "session.toml names")
        _check_run_dir(run_dir)

    from core.overview import Target, open_target, parse_input_size
    from core.session import load_session
    from workbench.app import Workbench

    prune = decompose = finetune = None
    if run_dir is not None:
        loaded = _run_session(run_dir)
        m = loaded.model
        # built without checking the files: a run whose checkpoint moved is still followed, and
        # the app says why its model cannot be opened
        target = Target(m.name, Path(m.checkpoint) if m.checkpoint else None, m.num_classes, m.in_channels,
                        m.weights, m.trust_pickle, loaded.data.spec if loaded.data else None,
                        parse_input_size(m.input_size) if m.input_size else None)
        try:
            opened = open_target(target)
        except WorkbenchError:
            opened = None  # the app's loader fails again and notifies the error
        app = Workbench(target, opened=opened, prune=loaded.prune, decompose=loaded.decompose,
                        finetune=loaded.finetune)
        app.follow_run(run_dir)
        app.run()
        return
    if session is not None:
        if not session.is_file():
            raise WorkbenchError(f"session file {session} does not exist")
        loaded = load_session(session).resolved(session.resolve().parent)
        target, prune, decompose, finetune = loaded.target(), loaded.prune, loaded.decompose, loaded.finetune
    else:
        target = _target(model, checkpoint, num_classes, in_channels, weights, trust_pickle, data, input_size)
    opened = open_target(target)  # fail here, before the screen takes over the terminal
    Workbench(target, opened=opened, prune=prune, decompose=decompose, finetune=finetune, session_path=session).run()


@cli.command()
def replay(
    sessions: list[Path] = typer.Argument(..., help="session files (.toml), replayed in turn",
                                         metavar="SESSION", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="run directory (default: runs/<session name>); with several sessions "
                                            "the folder that gets one run directory per session"),
    latency: bool = typer.Option(True, "--latency/--no-latency", help="measure CPU latency of every step"),
    resume: bool = typer.Option(False, "--resume", help="continue the fine-tuning run in --out from its checkpoint"),
    data: Optional[str] = typer.Option(None, "--data", "-d",
                                       help=f"replace the session's data spec (paths from the current folder): {DATA_HELP}"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c",
                                              help="replace the session's model checkpoint (from the current folder)"),
) -> None:
    """Run session files headless: prune, decompose, fine-tune, measure each step, write the
    run directory. Several sessions run one after the other, each in its own run directory;
    one that fails does not stop the others, and a summary table ends the queue. Under
    torchrun the fine-tuning runs on every process (DDP)."""
    from workbench.replay_view import run_queue, run_replay

    if checkpoint is not None and not checkpoint.is_file():
        raise WorkbenchError(f"--checkpoint {checkpoint} does not exist")
    if len(sessions) > 1:
        raise typer.Exit(run_queue(sessions, out, latency, resume, data, checkpoint))
    session = sessions[0]
    if not session.is_file():
        raise WorkbenchError(f"session file {session} does not exist")
    run_replay(session, out or Path("runs") / session.stem, latency, resume, data, checkpoint)


USAGE_ERROR = typer.BadParameter.__mro__[1]  # click's UsageError (typer may vendor click)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one `error:` line and exit 2, never a traceback."""
    try:
        code = cli(args=argv, standalone_mode=False)
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
