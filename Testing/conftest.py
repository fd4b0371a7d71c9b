"""Shared fixtures of the test suite."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """Resources/SampleData: the small real images shipped with the repository."""
    return REPO / "Resources" / "SampleData"
