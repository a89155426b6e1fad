"""The real configuration rehearsed on CPU: torchrun with two gloo processes trains the real PaSST architecture
(random weights, structured patchout) with a RoBERTa loaded from a local folder that has the hub model's pooler,
on clips of Clotho-like lengths (12-25 s: two or three 10 s segments); the run then embeds and evaluates."""

import json

import pandas
import pytest
import torch

from dcase_t6.data.layout import Layout
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.models import RETIRED_PARAMETERS
from dcase_t6.runs.model import load_model
from dcase_t6.runs.registry import Registry
from helpers.cli import run_dcase_process


@pytest.mark.slow
def test_torchrun_trains_passt_with_roberta_that_has_a_pooler_then_embeds_and_evaluates(roberta_with_pooler,
                                                                                         tmp_path):
    root, workdir = tmp_path / "data", tmp_path / "work"
    prepare_synthetic(Layout.at(root), SyntheticConfig(development=3, validation=2, evaluation=2, min_duration=12.0,
                                                       max_duration=25.0))
    trained = run_dcase_process(workdir, "train", "--data-root", str(root), "--datasets", "synthetic", "--backbone",
                                "passt", "--audio-weights", "random", "--text-model", str(roberta_with_pooler),
                                "--epochs", "1", "--batch-size", "4", "--json", processes=2)
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads(trained.stdout)
    assert summary["status"] == "finished" and summary["step"] == 4  # 15 pairs in global batches of 4

    registry = Registry(workdir)
    run = registry.run(summary["run"])
    assert run.status == "finished" and run.config["model"]["patchout_t"] == 15
    best = registry.file(summary["run"], "checkpoint", "best")
    weights = torch.load(best.path, weights_only=True)["model"]
    assert not [key for key in weights if key.startswith(RETIRED_PARAMETERS)]
    model = load_model(registry, summary["run"]).model
    assert not [name for name, _ in model.named_parameters() if name.startswith(RETIRED_PARAMETERS)]
    assert best.info["parameters"] == model.parameter_count()

    embedded = run_dcase_process(workdir, "embed", summary["run"], "--data-root", str(root), "--dataset", "synthetic",
                                 "--json")
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    assert json.loads(embedded.stdout)["checkpoint"] == "best"
    relevance = Layout.at(root).relevance_file("synthetic")
    evaluated = run_dcase_process(workdir, "evaluate", "-p", f"{summary['run']}:synthetic/development-testing", "-r",
                                  str(relevance), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scores = json.loads(evaluated.stdout)
    assert scores["n_queries"] == len(pandas.read_csv(relevance)) and 0.0 < scores["mAP@16"] <= 1.0
