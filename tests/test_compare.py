"""`workbench compare`: the final step of every run (finished, or still going from its
metrics.jsonl), deltas to its own baseline, the Pareto frontier, sorting and the exports."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.compare import compare, find_runs, pareto
from core.errors import WorkbenchError
from tests.cli_runner import run_cli

SESSIONS = Path(__file__).resolve().parents[1] / "sessions"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two real replays of the demo sessions (pruning; decomposition) in one folder."""
    folder = tmp_path_factory.mktemp("compare")
    done = run_cli("replay", str(SESSIONS / "demo-p1.toml"), str(SESSIONS / "demo-a2.toml"), "--out", "runs",
                   "--no-latency", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder / "runs"


def _final(run: Path) -> tuple[dict, dict]:
    steps = json.loads((run / "report.json").read_text())["steps"]
    return steps[0], steps[-1]


def _write_run(folder: Path, steps: list[dict], state: str | None = "done", pid: int | None = None,
               report: bool = True) -> Path:
    folder.mkdir(parents=True)
    if report:
        (folder / "report.json").write_text(json.dumps({"steps": steps}))
    if state is not None:
        (folder / "status.json").write_text(json.dumps({"state": state, "pid": pid or os.getpid()}))
    return folder


def _step(name: str, flops: int, accuracy: float | None, params: int = 1000, latency: float | None = None) -> dict:
    return {"name": name, "params": params, "flops": flops, "latency_ms": latency, "accuracy": accuracy, "layers": []}


def test_compare_lists_each_runs_final_step_with_deltas_and_the_frontier(runs):
    done = run_cli("compare", str(runs), "--csv", "out/grid.csv", "--md", "out/grid.md", cwd=runs.parent)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert "demo-p1" in table and "demo-a2" in table
    assert any(line.lstrip().startswith(("1* ", "2* ")) for line in table.splitlines())  # the frontier starred
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((runs.parent / "out" / "grid.csv").read_text()))}
    assert set(rows) == {"demo-p1", "demo-a2"}
    finals = {name: _final(runs / name) for name in rows}
    for name, row in rows.items():
        base, last = finals[name]
        assert (row["step"], int(row["params"]), int(row["flops"])) == (last["name"], last["params"], last["flops"])
        assert float(row["delta_accuracy"]) == pytest.approx(last["accuracy"] - base["accuracy"])
        assert float(row["flops_ratio"]) == pytest.approx(base["flops"] / last["flops"])
        assert f"{last['flops']:,}" in table  # the plain table (stdout is not a terminal) prints full counts
    p1, a2 = finals["demo-p1"][1], finals["demo-a2"][1]

    def dominates(x: dict, y: dict) -> bool:
        return x["flops"] <= y["flops"] and x["accuracy"] >= y["accuracy"] and x != y

    assert rows["demo-p1"]["frontier"] == str(int(not dominates(a2, p1)))
    assert rows["demo-a2"]["frontier"] == str(int(not dominates(p1, a2)))
    md = (runs.parent / "out" / "grid.md").read_text()
    assert md.count("| demo-") == 2 and "MFLOPs" in table  # the scatter's axis


