"""The demo configuration learns: trained on the synthetic data, it beats chance mAP@16 by a clear margin."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.data.layout import Layout
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import read_relevance_file
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_matrix

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "demo-train.yaml"


def chance_map16(truth, files: list[str], repeats: int = 200) -> float:
    """Mean mAP@16 of random rankings of ``files`` for the queries of ``truth``."""
    rng = np.random.default_rng(0)
    return float(np.mean([evaluate(SimilarityMatrix(truth.queries, files, rng.random((len(truth.queries), len(files)))),
                                   truth).scores["mAP@16"] for _ in range(repeats)]))


@pytest.mark.slow
def test_the_demo_configuration_beats_chance_by_a_clear_margin(tmp_path):
    root, workdir = tmp_path / "data", tmp_path / "work"
    prepare_synthetic(Layout.at(root), SyntheticConfig(development=60, validation=20, evaluation=40))
    runner = CliRunner()
    trained = runner.invoke(main, ["--workdir", str(workdir), "train", "--config", str(DEMO_CONFIG), "--data-root",
                                   str(root), "--json"])
    assert trained.exit_code == 0, trained.output
    run = json.loads(trained.stdout)["run"]
    embedded = runner.invoke(main, ["--workdir", str(workdir), "embed", run, "--data-root", str(root), "--dataset",
                                    "synthetic", "--json"])
    assert embedded.exit_code == 0, embedded.output
    relevance = Layout.at(root).relevance_file("synthetic")
    matrix = f"{run}:synthetic/development-testing"
    evaluated = runner.invoke(main, ["--workdir", str(workdir), "evaluate", "-p", matrix, "-r", str(relevance),
                                     "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    trained_map = json.loads(evaluated.stdout)["mAP@16"]
    chance = chance_map16(read_relevance_file(relevance), read_matrix(json.loads(embedded.stdout)["similarity"]).files)
    print(f"demo configuration: mAP@16 {trained_map:.3f}, chance {chance:.3f}")
    assert chance < 0.2 and trained_map > chance + 0.4, (trained_map, chance)
