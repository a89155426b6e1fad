"""Audio to text (retrieval/directions.py) by hand, ties included, and `evaluate` with both directions, intervals
and several systems."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.assessment import AssessOptions, assess
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import Relevance, read_captions_file
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_csv
from dcase_t6.retrieval.significance import Resampling

FILES = ["a.wav", "b.wav", "c.wav", "unjudged.wav"]
QUERIES = ["q0", "q1", "q2"]
# q0 -> a; q1 -> a, b; q2 -> c. Audio to text, column by column:
#   a: q0 .9, q1 .9 (both relevant, tied), q2 .3       -> ranks 1, 2: R@1 = 1/2, AP = (1/1 + 2/2) / 2 = 1
#   b: q1 .8 relevant ties with q2 .8 irrelevant       -> rank 2 (pessimistic): R@1 = 0, AP = 1/2
#   c: q2 .7 relevant above q0 .5, q1 .2                -> rank 1: R@1 = 1, AP = 1
#   unjudged.wav: no query lists it                     -> left out
SCORES = np.array([[0.9, 0.1, 0.5, 0.99], [0.9, 0.8, 0.2, 0.99], [0.3, 0.8, 0.7, 0.99]])
RELEVANT = [["a.wav"], ["a.wav", "b.wav"], ["c.wav"]]


def truth() -> Relevance:
    return Relevance(QUERIES, RELEVANT, Path("rel.csv"))


def test_audio_to_text_by_hand_with_ties_and_a_left_out_clip():
    result = evaluate(SimilarityMatrix(QUERIES, FILES, SCORES), truth(), both_directions=True).audio_to_text
    assert (result.n_queries, result.n_left_out) == (3, 1)
    assert result.per_query["clip"].tolist() == ["a.wav", "b.wav", "c.wav"]
    assert result.per_query["ranks"].tolist() == ["1 2", "2", "1"]
    assert result.per_query["n_relevant"].tolist() == [2, 1, 1]
    assert result.scores["R@1"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert result.scores["R@5"] == 1.0
    assert result.scores["mAP@10"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    # the clip order is the ground truth's, not the matrix's: shuffled columns give the same table
    order = [3, 2, 0, 1]
    shuffled = SimilarityMatrix(QUERIES, [FILES[i] for i in order], SCORES[:, order])
    again = evaluate(shuffled, truth(), both_directions=True).audio_to_text
    assert again.per_query.equals(result.per_query) and again.scores == result.scores


def test_audio_to_text_is_text_to_audio_of_the_transposed_matrix():
    rng = np.random.default_rng(2)
    files = [f"f{i}.wav" for i in range(12)]
    queries = [f"q{i}" for i in range(30)]
    scores = rng.integers(0, 4, size=(30, 12)).astype(float)  # many ties
    relevant = [list(rng.choice(files, size=rng.integers(1, 4), replace=False)) for _ in queries]
    forward = evaluate(SimilarityMatrix(queries, files, scores), Relevance(queries, relevant, Path("r")),
                       both_directions=True).audio_to_text
    clips = list(dict.fromkeys(name for names in relevant for name in names))
    backward_truth = Relevance(clips, [[q for q, names in zip(queries, relevant) if clip in names] for clip in clips],
                               Path("t"))
    backward = evaluate(SimilarityMatrix(files, queries, scores.T), backward_truth)
    assert forward.scores == pytest.approx(backward.scores, abs=1e-15)
    assert forward.per_query["ranks"].tolist() == backward.per_query["ranks"].tolist()
    assert forward.n_left_out == len(files) - len(clips)


def test_repeated_caption_is_a_candidate_for_each_occurrence(tmp_path):
    # "same text" captions a.wav and f.wav: one identical row, used twice; a.wav's relevant occurrence ties with the
    # other (irrelevant to a.wav) and ranks 2
    captions = tmp_path / "captions.csv"
    pd.DataFrame({"file_name": ["a.wav", "f.wav"], "caption_1": ["same text", "same text"],
                  "caption_2": ["a two", "f two"]}).to_csv(captions, index=False)
    matrix = SimilarityMatrix(["same text", "a two", "f two"], ["a.wav", "f.wav"],
                              np.array([[0.9, 0.9], [0.5, 0.1], [0.1, 0.2]]))
    result = evaluate(matrix, read_captions_file(captions), both_directions=True)
    assert result.n_queries == 4
    other = result.audio_to_text
    assert other.per_query["ranks"].tolist() == ["2 3", "2 3"]
    assert other.scores["mAP@10"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_assessment_of_two_systems_pairs_them_query_by_query():
    first = SimilarityMatrix(QUERIES, FILES, SCORES)
    second = SimilarityMatrix(QUERIES, FILES[::-1], SCORES[:, ::-1] + np.array([0, 0, 0.5, 0]))  # b.wav raised
    options = AssessOptions(with_intervals=True, resampling=Resampling(resamples=500))
    assessment = assess([("one", first), ("two", second)], truth(), options)
    payload = assessment.as_json()
    assert [system["system"] for system in payload["systems"]] == ["one", "two"]
    compared = payload["comparisons"][0]
    assert (compared["system"], compared["reference"]) == ("two", "one")
    for direction, key in (("text_to_audio", None), ("audio_to_text", "audio_to_text")):
        scores = [system[key] if key else system for system in payload["systems"]]
        for metric, figures in compared[direction].items():
            assert figures["difference"] == pytest.approx(scores[1][metric] - scores[0][metric], abs=1e-15)
            assert figures["ci95"][0] <= figures["difference"] <= figures["ci95"][1]
            assert 0 < figures["p_value"] <= 1
    assert payload["resampling"]["resamples"] == 500 and payload["resampling"]["seed"] == 0


def test_systems_on_different_queries_or_files_are_refused():
    first = SimilarityMatrix(QUERIES, FILES, SCORES)
    fewer = SimilarityMatrix(QUERIES[:2], FILES, SCORES[:2])
    with pytest.raises(UserError, match="two: scores 2 of the ground-truth queries, one 3"):
        assess([("one", first), ("two", fewer)], truth(), AssessOptions(allow_missing=True))
    other_files = SimilarityMatrix(QUERIES, FILES[:3] + ["x.wav"], SCORES)
    with pytest.raises(UserError, match="two: lacks the audio file 'unjudged.wav' of one"):
        assess([("one", first), ("two", other_files)], truth())
    with pytest.raises(UserError, match="two systems are named 'one'"):
        assess([("one", first), ("one", first)], truth())


@pytest.fixture
def files_on_disk(tmp_path):
    write_csv(SimilarityMatrix(QUERIES, FILES, SCORES), tmp_path / "one.csv")
    write_csv(SimilarityMatrix(QUERIES, FILES, SCORES[:, [1, 0, 2, 3]]), tmp_path / "two.csv")
    relevance = tmp_path / "rel.csv"
    pd.DataFrame({"query": QUERIES, "audio_filenames": [repr(files) for files in RELEVANT]}).to_csv(relevance,
                                                                                                   index=False)
    return tmp_path


def run(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


def test_cli_json_keeps_the_text_to_audio_keys_and_adds_audio_to_text(files_on_disk):
    one, relevance = files_on_disk / "one.csv", files_on_disk / "rel.csv"
    both = json.loads(run("-p", one, "-r", relevance, "--json").output)
    legacy = json.loads(run("-p", one, "-r", relevance, "--json", "--direction", "t2a").output)
    assert list(both)[:6] == list(legacy) and {key: both[key] for key in legacy} == legacy
    assert both["audio_to_text"]["R@1"] == pytest.approx(0.5) and both["audio_to_text"]["n_left_out"] == 1
    assert both["audio_to_text"]["n_queries"] == 3
    only = json.loads(run("-p", one, "-r", relevance, "--json", "--direction", "a2t").output)
    assert only == {"audio_to_text": both["audio_to_text"]}
    with_ci = json.loads(run("-p", one, "-r", relevance, "--json", "--ci", "--resamples", "200", "--seed", "3").output)
    assert with_ci["resampling"]["resamples"] == 200 and with_ci["resampling"]["ci_method"] == "bootstrap"
    for block in (with_ci, with_ci["audio_to_text"]):
        assert all(0.0 <= low <= high <= 1.0 for low, high in block["ci95"].values())


def test_cli_tables_of_both_directions_and_of_two_systems(files_on_disk):
    one, two, relevance = (files_on_disk / name for name in ("one.csv", "two.csv", "rel.csv"))
    single = run("-p", one, "-r", relevance, "--ci")
    assert single.exit_code == 0, single.output
    assert "audio-to-text: 3 clips as queries, each ranking the 3 queries (1 clips" in single.output
    assert "95% CI (bootstrap)" in single.output and "10,000 resamples of the queries, seed 0" in single.output
    compared = run("-p", f"base={one}", "-p", f"new={two}", "-r", relevance, "--resamples", "1000", "--seed", "7")
    assert compared.exit_code == 0, compared.output
    assert "new − base" in compared.output and "95% CI of Δ" in compared.output
    assert "paired randomisation test, two-sided, 1,000 random swaps" in compared.output and "seed 7" in compared.output
    payload = json.loads(run("-p", f"base={one}", "-p", f"new={two}", "-r", relevance, "--json").output)
    assert payload["systems"][0]["system"] == "base" and payload["comparisons"][0]["system"] == "new"
    refused = run("-p", one, "-p", two, "-r", relevance, "--per-query", files_on_disk / "pq.csv")
    assert refused.exit_code == 2 and "--per-query writes one system's per-query CSV" in refused.output
