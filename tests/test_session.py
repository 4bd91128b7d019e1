"""Session files: schema, one-line errors naming the key, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import WorkbenchError
from core.overview import Target
from core.session import PruneSection, Session, dump_session, load_session, parse_session

SESSIONS = sorted((Path(__file__).resolve().parents[1] / "sessions").glob("*.toml"))

GOOD = """
version = 1
[model]
name = "demo"
[prune]
strategy = "P1"
[prune.layers."layer1.0.conv1"]
ratio = 0.5
"""


def test_examples_parse():
    sessions = [load_session(p) for p in SESSIONS]
    assert {s.prune.strategy for s in sessions if s.prune} >= {"P1", "P2", "P3", "P4", "P5", "manual"}
    assert {s.decompose.method for s in sessions if s.decompose} == {"tucker2", "cp3"}
    assert any(s.prune and s.decompose for s in sessions)  # A3


def test_round_trip_keeps_every_choice():
    session = parse_session(GOOD)
    again = parse_session(dump_session(session))
    assert again == session
    assert again.prune.layers["layer1.0.conv1"].ratio == 0.5


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace('strategy = "P1"', 'strategy = "P1"\ncolour = 1'), "prune.colour: unknown key"),
    (GOOD.replace("ratio = 0.5", "ratio = 1.2"), "prune.layers.layer1.0.conv1.ratio: Input should be less than 1"),
    (GOOD.replace("ratio = 0.5", "ratio = -0.1"), "ratio: Input should be greater than or equal to 0"),
    (GOOD.replace("ratio = 0.5", 'ratio = "half"'), "ratio: Input should be a valid number"),
    (GOOD.replace("ratio = 0.5", "ratio = 0.5\nkeep = 3"), "give exactly one of ratio or keep"),
    (GOOD.replace('strategy = "P1"', 'strategy = "P9"'), "prune.strategy: Input should be"),
    (GOOD.replace('strategy = "P1"', 'strategy = "P5"'), "P5 needs variant"),
    (GOOD.replace('name = "demo"', 'name = 5'), "model.name: Input should be a valid string"),
    (GOOD.replace("version = 1", "version = 7"), "session version 7 is newer"),
    (GOOD.replace('strategy = "P1"', 'strategy = "P1"\ntmin = 0.9\ntmax = 0.8'), "tmax (0.8) must be above tmin (0.9)"),
    ("[model\n", "not valid TOML"),
])
def test_bad_sessions_are_one_line(text, expected):
    with pytest.raises(WorkbenchError) as info:
        parse_session(text, "s.toml")
    message = str(info.value)
    assert message.startswith("s.toml: ") and "\n" not in message
    assert expected in message


def test_paths_resolve_against_the_session_folder(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "m.pth").write_bytes(b"x")
    session = parse_session('[model]\ncheckpoint = "ck/m.pth"\n[data]\nspec = "cifar10:data"\n')
    resolved = session.resolved(tmp_path)
    assert resolved.model.checkpoint == str(tmp_path / "ck" / "m.pth")
    assert resolved.data.spec == f"cifar10:{tmp_path / 'data'}"
    with pytest.raises(WorkbenchError, match="model.checkpoint: .* does not exist"):
        session.resolved(tmp_path / "elsewhere").target()


def test_from_target_round_trip(tmp_path):
    ck = tmp_path / "w.safetensors"
    ck.write_bytes(b"x")
    session = Session.from_target(Target(model="resnet20", checkpoint=ck, data="demo"),
                                  PruneSection(strategy="P4", percent=0.2))
    again = parse_session(dump_session(session))
    assert again.model.checkpoint == str(ck) and again.data.spec == "demo" and again.prune.percent == 0.2
