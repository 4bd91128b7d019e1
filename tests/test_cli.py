"""The `workbench` command as a user runs it: real files, run in-process (`run_cli`): the same
exit code, stdout and stderr, without a new interpreter per command."""

from __future__ import annotations

import json
import subprocess

import pytest

from core.measure import count_flops, count_params
from core.models.checkpoint import load_model
from tests.cli_runner import run_cli
from tests.test_checkpoint import save_user_net

run = run_cli


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error: ")
    for word in words:
        assert word in result.stderr


def test_inspect_demo_json(tmp_path):
    out = tmp_path / "stats.json"
    result = run("inspect", "--model", "demo", "--data", "demo", "--json", str(out), "--no-latency")
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    model = load_model("demo").model
    assert doc["params"] == count_params(model)
    assert doc["flops"] == count_flops(model, (1, 8, 8))
    assert [layer["name"] for layer in doc["layers"]] == [n for n, m in model.named_modules()
                                                          if isinstance(m, __import__("torch").nn.Conv2d)]
    assert doc["layers"][0]["shape"] == [16, 1, 3, 3]
    assert 0.9 < doc["accuracy"] <= 1.0
    assert set(doc["t_range"]) == {"P1", "P2", "P3"}
    # the rich table names every layer and the totals line gives the exact parameter count
    assert "layer3.2.conv2" in result.stdout and f"params {doc['params']:,}" in result.stdout


def test_inspect_reference_checkpoint(tmp_path, seeds):
    out = tmp_path / "norm.json"
    result = run("inspect", "--checkpoint", str(seeds / "res56_norm.pth.tar"), "--json", str(out), "--no-latency")
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["params"] == 665_470
    assert len(doc["layers"]) == 55
    assert doc["layers"][1]["shape"] == [12, 16, 3, 3]  # first block pruned to cfg[0] = 12
    assert doc["latency_ms"] is None and doc["accuracy"] is None


@pytest.mark.parametrize("args, words", [
    (("inspect", "--checkpoint", "nope.pth"), ("nope.pth", "does not exist")),
    (("inspect", "--model", "resnet57"), ("unknown model 'resnet57'",)),
    (("inspect", "--model", "resnet20", "--input-size", "3x32"), ("--input-size",)),
    (("inspect", "--model", "demo", "--data", "/no/such/dir"), ("/no/such/dir",)),
    (("inspect",), ("--model",)),
])
def test_bad_input_is_one_line(args, words):
    assert_one_line_error(run(*args), *words)


def test_inspect_pickled_reference_model_without_flag(tmp_path, seeds):
    out = tmp_path / "cp3.json"
    result = run("inspect", "--checkpoint", str(seeds / "res56_norm_cp3_model.pth.tar"), "--json", str(out),
                 "--no-latency")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["params"] == 388_766 and "params 388,766" in result.stdout


def test_inspect_user_model_needs_trust_pickle(tmp_path, monkeypatch):
    original, path = save_user_net(tmp_path, monkeypatch)
    args = ("inspect", "--checkpoint", str(path), "--input-size", "2x9x9", "--no-latency")
    # save_user_net put tmp_path on sys.path: the class is importable, as for its user
    assert_one_line_error(run(*args), "wb_user_nets.TinyNet", "--model", "--trust-pickle")
    out = tmp_path / "user.json"
    result = run(*args, "--trust-pickle", "--json", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["model"] == "wb_user_nets:TinyNet" and doc["params"] == count_params(original)
    assert [layer["name"] for layer in doc["layers"]] == ["body"]


def test_failed_inspect_leaves_existing_json_alone(tmp_path):
    out = tmp_path / "stats.json"
    out.write_text('{"kept": true}')
    assert_one_line_error(run("inspect", "--model", "demo", "--data", str(tmp_path / "missing"), "--json", str(out)))
    assert json.loads(out.read_text()) == {"kept": True}
