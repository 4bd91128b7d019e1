"""The steps table (core.report): computed once, from a report's steps, and rendered alike by
report.md, replay's summary, the Model screen and the Fine-tune screen's results."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from core.report import markdown, steps_table, time_ratio
from workbench.replay_view import steps_table as rich_table
from workbench.screens.finetune import step_rows
from workbench.screens.summary import steps_text


def lat(batch: int, ms: float) -> dict:
    return {"device": "cpu", "batch": batch, "median_ms": ms}


STEPS = [
    {"name": "baseline", "params": 1000, "flops": 8000, "latency_ms": 2.0, "accuracy": 0.9,
     "latency": [lat(1, 2.0), lat(64, 40.0)]},
    {"name": "pruned", "params": 400, "flops": 2000, "latency_ms": 0.8, "accuracy": 0.85,
     "latency": [lat(1, 0.8), lat(64, 16.0)]},
    {"name": "finetune:ce", "params": 400, "flops": 2000, "latency_ms": None, "accuracy": 0.88},
]


def test_the_table_holds_each_steps_values_and_its_ratios_to_the_first():
    table = steps_table(STEPS)
    assert table.where == [("cpu", 1), ("cpu", 64)]
    assert [(r.name, r.fewer_params, r.fewer_flops, r.speedup) for r in table.rows] == [
        ("baseline", 1.0, 1.0, 1.0), ("pruned", 2.5, 4.0, 2.5), ("finetune:ce", 2.5, 4.0, None)]
    assert [r.latencies for r in table.rows] == [(2.0, 40.0), (0.8, 16.0), (None, None)]
    # a step measured before batch sizes existed: its one latency fills the first column
    assert steps_table([{"name": "b", "params": 1, "flops": 1, "latency_ms": 3.0}]).rows[0].latencies == (3.0,)


def test_the_speed_up_of_steps_timed_interleaved_is_taken_round_by_round():
    """The machine was busy in the second round for both steps and in the third for the pruned one:
    rounds 2/1, 4/2, 2/2 are ratios 2, 2 and 1, median 2, where the two medians (2 and 2) say 1; a
    step without rounds falls back to the medians."""
    base = {"name": "baseline", "latency_ms": 2.0, "latency": [{**lat(1, 2.0), "rounds_ms": [2.0, 4.0, 2.0]}]}
    pruned = {"name": "pruned", "latency_ms": 2.0, "latency": [{**lat(1, 2.0), "rounds_ms": [1.0, 2.0, 2.0]}]}
    assert [r.speedup for r in steps_table([base, pruned]).rows] == [1.0, 2.0]
    assert time_ratio(pruned, base) == 0.5
    assert time_ratio({"latency_ms": 3.0}, base) == 1.5


def test_every_view_renders_the_same_rows():
    md = markdown({"steps": STEPS})
    assert "| latency ms (cpu, batch 1) | latency ms (cpu, batch 64) |" in md
    assert "| pruned | 400 | 2,000 | 85.00% | 0.800 | 16.000 | 2.50 | 4.00 |" in md
    assert "| finetune:ce | 400 | 2,000 | 88.00% | - | - | 2.50 | 4.00 |" in md

    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    with console.capture() as captured:
        console.print(rich_table(STEPS, "s -> r"))
    lines = {line.split()[1]: line.split()[2:][1::2] for line in captured.get().splitlines()
             if line.split()[1:2] and line.split()[1] in {s["name"] for s in STEPS}}
    assert lines["pruned"] == ["400", "2.0K", "0.8", "85.00%", "2.50", "4.00", "2.50"]
    assert lines["finetune:ce"] == ["400", "2.0K", "-", "88.00%", "2.50", "4.00", "-"]

    assert [row[:-1] for row in step_rows(STEPS)] == [
        ("baseline", "1.0K", "8.0K", "90.00%", "2", "1.00", "1.00"),
        ("pruned", "400", "2.0K", "85.00%", "0.8", "2.50", "4.00"),
        ("finetune:ce", "400", "2.0K", "88.00%", "-", "2.50", "4.00")]

    overviews = [(s["name"], SimpleNamespace(accuracy=s["accuracy"], costs=SimpleNamespace(
        params=s["params"], flops=s["flops"],
        latency=SimpleNamespace(median_ms=s["latency_ms"]) if s["latency_ms"] else None))) for s in STEPS]
    text = steps_text(overviews).splitlines()
    assert text[4].split() == ["finetune:ce", "400", "2.0K", "-", "88.00%", "2.50", "4.00"]
    assert text[3].split() == ["pruned", "400", "2.0K", "0.800", "ms", "85.00%", "2.50", "4.00"]


def test_a_malformed_steps_list_is_refused_by_the_finetune_view():
    assert step_rows([{"params": 1}]) is None and step_rows(None) is None
    assert step_rows([]) == []
