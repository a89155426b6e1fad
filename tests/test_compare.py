"""`runs compare`: one table of the metrics and the config keys that differ, a PNG of the curves, `--json`; the
draft report's training curves."""

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from pypdf import PdfReader

from dcase_t6.cli import main
from dcase_t6.data.layout import Layout
from dcase_t6.embedding.checkpoints import SplitRequest, embed_run
from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training

DEV_TEST = "development-testing"


@pytest.fixture(scope="module")
def two_runs(tiny_training, tmp_path_factory) -> dict:
    """Two runs that differ in seed and lr; only the first embedded dev-test."""
    workdir = tmp_path_factory.mktemp("compare")
    first = training.train_new(workdir, build_config(None, {**tiny_training, "epochs": 2, "name": "a"})).run
    second = training.train_new(workdir, build_config(None, {**tiny_training, "epochs": 2, "name": "b", "seed": 1,
                                                             "lr": 5e-4})).run
    embed_run(workdir, first, SplitRequest(tiny_training["data_root"], "synthetic", DEV_TEST, batch_size=4))
    return {"workdir": workdir, "runs": [first, second], "data_root": tiny_training["data_root"]}


def invoke(workdir: Path, *args):
    return CliRunner().invoke(main, ["--workdir", str(workdir), *[str(arg) for arg in args]])


def test_json_has_the_differing_keys_best_epochs_validation_and_dev_test(two_runs, tmp_path):
    workdir, (first, second) = two_runs["workdir"], two_runs["runs"]
    result = invoke(workdir, "runs", "compare", first, second, "--json")
    assert result.exit_code == 0, result.output
    compared = json.loads(result.output)
    assert compared["differing"] == {"lr": [0.001, 0.0005], "seed": [0, 1]}  # the name aside
    registry = Registry(workdir)
    for summary, run_id in zip(compared["runs"], (first, second)):
        epochs = registry.run(run_id).epochs
        best = max(epochs, key=lambda epoch: epoch["mAP@10"])  # first of equal values, as training keeps it
        assert summary["run"] == run_id and summary["epochs"] == 2 and summary["status"] == "finished"
        assert summary["best_epoch"] == best["epoch"] + 1
        assert registry.file(run_id, "checkpoint", "best").info["epoch"] == best["epoch"] + 1
        assert summary["validation"] == {key: best[key] for key in ("R@1", "R@10", "mAP@10", "mAP@16")}
    relevance = Layout.at(two_runs["data_root"]).relevance_file("synthetic")
    evaluated = invoke(workdir, "evaluate", "-p", f"{first}:synthetic/{DEV_TEST}", "-r", relevance, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    expected = json.loads(evaluated.output)
    dev_test = compared["runs"][0]["dev_test"]
    assert dev_test["scores"] == {key: expected[key] for key in ("R@1", "R@5", "R@10", "mAP@10", "mAP@16")}
    assert dev_test["n_queries"] == expected["n_queries"] and dev_test["ground_truth"] == str(relevance)
    assert compared["runs"][1]["dev_test"] is None and "not embedded" in compared["runs"][1]["dev_test_note"]


def test_the_table_and_the_png_of_the_curves(two_runs, tmp_path):
    workdir, (first, second) = two_runs["workdir"], two_runs["runs"]
    png = tmp_path / "curves.png"
    result = invoke(workdir, "runs", "compare", first, second, "--plot", png)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert first in lines[1] and second in lines[1]
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in lines if line.startswith("│")}
    assert rows["seed"] == ["0", "1"] and rows["lr"] == ["0.0010", "0.0005"]
    assert rows["status"] == ["finished", "finished"] and rows["epochs"] == ["2/2", "2/2"]
    assert rows["dev-test mAP@16"][1] == "-" and rows["dev-test mAP@16"][0] != "-"
    registry = Registry(workdir)
    best = max(registry.run(first).epochs, key=lambda epoch: epoch["mAP@10"])
    assert rows["validation mAP@10"][0] == f"{best['mAP@10']:.4f}"
    assert any(line.startswith(f"{first}: dev-test = synthetic") for line in lines)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 2 * image.size[1]  # three panels side by side


