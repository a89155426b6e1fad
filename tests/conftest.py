"""Shared fixtures: paths to the real organiser files beside the repository."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def devtest_relevance_file() -> Path:
    path = SHARED_DATA / "clotho-devtest-relevance-metadata_eval.csv"
    if not path.is_file():
        pytest.skip(f"{path} is not present beside this checkout")
    return path
