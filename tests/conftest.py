"""Shared fixtures: the real organiser files shipped as test data, tiny synthetic datasets."""

import socket
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


def save_roberta_with_pooler(folder: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A RoBERTa saved with ``save_pretrained`` as the hub's roberta-large loads: ``RobertaModel`` with its
    pooler, a byte-level BPE ``RobertaTokenizerFast`` (trained here on a few captions), hub dropouts of 0.1.
    Only the sizes are small."""
    from dcase_t6.models.text import save_random_roberta

    captions = ["a dog barks in the distance", "rain falls on a metal roof", "a bell rings twice",
                "wind blows through the trees", "people talk in a busy hall", "a car passes by quickly"] * 4
    return save_random_roberta(folder, captions, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                               intermediate_size=2 * hidden, max_position_embeddings=66)


@pytest.fixture(scope="session")
def roberta_with_pooler(tmp_path_factory) -> Path:
    return save_roberta_with_pooler(tmp_path_factory.mktemp("roberta-with-pooler"))


def cli_error(workdir: Path, *args) -> str:
    """Run ``dcase-t6 --workdir WORKDIR ARGS...``; it must exit 2 with one ``error:`` line, which is returned."""
    from click.testing import CliRunner

    from dcase_t6.cli import main

    result = CliRunner().invoke(main, ["--workdir", str(workdir), *[str(arg) for arg in args]])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for torch.distributed rendezvous in tests)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


HOSTILE_PREFIX = "tests/test_hostile_"


def pytest_terminal_summary(terminalreporter):
    """Say how many hostile-input and fault cases ran and how many held (the README's reliability count)."""
    reports = [report for outcome in ("passed", "failed") for report in terminalreporter.stats.get(outcome, [])
               if report.when == "call" and report.nodeid.startswith(HOSTILE_PREFIX)]
    if reports:
        held = sum(report.passed for report in reports)
        terminalreporter.write_line(f"hostile inputs and faults: {len(reports)} cases tried, {held} held")
