"""`evaluate` end to end: ground-truth files, alignment, hand-computed scores and the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import read_captions_file, read_relevance_file
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_csv

FILES = ["a.wav", "b, c.wav", "d&#39;e.wav", "f.wav", "g.wav"]


def write_relevance(path, rows):
    frame = pd.DataFrame({"query": [q for q, _ in rows], "audio_filenames": [repr(f) for _, f in rows]})
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def two_query_case(tmp_path):
    """q1: relevant a.wav, d'e.wav at ranks 2 and 4; q2: relevant f.wav at rank 1."""
    scores = np.array([[0.9, 0.8, 0.7, 0.95, 0.1], [0.2, 0.1, 0.3, 0.9, 0.0]])
    predictions = tmp_path / "pred.csv"
    write_csv(SimilarityMatrix(["q1, comma", "q2"], FILES, scores), predictions)
    relevance = write_relevance(tmp_path / "rel.csv", [("q1, comma", ["a.wav", "d&#39;e.wav"]), ("q2", ["f.wav"])])
    return predictions, relevance


def test_cli_json_has_exactly_the_documented_keys_and_hand_values(two_query_case):
    predictions, relevance = two_query_case
    result = CliRunner().invoke(main, ["evaluate", "-p", str(predictions), "-r", str(relevance), "--json",
                                       "--direction", "t2a"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert list(payload) == ["R@1", "R@5", "R@10", "mAP@10", "mAP@16", "n_queries"]
    # q1: AP = (1/2 + 2/4)/2 = 0.5, R@1 = 0; q2: AP = 1, R@1 = 1
    assert payload == {"R@1": 0.5, "R@5": 1.0, "R@10": 1.0, "mAP@10": 0.75, "mAP@16": 0.75, "n_queries": 2}


def test_cli_per_query_file_and_confidence_intervals(two_query_case, tmp_path):
    predictions, relevance = two_query_case
    out = tmp_path / "per_query.csv"
    args = ["evaluate", "-p", str(predictions), "-r", str(relevance), "--per-query", str(out), "--ci", "--json",
            "--ci-method", "jackknife"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, keep_default_na=False)
    assert table["query"].tolist() == ["q1, comma", "q2"]
    assert table["ranks"].astype(str).tolist() == ["2 4", "1"]
    assert table["AP@16"].tolist() == [0.5, 1.0]
    low, high = json.loads(result.output)["ci95"]["mAP@16"]
    half = 1.959963984540054 * np.std([0.5, 1.0], ddof=1) / np.sqrt(2)
    assert (low, high) == (pytest.approx(0.75 - half), pytest.approx(0.75 + half))


def test_cli_table_output_and_errors(two_query_case):
    predictions, relevance = two_query_case
    result = CliRunner().invoke(main, ["evaluate", "-p", str(predictions), "-r", str(relevance)])
    assert result.exit_code == 0 and "mAP@16" in result.output and "0.7500" in result.output
    both = CliRunner().invoke(main, ["evaluate", "-p", str(predictions), "-r", str(relevance), "-c", str(relevance)])
    assert both.exit_code == 2 and "exactly one of --relevance" in both.output


def test_single_relevant_captions_setting(tmp_path):
    captions = tmp_path / "clotho_captions_evaluation.csv"
    pd.DataFrame({"file_name": ["a.wav", "b, c.wav"], "caption_1": ["x one", "y one"],
                  "caption_2": ["x two", "y two"]}).to_csv(captions, index=False)
    truth = read_captions_file(captions)
    assert truth.queries == ["x one", "x two", "y one", "y two"]
    assert truth.relevant_files == [["a.wav"], ["a.wav"], ["b, c.wav"], ["b, c.wav"]]
    # rows in a different order than the captions file; ranks 1, 2, 3 (tie, pessimistic), 1
    scores = np.array([[0.1, 0.9, 0.2], [0.5, 0.5, 0.5], [0.9, 0.1, 0.0], [0.3, 0.8, 0.9]])
    matrix = SimilarityMatrix(["y one", "x two", "x one", "x two "], ["a.wav", "b, c.wav", "z.wav"], scores)
    with pytest.raises(UserError, match="1 of 4 queries are missing"):
        evaluate(matrix, truth)
    matrix = SimilarityMatrix(["y one", "x two", "x one", "y two"], ["a.wav", "b, c.wav", "z.wav"], scores)
    result = evaluate(matrix, truth)
    assert result.per_query["ranks"].tolist() == ["1", "3", "1", "2"]
    assert result.scores["R@1"] == 0.5
    assert result.scores["mAP@10"] == pytest.approx((1 + 1 / 3 + 1 + 1 / 2) / 4)


def test_duplicate_captions_match_occurrence_by_occurrence(tmp_path):
    captions = tmp_path / "captions.csv"
    frame = pd.DataFrame({"file_name": ["a.wav", "f.wav"], "caption_1": ["same text", "same text"]})
    frame.to_csv(captions, index=False)
    scores = np.array([[1.0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0]])
    result = evaluate(SimilarityMatrix(["same text", "same text"], FILES, scores), read_captions_file(captions))
    assert result.scores["R@1"] == 1.0


def test_missing_queries_are_an_error_unless_allowed(tmp_path):
    relevance = write_relevance(tmp_path / "rel.csv", [("q1", ["a.wav"]), ("q2", ["b, c.wav"]), ("q3", ["f.wav"])])
    matrix = SimilarityMatrix(["q1", "q3"], FILES, np.eye(2, 5)[[0, 1]] + np.array([[0, 0, 0, 0, 0], [0, -1, 0, 1, 0]]))
    missing = r"1 of 3 queries are missing from the predictions, first 'q2'.*--allow-missing"
    with pytest.raises(UserError, match=missing):
        evaluate(matrix, read_relevance_file(relevance))
    result = evaluate(matrix, read_relevance_file(relevance), allow_missing=True)
    assert (result.n_queries, result.n_skipped, result.scores["R@1"]) == (2, 1, 1.0)
    payload = result.as_json(with_skipped=True)
    assert payload["n_skipped"] == 1 and payload["n_queries"] == 2


def test_relevant_file_absent_from_columns_is_named(tmp_path):
    relevance = write_relevance(tmp_path / "rel.csv", [("q1", ["a.wav", "missing one.wav"])])
    matrix = SimilarityMatrix(["q1"], FILES, np.zeros((1, 5)))
    with pytest.raises(UserError, match="lists audio file 'missing one.wav', which is not a column"):
        evaluate(matrix, read_relevance_file(relevance))


def test_duplicated_prediction_rows_with_different_scores_are_refused(tmp_path):
    relevance = write_relevance(tmp_path / "rel.csv", [("q1", ["a.wav"])])
    matrix = SimilarityMatrix(["q1", "q1"], FILES, np.array([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]]))
    with pytest.raises(UserError, match=r"query 'q1' appears 2 times with different scores \(rows 2, 3\)"):
        evaluate(matrix, read_relevance_file(relevance))


def test_identical_duplicate_rows_count_as_one_query(tmp_path):
    # a text model gives a repeated caption the same row: it is scored once per ground-truth occurrence
    relevance = write_relevance(tmp_path / "rel.csv", [("q1", ["a.wav"]), ("q2", ["f.wav"])])
    scores = np.array([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0], [1.0, 0, 0, 0, 0]])
    result = evaluate(SimilarityMatrix(["q1", "q2", "q1"], FILES, scores), read_relevance_file(relevance))
    assert result.n_queries == 2 and result.per_query["ranks"].tolist() == ["1", "5"]  # f.wav ties at 0: rank 5


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("query,audio_filenames\nq1,not a list\n", "row 2: 'audio_filenames' is 'not a list'"),
        ("query,audio_filenames\nq1,[]\n", "expected a non-empty list"),
        ("query,audio_filenames\nq1,\"['a.wav', 'a.wav']\"\n", "lists a file twice"),
        ("query,audio_filenames\nq1,\"['a.wav']\"\nq1,\"['b.wav']\"\n", "rows 2 and 3 repeat the query 'q1'"),
        ("query,files\nq1,\"['a.wav']\"\n", "missing column(s) ['audio_filenames']"),
        ("query,audio_filenames\n ,\"['a.wav']\"\n", "row 2: empty 'query'"),
    ],
)
def test_malformed_relevance_files(tmp_path, rows, expected):
    path = tmp_path / "rel.csv"
    path.write_text(rows, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        read_relevance_file(path)
    assert expected in str(caught.value) and "rel.csv" in str(caught.value)


def test_empty_caption_is_named(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text("file_name,caption_1,caption_2\na.wav,hello,\n", encoding="utf-8")
    with pytest.raises(UserError, match="row 2, column 'caption_2' is empty"):
        read_captions_file(path)


def test_real_devtest_relevance_file_oracle_and_constant_scores(devtest_relevance_file):
    truth = read_relevance_file(devtest_relevance_file)
    counts = [len(files) for files in truth.relevant_files]
    assert (len(truth.queries), min(counts), max(counts), round(float(np.mean(counts)), 2)) == (1037, 1, 12, 3.0)
    files = sorted({name for names in truth.relevant_files for name in names})
    column = {name: i for i, name in enumerate(files)}
    oracle = np.zeros((len(truth.queries), len(files)))
    for row, names in enumerate(truth.relevant_files):
        oracle[row, [column[name] for name in names]] = 1.0
    perfect = evaluate(SimilarityMatrix(truth.queries, files, oracle), truth)
    assert perfect.scores["mAP@16"] == 1.0 and perfect.scores["R@10"] < 1.0  # 12 relevant cannot fit in 10
    constant = evaluate(SimilarityMatrix(truth.queries, files, np.zeros_like(oracle)), truth)
    assert constant.scores["mAP@16"] == 0.0 and constant.scores["R@10"] == 0.0
