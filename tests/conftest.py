"""Shared fixtures (the helpers several test files use are in ``tests/helpers``): the real organiser files shipped
as test data, tiny synthetic datasets, a small RoBERTa with its pooler, the `explore` test case."""

from pathlib import Path

import pytest


@pytest.fixture
def devtest_relevance_file() -> Path:
    from helpers.data import DEVTEST_RELEVANCE

    return DEVTEST_RELEVANCE


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (12 / 4 / 4 clips of 2-3 s) for training tests."""
    from dcase_t6.data.layout import Layout
    from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic

    root = tmp_path_factory.mktemp("tiny-data")
    prepare_synthetic(Layout.at(root), SyntheticConfig(development=12, validation=4, evaluation=4,
                                                        min_duration=2.0, max_duration=3.0))
    return root


@pytest.fixture(scope="session")
def tiny_training(tiny_data_root) -> dict:
    """Config overrides that train a tiny model on ``tiny_data_root`` in about a second per epoch."""
    return {"data_root": str(tiny_data_root), "datasets": "synthetic", "model.backbone": "tiny-cnn",
            "model.text_model": "tiny-random", "model.embed_dim": 16, "batch_size": 8, "epochs": 1, "lr": 1e-3,
            "audio_seconds": 2.0, "warmup_epochs": 0.5, "decay_epochs": 1.0}


@pytest.fixture(scope="session")
def roberta_with_pooler(tmp_path_factory) -> Path:
    """A RoBERTa saved as the hub's roberta-large loads (with its pooler), small sizes."""
    from helpers.models import save_roberta_with_pooler

    return save_roberta_with_pooler(tmp_path_factory.mktemp("roberta-with-pooler"))


@pytest.fixture
def case(tmp_path) -> dict:
    """The `explore` test case (``helpers.explore``): real WAVs, two matrices, relevance and captions."""
    from helpers.explore import explore_case

    return explore_case(tmp_path)


HOSTILE_PREFIX = "tests/test_hostile_"


def pytest_terminal_summary(terminalreporter):
    """Say how many hostile-input and fault cases ran and how many held (the count docs/reliability.md gives)."""
    reports = [report for outcome in ("passed", "failed") for report in terminalreporter.stats.get(outcome, [])
               if report.when == "call" and report.nodeid.startswith(HOSTILE_PREFIX)]
    if reports:
        held = sum(report.passed for report in reports)
        terminalreporter.write_line(f"hostile inputs and faults: {len(reports)} cases tried, {held} held")
