"""Shared fixtures: paths to ../shared and small real inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seed-checkpoints"


@pytest.fixture(scope="session")
def seeds() -> Path:
    """The reference checkpoints in ../shared/seed-checkpoints (CI lays shared/ beside the clone)."""
    if not SEEDS.is_dir():
        pytest.fail(f"{SEEDS} is missing: the tests need ../shared beside the repository")
    return SEEDS