def test_compare_sorts_and_reads_a_run_still_going(runs, tmp_path):
    base, last = _final(runs / "demo-a2")
    going = _write_run(tmp_path / "going", [], state="running", report=False)
    measured = [base, {**last, "name": "decomposed"}]
    tuned = {**last, "name": "finetune:ce", "accuracy": 0.97, "flops": last["flops"]}
    events = [{"event": "steps", "steps": measured}, {"event": "step", "loss": 1.0},
              {"event": "steps", "steps": [*measured, tuned]}]
    (going / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "st')
    rows = compare([runs, going], sort="accuracy")
    assert rows[0].run == "going" and rows[0].state == "running" and rows[0].step == "finetune:ce"
    assert [r.accuracy for r in rows] == sorted((r.accuracy for r in rows), reverse=True)
    assert [r.run for r in compare([runs, going], sort="run")] == ["demo-a2", "demo-p1", "going"]
    assert rows[0].frontier and not any(r.frontier for r in rows[1:] if r.flops >= rows[0].flops)


def test_a_dead_running_run_is_interrupted_and_an_empty_one_skipped(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _write_run(tmp_path / "dead", [_step("baseline", 100, 0.9), _step("pruned", 50, 0.8)], "running", child.pid,
               report=False)
    (tmp_path / "dead" / "metrics.jsonl").write_text(json.dumps(
        {"event": "steps", "steps": [_step("baseline", 100, 0.9), _step("pruned", 50, 0.8)]}) + "\n")
    _write_run(tmp_path / "empty", [], "running", report=False)
    rows = compare([tmp_path])
    assert [(r.run, r.state, r.step) for r in rows] == [("dead", "interrupted", "pruned")]
    assert rows[0].delta == pytest.approx(-0.1) and rows[0].ratio("flops") == 2.0


def test_pareto_frontier_by_hand():
    assert pareto([1, 2, 3, 4], [0.5, 0.6, 0.55, 0.9]) == [True, True, False, True]
    assert pareto([2, 2, 1], [0.7, 0.7, 0.6]) == [True, True, True]      # equal points dominate neither
    assert pareto([2, 2], [0.7, 0.8]) == [False, True]                   # same cost, more accurate
    assert pareto([1, None, 3], [0.5, 0.99, None]) == [True, False, False]  # unmeasured: never on it


def test_frontier_by_latency_leaves_out_runs_without_latency(tmp_path):
    _write_run(tmp_path / "a", [_step("baseline", 100, 0.9, latency=2.0), _step("pruned", 50, 0.85, latency=1.0)])
    _write_run(tmp_path / "b", [_step("baseline", 100, 0.9, latency=2.0), _step("pruned", 40, 0.88, latency=1.5)])
    _write_run(tmp_path / "c", [_step("baseline", 100, 0.9), _step("pruned", 30, 0.95)])
    by_flops = {r.run: r.frontier for r in compare([tmp_path], by="flops")}
    by_latency = {r.run: r.frontier for r in compare([tmp_path], by="latency")}
    assert by_flops == {"a": False, "b": False, "c": True}
    assert by_latency == {"a": True, "b": True, "c": False}
    assert [r.run for r in compare([tmp_path], by="latency")] == ["a", "b", "c"]  # sorted by latency, none last


@pytest.mark.parametrize("args, message", [
    (["missing"], "missing does not exist"),
    (["empty"], "empty holds no run"),
    (["runs", "--sort", "speed"], "--sort speed: use one of"),
    (["runs", "--by", "params"], "--by params: use one of"),
    (["nothing"], "none of these runs has measured a step yet"),
])
def test_bad_compare_input_is_one_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    _write_run(tmp_path / "runs" / "a", [_step("baseline", 100, 0.9)])
    _write_run(tmp_path / "nothing", [], "running", report=False)
    done = run_cli("compare", *args, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_find_runs_takes_runs_and_folders_once(runs):
    assert [p.name for p in find_runs([runs, runs / "demo-p1"])] == ["demo-a2", "demo-p1"]
    with pytest.raises(WorkbenchError, match="is not a folder"):
        find_runs([runs / "demo-p1" / "report.json"])


def test_values_a_report_does_not_measure_show_as_missing(tmp_path):
    _write_run(tmp_path / "odd", [_step("baseline", 100, 0.9), {**_step("pruned", 50, 0.8), "params": "many",
                                                                "accuracy": True}])
    _write_run(tmp_path / "fine", [_step("baseline", 100, 0.9), _step("pruned", 60, 0.85)])
    done = run_cli("compare", str(tmp_path), "--sort", "params", "--no-plot")
    assert done.returncode == 0, done.stderr
    odd = next(line for line in done.stdout.splitlines() if " odd " in line)
    assert odd.split()[:5] == ["2", "odd", "done", "pruned", "-"]  # sorted last, nothing invented
