"""What `inspect` and `replay` print into a pipe or a log, and the number formats they share
with the Model screen."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from workbench.cli import main
from workbench.format import jb_p, ms, plural
from workbench.replay_view import steps_table
from workbench.tables import for_console

STEPS = [{"name": "baseline", "params": 1000, "flops": 5000, "latency_ms": 1.0004, "accuracy": 0.9},
         {"name": "pruned", "params": 500, "flops": 2000, "latency_ms": 1.184, "accuracy": 0.8}]


def test_piped_inspect_is_ascii_and_says_each_note_once(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["inspect", "--model", "demo", "--no-latency"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    table = out[:out.index("params ")]
    assert table.isascii() and "k3*k4" in table and " ----" in table
    assert out.count("Shapiro-Wilk p-value approximate") == 1
    assert "11 layers: Shapiro-Wilk p-value approximate for N > 5000" in out


def test_piped_replay_table_is_ascii_and_a_terminal_keeps_its_lines():
    piped = Console(file=io.StringIO(), force_terminal=False, width=100)
    with piped.capture() as captured:
        piped.print(for_console(steps_table(STEPS, "s -> r"), piped))
    assert captured.get().isascii() and "/params" in captured.get()
    tty = Console(force_terminal=True, width=100)
    with tty.capture() as captured:
        tty.print(for_console(steps_table(STEPS, "s -> r"), tty))
    assert "÷params" in captured.get() and not captured.get().isascii()


def test_tiny_jb_p_values_read_as_small_not_zero():
    assert jb_p(5000.0, 0.0) == "1.84e-1086"  # exp(-2500) underflows; the closed form does not
    assert jb_p(1000.0, math.exp(-500)) == "7.1e-218"
    assert jb_p(1.0, 0.6065) == "0.607"


def test_latency_and_counts_read_alike():
    assert [ms(s["latency_ms"]) for s in STEPS] == ["1.000 ms", "1.184 ms"]
    assert plural(1, "input channel") == "1 input channel" and plural(10, "class") == "10 classes"


def test_the_epoch_bar_clock_runs_again_in_every_epoch():
    from workbench.replay_view import LiveProgress

    live = LiveProgress(Console(file=io.StringIO(), force_terminal=True, width=100))
    live({"event": "stage", "stage": 0, "stages": 1, "mode": "ce", "epochs": 2, "steps_per_epoch": 2})
    step = {"event": "step", "stage": 0, "mode": "ce", "steps_per_epoch": 2, "loss": 1.0, "losses": {"ce": 1.0},
            "lr": 0.1, "images_per_s": 10.0, "eta_s": 1.0}
    for epoch, s in ((0, 1), (0, 2), (1, 1)):
        live({**step, "epoch": epoch, "step": s})
    batches = next(t for t in live.progress.tasks if t.id == live.batches)
    assert batches.completed == 1 and not batches.finished  # epoch 1 filled the bar; epoch 2 runs again