def test_compare_refuses_a_run_named_twice_and_unknown_runs(two_runs):
    workdir, (first, _) = two_runs["workdir"], two_runs["runs"]
    twice = invoke(workdir, "runs", "compare", first, first[:3])
    assert twice.exit_code == 2 and f"run {first} is named twice" in twice.output
    unknown = invoke(workdir, "runs", "compare", first, "nope")
    assert unknown.exit_code == 2 and "no run match 'nope'" in unknown.output


def test_a_missing_ground_truth_is_a_note_not_a_failure(two_runs, tmp_path):
    workdir, (first, second) = two_runs["workdir"], two_runs["runs"]
    result = invoke(workdir, "runs", "compare", first, second, "--data-root", tmp_path / "elsewhere", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["runs"][0]
    assert summary["dev_test"] is None and "no ground truth under" in summary["dev_test_note"]


def test_the_draft_report_draws_the_runs_training_curves(two_runs, tmp_path):
    from dcase_t6.sharing.history import RunHistory
    from helpers.submission import make_system

    registry = Registry(two_runs["workdir"])
    histories = tuple(RunHistory.of(registry.run(run_id)) for run_id in two_runs["runs"])
    system = make_system(tmp_path, 1)
    common = ["package", "-l", system.label, "-p", system.predictions, "-m", system.meta]
    with_curves, without = tmp_path / "curves.pdf", tmp_path / "plain.pdf"
    built = invoke(two_runs["workdir"], *common, "--draft-report", with_curves, "--runs", ",".join(two_runs["runs"]),
                   "--out", tmp_path / "a.zip")
    assert built.exit_code == 0, built.output
    assert invoke(two_runs["workdir"], *common, "--draft-report", without, "--out", tmp_path / "b.zip").exit_code == 0
    reader = PdfReader(io.BytesIO(with_curves.read_bytes()))
    text = " ".join(" ".join(page.extract_text().split()) for page in reader.pages)
    images = sum(len(page.images) for page in reader.pages)
    assert "Training" in text and "Figure 2: training curves" in text
    for history in histories:
        best = history.best
        assert f"{history.run_id} 2/2 {history.best_epoch} (mAP@10) {best['mAP@10']:.4f} {best['mAP@16']:.4f}" in text
    plain = PdfReader(io.BytesIO(without.read_bytes()))
    assert images == sum(len(page.images) for page in plain.pages) + 1
    assert "Figure 2" not in " ".join(page.extract_text() for page in plain.pages)


def test_audio_to_text_rows_come_from_the_validation_records_and_the_dev_test_matrix(two_runs):
    workdir, (first, second) = two_runs["workdir"], two_runs["runs"]
    compared = json.loads(invoke(workdir, "runs", "compare", first, second, "--json").output)
    best = max(Registry(workdir).run(first).epochs, key=lambda epoch: epoch["mAP@10"])
    keys = ("R@1", "R@10", "mAP@10", "mAP@16")
    assert compared["runs"][0]["validation_audio_to_text"] == {key: best[f"a2t/{key}"] for key in keys}
    assert all(0.0 <= best[f"a2t/{key}"] <= 1.0 for key in keys)
    relevance = Layout.at(two_runs["data_root"]).relevance_file("synthetic")
    evaluated = invoke(workdir, "evaluate", "-p", f"{first}:synthetic/{DEV_TEST}", "-r", relevance, "--json")
    expected = json.loads(evaluated.output)["audio_to_text"]
    assert compared["runs"][0]["dev_test"]["audio_to_text"] == {
        key: expected[key] for key in ("R@1", "R@5", "R@10", "mAP@10", "mAP@16")}
    table = invoke(workdir, "runs", "compare", first, second)
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in table.output.splitlines() if line.startswith("│")}
    shown = lambda value: f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"  # noqa: E731
    assert rows["validation a2t/mAP@16"][0] == shown(best["a2t/mAP@16"])
    assert rows["dev-test a2t/mAP@16"] == [shown(expected["mAP@16"]), "-"]
