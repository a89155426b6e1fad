"""Shared fixtures: the real organiser files shipped as test data, tiny synthetic datasets."""

from pathlib import Path

import pytest

TEST_DATA = Path(__file__).resolve().parent / "data"
# The organisers' Clotho dev-test multi-relevance file (public; 1037 queries), as distributed.
DEVTEST_RELEVANCE = TEST_DATA / "clotho-devtest-relevance-metadata_eval.csv"


@pytest.fixture
def devtest_relevance_file() -> Path:
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
