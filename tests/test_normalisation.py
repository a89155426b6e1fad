"""Inference-time score normalisation: inverted and dual softmax by hand, their invariances, the temperature
search of `ensemble`, the weights file, and `evaluate` / `ensemble` / `package` using them."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dcase_t6.common.errors import UserError
from dcase_t6.ensemble import search as ensembling
from dcase_t6.ensemble.systems import System, weighted_sum
from dcase_t6.ensemble.temperatures import DEFAULT_TEMPERATURES, best_temperature, matrix_normalisation
from dcase_t6.ensemble.weights import EnsembleWeights, TemperatureScore, read_weights, write_weights
from dcase_t6.retrieval import metrics
from dcase_t6.retrieval import normalisation as norm
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import Relevance
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_csv, write_matrix
from dcase_t6.submission import systems as describing
from dcase_t6.submission.package import CSV_KIND, member_name
from dcase_t6.submission.report import ReportContent, render_html
from helpers.cli import refused, run_dcase
from helpers.submission import PDF, filled_meta, label, make_system

# A hub: clip c2 scores e^... = 5 for both queries, above each query's own clip (4). With T = 1 (scores = log A):
# raw ranks put c2 first (mAP@16 = 1/2); the inverted softmax divides by the column sums 5, 5, 10 and puts each
# query's own clip first (4/5 > 5/10), mAP@16 = 1.
HUB = np.log(np.array([[4.0, 1.0, 5.0], [1.0, 4.0, 5.0]]))
HUB_QUERIES, HUB_FILES = ["a dog barks", "rain falls"], ["dog.wav", "rain.wav", "hub.wav"]


def map16(scores: np.ndarray) -> float:
    relevant = np.arange(scores.shape[0])[:, None]
    return float(metrics.average_precision_at_k(metrics.relevant_ranks(scores, relevant), 16).mean())


# --- by hand ------------------------------------------------------------------------------------------------------
def test_inverted_softmax_by_hand():
    scores = np.log(np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))  # column sums 4, 4, 4
    expected = np.log(np.array([[1 / 4, 2 / 4, 3 / 4], [3 / 4, 2 / 4, 1 / 4]]))
    np.testing.assert_allclose(norm.inverted_softmax(scores, 1.0), expected, rtol=0, atol=1e-15)
    # T = 2 halves the scores: 2 log A / 2 = log A, the same matrix
    np.testing.assert_allclose(norm.inverted_softmax(2 * scores, 2.0), expected, rtol=0, atol=1e-15)


def test_dual_softmax_by_hand():
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 2.0, 2.0]])  # row sums 6, 6, 6; column sums 6, 6, 6
    expected = np.log(a ** 2 / 36)  # (a / row sum) * (a / column sum)
    np.testing.assert_allclose(norm.dual_softmax(np.log(a), 1.0), expected, rtol=0, atol=1e-15)
    b = np.array([[1.0, 3.0], [1.0, 1.0]])  # rows 4, 2; columns 2, 4
    np.testing.assert_allclose(norm.dual_softmax(0.5 * np.log(b), 0.5),
                               np.log([[1 / 8, 9 / 16], [1 / 4, 1 / 8]]), rtol=0, atol=1e-15)


def test_the_hub_loses_its_queries():
    assert map16(HUB) == 0.5
    assert map16(norm.inverted_softmax(HUB, 1.0)) == 1.0
    np.testing.assert_allclose(np.exp(norm.inverted_softmax(HUB, 1.0)), [[0.8, 0.2, 0.5], [0.2, 0.8, 0.5]], atol=1e-15)


# --- invariances --------------------------------------------------------------------------------------------------
def test_a_constant_added_to_a_column_leaves_the_inverted_softmax_unchanged():
    scores = np.random.default_rng(0).standard_normal((6, 5))
    shifted = scores + np.array([3.0, -2.0, 0.0, 10.0, 0.5])
    np.testing.assert_allclose(norm.inverted_softmax(shifted, 0.3), norm.inverted_softmax(scores, 0.3), atol=1e-12)
    # the dual softmax's row softmax sees the shifted column: it changes
    assert not np.allclose(norm.dual_softmax(shifted, 0.3), norm.dual_softmax(scores, 0.3))


def test_scale_shift_transpose_and_columns_that_sum_to_one():
    scores = np.random.default_rng(1).standard_normal((7, 4))
    for function in (norm.inverted_softmax, norm.dual_softmax):
        np.testing.assert_allclose(function(3.0 * scores, 0.6), function(scores, 0.2), atol=1e-12)
        np.testing.assert_allclose(function(scores + 5.0, 0.2), function(scores, 0.2), atol=1e-12)
    np.testing.assert_allclose(norm.dual_softmax(scores.T, 0.2), norm.dual_softmax(scores, 0.2).T, atol=1e-12)
    np.testing.assert_allclose(np.exp(norm.inverted_softmax(scores, 0.2)).sum(axis=0), 1.0, atol=1e-12)


def test_limits_of_the_temperature_rank_like_the_documented_corrections():
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((8, 6))
    ranks = lambda values: np.argsort(-values, axis=1)  # noqa: E731
    # huge T: the clip's mean score is subtracted (inverted) or half of it (dual); centred columns rank like raw
    assert (ranks(norm.inverted_softmax(scores, 1e6)) == ranks(scores - scores.mean(axis=0))).all()
    assert (ranks(norm.dual_softmax(scores, 1e6)) == ranks(scores - scores.mean(axis=0) / 2)).all()
    centred = scores - scores.mean(axis=0)
    assert (ranks(norm.dual_softmax(centred, 1e6)) == ranks(centred)).all()
    # tiny T: the clip's largest score is subtracted; the log form never underflows to ties
    tiny = norm.inverted_softmax(scores, 1e-4)
    assert (ranks(tiny) == ranks(scores - scores.max(axis=0))).all() and np.isfinite(tiny).all()
    assert (np.exp(tiny) == 0).sum() > 30  # as probabilities most would tie at 0
    assert all(len(np.unique(row[row < 0])) == (row < 0).sum() for row in tiny)  # as logs the rest keep their order


def test_blocked_log_sum_exp_equals_the_direct_one(monkeypatch):
    scores = np.random.default_rng(3).standard_normal((50, 7)) * 30
    direct = np.log(np.exp(scores - scores.max(axis=0)).sum(axis=0)) + scores.max(axis=0)
    monkeypatch.setattr(norm, "_BLOCK_ELEMENTS", 20)  # blocks of 2 rows
    np.testing.assert_allclose(norm.column_log_sum_exp(scores), direct, rtol=1e-14)


def test_bad_temperatures_and_overflow_are_refused():
    with pytest.raises(UserError, match="must be a finite number > 0"):
        norm.check_normalisation("inverted-softmax", 0.0)
    with pytest.raises(UserError, match="expected one of inverted-softmax, dual-softmax"):
        norm.check_normalisation("softmax", 1.0)
    with pytest.raises(UserError, match="m.csv: scores up to 1e\\+300 divided by the temperature 1e-10 overflow"):
        norm.normalise(np.array([[1e300, 0.0]]), norm.Normalisation("dual-softmax", 1e-10), "m.csv")


# --- the temperature search ---------------------------------------------------------------------------------------
# Found by a search over small matrices: the middle temperature wins, the inverted softmax at T = 0.01 (minus each
# clip's largest score) and T = 10 (minus its mean) rank fewer own clips first.
MIDDLE = np.array([[1.0, 0.75, 0.75], [0.5, 0.25, 0.25], [0.5, 0.5, 0.25]])


def test_temperature_search_picks_the_best_grid_point():
    queries, files = ["q0", "q1", "q2"], ["f0", "f1", "f2"]
    relevance = Relevance(queries, [[name] for name in files], Path("<captions>"))
    expected = [map16(norm.inverted_softmax(MIDDLE, t)) for t in (0.01, 0.3, 10.0)]
    assert expected == pytest.approx([7 / 18, 4 / 9, 7 / 18], abs=1e-15)
    found = ensembling.search([System("s", SimilarityMatrix(queries, files, MIDDLE))], relevance,
                              ensembling.SearchOptions(normalize="inverted-softmax", temperatures=(10.0, 0.3, 0.01)))
    assert found.weights.temperature == 0.3 and found.weights.weights == {"s": 1.0}
    assert found.weights.temperature_search == [TemperatureScore(t, e) for t, e in zip((0.01, 0.3, 10.0), expected)]
    assert found.weights.validation.scores["mAP@16"] == pytest.approx(4 / 9, abs=1e-15)
    assert best_temperature([0.1, 1.0, 10.0], [0.5, 0.7, 0.7]) == 2  # ties: the larger temperature
    assert DEFAULT_TEMPERATURES[0] == 0.001 and DEFAULT_TEMPERATURES[-1] == 10 and len(DEFAULT_TEMPERATURES) == 17


def test_two_systems_search_weights_and_temperature_and_apply_reproduces_validation():
    rng = np.random.default_rng(4)
    queries, files = [f"q{i}" for i in range(12)], [f"f{i}.wav" for i in range(6)]
    relevance = Relevance(queries, [[files[i % 6]] for i in range(12)], Path("<captions>"))
    systems = [System(name, SimilarityMatrix(queries, files, rng.standard_normal((12, 6)))) for name in ("a", "b")]
    options = ensembling.SearchOptions(normalize="dual-softmax", step=0.25, temperatures=(0.1, 1.0))
    found = ensembling.search(systems, relevance, options)
    applied = ensembling.apply(found.weights, systems)
    t = found.weights.temperature
    by_hand = weighted_sum(np.stack([norm.dual_softmax(s.matrix.scores, t) for s in systems]),
                           [found.weights.weights[name] for name in ("a", "b")])
    np.testing.assert_array_equal(applied.scores, by_hand)
    assert evaluate(applied, relevance).scores["mAP@16"] == found.weights.validation.scores["mAP@16"]
    assert found.weights.grid_points == 5 * 2
    assert max(entry.score for entry in found.weights.temperature_search) == found.weights.validation.scores["mAP@16"]


# --- the weights file ---------------------------------------------------------------------------------------------
def test_weights_file_round_trips_the_temperature(tmp_path):
    stored = EnsembleWeights({"s": 1.0}, normalize="inverted-softmax", temperature=0.1778,
                             temperature_search=[TemperatureScore(0.1, 0.5), TemperatureScore(0.1778, 0.6)])
    write_weights(stored, tmp_path / "w.json")
    again = read_weights(tmp_path / "w.json")
    assert again == stored and again.normalisation == norm.Normalisation("inverted-softmax", 0.1778)
    document = json.loads((tmp_path / "w.json").read_text(encoding="utf-8"))
    assert document["temperature"] == 0.1778
    assert document["temperature_search"] == [{"temperature": 0.1, "mAP@16": 0.5},
                                              {"temperature": 0.1778, "mAP@16": 0.6}]
    assert matrix_normalisation(again).temperature == 0.1778


@pytest.mark.parametrize("document, message", [
    ({"weights": {"s": 1}, "normalize": "inverted-softmax"}, 'needs "temperature": a number > 0'),
    ({"weights": {"s": 1}, "normalize": "dual-softmax", "temperature": -1}, 'needs "temperature": a number > 0'),
    ({"weights": {"s": 1}, "normalize": "zscore", "temperature": 0.1}, '"temperature" applies only to'),
    ({"weights": {"s": 1}, "normalize": "dual-softmax", "temperature": 1, "temperature_search": [{"t": 1}]},
     '"temperature_search" must be a list of'),
])
def test_weights_reader_checks_the_temperature(tmp_path, document, message):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(UserError, match=f"w\\.json: .*{message}"):
        read_weights(path)


def test_a_file_of_several_systems_or_without_temperature_normalises_no_single_matrix():
    with pytest.raises(UserError, match="normalises each of its 2 systems before their weighted sum"):
        matrix_normalisation(EnsembleWeights({"a": 1.0, "b": 1.0}, "inverted-softmax", temperature=0.1))
    with pytest.raises(UserError, match="\"normalize\" is 'zscore', which has no temperature"):
        matrix_normalisation(EnsembleWeights({"a": 1.0}, "zscore"))


# --- the command line ---------------------------------------------------------------------------------------------
def hub_files(folder: Path) -> tuple[str, str]:
    matrix, captions = folder / "hub.csv", folder / "captions.csv"
    write_matrix(SimilarityMatrix(HUB_QUERIES, HUB_FILES, HUB), matrix)
    captions.write_text("file_name,caption_1\ndog.wav,a dog barks\nrain.wav,rain falls\n", encoding="utf-8")
    return str(matrix), str(captions)


def test_evaluate_and_ensemble_cli_normalise(tmp_path):
    matrix, captions = hub_files(tmp_path)
    raw = json.loads(run_dcase("evaluate", "-p", matrix, "-c", captions, "--json").output)
    assert raw["mAP@16"] == 0.5 and "normalize" not in raw
    direct = run_dcase("evaluate", "-p", matrix, "-c", captions, "--normalise", "inverted-softmax",
                       "--temperature", 1, "--json")
    assert json.loads(direct.output)["mAP@16"] == 1.0
    assert json.loads(direct.output)["normalize"] == {"method": "inverted-softmax", "temperature": 1.0}

    weights, applied = tmp_path / "norm.json", tmp_path / "applied.npz"
    searched = run_dcase("ensemble", "--search", "-s", f"hub={matrix}", "-c", captions, "--normalise",
                         "inverted-softmax", "--temperatures", "0.5,1,2", "--out", weights, "--json")
    assert searched.exit_code == 0, searched.output
    stored = json.loads(searched.output)
    assert stored["temperature"] == 2.0 and stored["validation"]["mAP@16"] == 1.0  # every T fixes it: the largest
    assert run_dcase("ensemble", "--apply", "-w", weights, "-s", f"hub={matrix}", "--out", applied).exit_code == 0
    np.testing.assert_array_equal(np.load(applied)["scores"], norm.inverted_softmax(HUB, 2.0))
    from_file = run_dcase("evaluate", "-p", matrix, "-c", captions, "--normalise-from", weights)
    assert from_file.exit_code == 0 and "inverted softmax (T = 2), over all 2 queries" in from_file.output


@pytest.mark.parametrize("args, fragment", [
    (["--temperature", "1"], "--temperature goes with --normalize"),
    (["--normalise", "dual-softmax"], "give its --temperature"),
    (["--normalise", "dual-softmax", "--temperature", "0"], "--temperature 0.0: the temperature of dual-softmax"),
    (["--normalise-from", "w.json", "--temperature", "1"], "--normalize-from takes the method and temperature"),
])
def test_evaluate_refuses_incomplete_normalisation_options(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    matrix, captions = hub_files(tmp_path)
    refused(run_dcase("evaluate", "-p", matrix, "-c", captions, *args), fragment)


def test_ensemble_refuses_temperatures_without_a_tempered_normalisation(tmp_path):
    matrix, captions = hub_files(tmp_path)
    refused(run_dcase("ensemble", "--search", "-s", f"a={matrix}", "-s", f"b={matrix}", "-c", captions,
                      "--temperatures", "0.1", "--out", tmp_path / "w.json"), "only --normalize inverted-softmax")
    refused(run_dcase("ensemble", "--search", "-s", f"a={matrix}", "-c", captions, "--normalize", "dual-softmax",
                      "--temperatures", "0.1,x", "--out", tmp_path / "w.json"), "'x' is not a number")


def test_package_writes_the_normalised_matrix_and_says_it_is_transductive(tmp_path):
    system = make_system(tmp_path, 1)
    report, weights, out = tmp_path / "report.pdf", tmp_path / "norm.json", tmp_path / "submission.zip"
    report.write_bytes(PDF)
    write_weights(EnsembleWeights({"s": 1.0}, "dual-softmax", temperature=0.5), weights)
    built = run_dcase("package", "-l", system.label, "-p", system.predictions, "-m", system.meta, "--report", report,
                      "--normalise-from", weights, "--out", out)
    assert built.exit_code == 0, built.output
    assert "dual softmax (T = 0.5)" in built.output and "transductive" in built.output
    original = read_csv(system.predictions)
    with zipfile.ZipFile(out) as archive:
        (tmp_path / "packed.csv").write_bytes(archive.read(member_name(label(1), CSV_KIND)))
    packed = read_csv(tmp_path / "packed.csv")
    assert packed.queries == original.queries and packed.files == original.files
    np.testing.assert_array_equal(packed.scores, norm.dual_softmax(original.scores, 0.5))
    refused(run_dcase("package", "-l", label(1), "-p", "a.csv", "-m", "a.yaml", "-l", label(2), "-p", "b.csv", "-m",
                      "b.yaml", "--report", report, "--normalise-from", weights, "--out", out), "name the system")


def test_draft_report_and_metadata_state_the_normalisation():
    html = render_html(ReportContent([filled_meta()], None, Path("figure.png"), "caption",
                                     normalisations=((label(1), norm.Normalisation("inverted-softmax", 0.05)),)))
    assert "Score normalisation" in html and "inverted softmax (T = 0.05)" in html and "transductive" in html
    single = EnsembleWeights({"s": 1.0}, "inverted-softmax", temperature=0.05)
    assert describing._ensemble([], single).startswith("No; each similarity matrix is first replaced by its inverted "
                                                       "softmax (T = 0.05), transductive")
    pair = EnsembleWeights({"a": 0.5, "b": 0.5}, "dual-softmax", temperature=0.1)
    assert describing._ensemble([], pair).endswith("replaced by its dual softmax (T = 0.1), transductive: each "
                                                   "query's normalised scores depend on every other query of the "
                                                   "matrix (all evaluation captions together)")
