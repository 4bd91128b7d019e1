"""Latency where the model will run (core/measure.py): device and batch sizes, interleaved models,
the spread warning, the [measure] session keys and --device/--batch-sizes/--threads, report.json
fields per device and batch; the thread count from the free cores (core/threads.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from core import threads
from core.errors import WorkbenchError
from core.measure import Latency, compare_latency, latency_warning, parse_batch_sizes, parse_device
from core.models.checkpoint import load_model
from core.pipeline import replay
from core.session import MeasureSection, measure_override, parse_session
from tests.cli_runner import run_cli

SESSIONS = Path(__file__).resolve().parents[1] / "sessions"


def test_each_model_at_each_batch_size_leaves_the_models_alone():
    demo = load_model("demo").model
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    measured = compare_latency({"demo": demo, "other": other}, (1, 8, 8), (1, 3), repeats=4)
    for lats in measured.values():
        assert [(lat.batch, lat.device, lat.repeats) for lat in lats] == [(1, "cpu", 4), (3, "cpu", 4)]
        assert all(0 < lat.min_ms <= lat.median_ms and lat.iqr_ms >= 0 for lat in lats)
        assert all(isinstance(lat.channels_last, bool) for lat in lats)
    # the channels-last variant is a copy: the caller's weights keep their layout (safetensors needs it)
    assert all(p.is_contiguous() for p in demo.parameters())
    assert list(measured["demo"][1].as_dict()) == ["device", "batch", "median_ms", "iqr_ms", "min_ms", "repeats",
                                                   "channels_last", "noisy", "rounds_ms"]
    assert len(measured["demo"][1].as_dict()["rounds_ms"]) == 4   # for ratios taken round by round


def test_models_run_at_the_configured_thread_count_and_only_the_calls_asked_for():
    """Latency is measured with torch's intra-op threads as set (--threads, [measure] threads),
    not torch.utils.benchmark's default of one; and a model slower than a block runs, after the
    warm-up, one call for the per-call estimate and one timed call a round, plus one untimed call
    before each block that follows another model's (a ResNet-56 mostly of 1-channel convs timed
    0.98 of the original cold and 0.63-0.68 warm) and before the first round; not Timer.timeit's
    two before every block, which made a budget's whole-model timings cost 3 calls per timed one."""
    seen = []

    class Probe(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            seen.append((self.name, torch.get_num_threads()))
            return x

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        compare_latency({"alone": Probe("alone")}, (4,), (1,), warmup=2, repeats=4, block_s=0.0)
        assert {threads for _, threads in seen} == {3} and torch.get_num_threads() == 3
        assert len(seen) == 2 + 1 + 1 + 4  # warm-up, estimate, the first round's warm call, 4 rounds
        seen.clear()
        compare_latency({"a": Probe("a"), "b": Probe("b")}, (4,), (1,), warmup=2, repeats=4, block_s=0.0)
        assert [name for name, _ in seen].count("a") == [name for name, _ in seen].count("b") == 2 + 1 + 2 * 4
    finally:
        torch.set_num_threads(before)


def test_a_memory_format_can_be_fixed_and_the_table_uses_the_models(monkeypatch):
    import core.layer_times
    from core.layer_times import LatencyTable

    demo = load_model("demo").model
    for fixed in (True, False):
        lat = compare_latency({"demo": demo}, (1, 8, 8), (2,), repeats=2, channels_last=fixed)["demo"][0]
        assert lat.channels_last is fixed
    assert all(p.is_contiguous() for p in demo.parameters())
    seen = []

    def spy(models, shape, batches, device, **kw):
        seen.append(kw.get("channels_last"))
        return compare_latency(models, shape, batches, device, **kw)

    monkeypatch.setattr(core.layer_times, "compare_latency", spy)
    table = LatencyTable(demo, (1, 8, 8))
    table.layer_ms(next(iter(table.layers)), exact=True)
    # the whole model is timed in each format, then the layer point in the faster one only
    assert seen == [False, True, table.channels_last()] and isinstance(table.channels_last(), bool)


def test_one_slow_block_does_not_pick_the_slower_memory_format(monkeypatch):
    """The format a model is timed in is the faster by the best of several alternating blocks: a
    busy moment during channels-last's first block (5 ms against its usual 1 ms) does not send the
    model to contiguous (2 ms)."""
    from torch.utils import benchmark

    class Scripted:
        def __init__(self, stmt, globals):
            self.last = not globals["x"].is_contiguous()
            self.calls = 0

        def _timeit(self, number):
            self.calls += 1   # 1: warm-up, 2: the per-call estimate, 3 on: blocks
            return number * ((5.0 if self.calls == 3 else 1.0) if self.last else 2.0)

    monkeypatch.setattr(benchmark, "Timer", Scripted)
    model = nn.Sequential(nn.Conv2d(2, 2, 3))
    lat = compare_latency({"m": model}, (2, 8, 8), (1,), repeats=3)["m"][0]
    assert lat.channels_last is True and lat.median_ms == 1000.0


def test_spread_warning_names_what_is_untrustworthy():
    steady = Latency(10.0, 9.9, 15, 1, "cpu", iqr_ms=0.5)
    shaky = Latency(10.0, 6.0, 15, 64, "cpu", iqr_ms=3.0)
    assert not steady.noisy and shaky.noisy and shaky.spread == pytest.approx(0.3)
    assert latency_warning({"baseline": [steady]}) is None
    warning = latency_warning({"baseline": [steady, shaky], "pruned": [steady]})
    assert "baseline cpu batch 64 (30%)" in warning and "batch 1" not in warning


def test_device_and_batch_sizes_are_checked():
    assert parse_batch_sizes("1,64,1") == (1, 64)
    assert parse_device("cpu") == torch.device("cpu")
    for bad in ("0,4", "1,x", ""):
        with pytest.raises(WorkbenchError, match="positive integers"):
            parse_batch_sizes(bad)
    with pytest.raises(WorkbenchError, match="cpu, cuda or cuda:N"):
        parse_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(WorkbenchError, match="0 CUDA device"):
            parse_device("cuda:0")


def test_measure_section_and_command_line_override():
    s = parse_session('[model]\nname = "demo"\n[measure]\ndevice = "cuda:1"\nbatch_sizes = [1, 64]\n')
    assert s.measure == MeasureSection(device="cuda:1", batch_sizes=[1, 64])
    merged = measure_override(s.measure, batch_sizes="8,256", threads=2)
    assert (merged.device, merged.batch_sizes, merged.threads) == ("cuda:1", [8, 256], 2)
    assert measure_override(s.measure) is s.measure and measure_override(None) is None
    for kwargs, message in ((dict(device="gpu"), "--device gpu: use cpu, cuda or cuda:N"),
                            (dict(batch_sizes="1,-2"), "--batch-sizes 1,-2: give positive integers"),
                            (dict(threads=0), "--threads 0: give a positive number")):
        with pytest.raises(WorkbenchError, match=message):
            measure_override(None, **kwargs)
    with pytest.raises(WorkbenchError, match="measure.batch_sizes"):
        parse_session('[model]\nname = "demo"\n[measure]\nbatch_sizes = []\n')


def test_report_has_latency_per_device_and_batch_size(tmp_path):
    session = tmp_path / "s.toml"
    session.write_text((SESSIONS / "demo-p1.toml").read_text() + '\n[measure]\nbatch_sizes = [1, 2]\n')
    replay(session, tmp_path / "run", measure={"batch_sizes": "2,4"})  # the command line's value wins
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["session"]["measure"]["batch_sizes"] == [2, 4]
    for step in report["steps"]:
        assert [(m["device"], m["batch"]) for m in step["latency"]] == [("cpu", 2), ("cpu", 4)]
        assert step["latency_ms"] == step["latency"][0]["median_ms"] > 0
    table = (tmp_path / "run" / "report.md").read_text()
    assert "latency ms (cpu, batch 2) | latency ms (cpu, batch 4)" in table
    assert ("warning: latency spread" in table) == ("latency_warning" in report)


def test_cli_options_exit_2_with_one_line(tmp_path):
    for args, words in ((("--device", "gpu"), "--device gpu"), (("--batch-sizes", "1,x"), "--batch-sizes 1,x"),
                        (("--threads", "0"), "--threads 0")):
        for command in (("inspect", "--model", "demo"), ("replay", str(SESSIONS / "demo-p1.toml"),
                                                         "--out", str(tmp_path / "r"))):
            result = run_cli(*command, *args)
            assert result.returncode == 2 and result.stderr.strip().splitlines() == [result.stderr.strip()]
            assert result.stderr.startswith("error: ") and words in result.stderr
    assert not (tmp_path / "r").exists()


def test_threads_from_the_free_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.free_cores("0.00 0.00 0.00 1/300 42") == 8        # only this process runs
    assert threads.free_cores("3.10 2.00 1.00 1/300 42") == 6        # two other cores busy for a minute
    assert threads.free_cores("0.20 0.10 0.10 5/300 42") == 4        # four others running right now
    assert threads.free_cores("20.0 20.0 20.0 30/300 42") == 1       # never fewer than one
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "free_cores", lambda: 3)
    assert threads.configure_threads() == 3 == torch.get_num_threads()
    assert threads.configure_threads(2) == 2 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert threads.configure_threads() == 1                           # the user's OMP_NUM_THREADS is kept
