"""Shared fixtures: paths to ../shared and small real inputs.

The suite runs in parallel (pytest-xdist, see pyproject's addopts): each worker, and every
process a test starts, uses one torch thread, so the workers do not collapse each other's
thread pools on a small machine."""

from __future__ import annotations

import os
import sys

os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported, and inherited by subprocesses
os.environ["MKL_NUM_THREADS"] = "1"
# Keep compiled modules (.pyc) even where the environment sets PYTHONDONTWRITEBYTECODE (this
# project's machines do): otherwise each of the suite's processes compiles the project again.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seed-checkpoints"


@pytest.fixture(scope="session")
def seeds() -> Path:
    """The reference checkpoints in ../shared/seed-checkpoints (CI lays shared/ beside the clone)."""
    if not SEEDS.is_dir():
        pytest.fail(f"{SEEDS} is missing: the tests need ../shared beside the repository")
    return SEEDS


@pytest.fixture
def clock(monkeypatch):
    """core.layer_times times on the synthetic clock (tests/latency_clock.py), which counts its calls."""
    from core import layer_times
    from tests.latency_clock import Clock

    fake = Clock()
    monkeypatch.setattr(layer_times, "compare_latency", fake)
    return fake


@pytest.fixture(autouse=True)
def _no_timing_cache(monkeypatch):
    """Every latency table is timed afresh (core.timing_cache off), here and in the processes a
    test starts; the cache's own tests turn it on in a folder of their own."""
    monkeypatch.setenv("WORKBENCH_TIMING_CACHE", "off")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Code under test may set torch's thread count (the app, `--threads`): restore one."""
    yield
    torch.set_num_threads(1)
