"""Ensemble weight search and application: hand-computed optima, brute force, CLI round trips."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.cli.ensemble import parse_group_options, parse_system_options, read_systems
from dcase_t6.common.errors import UserError
from dcase_t6.ensemble import grid
from dcase_t6.ensemble import groups as grouping
from dcase_t6.ensemble import search as ensembling
from dcase_t6.ensemble import systems as named
from dcase_t6.ensemble.weights import WEIGHTS_FORMAT, EnsembleWeights, GroupWeights, read_weights, write_weights
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import Relevance, align
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_matrix, write_matrix

FILES = ["f0.wav", "f1.wav", "f2.wav", "f3.wav"]
QUERIES = ["q0", "q1", "q2", "q3"]


def complementary_systems() -> tuple[np.ndarray, np.ndarray]:
    """A ranks q0, q1 first and B ranks q2, q3 first; each puts 2 distractors (0.8) above the other half.

    The good system scores the target 1 and the rest 0; the bad one the target 0, 2 distractors 0.8, the rest -1.

    With weights (a, b): q0/q1 are at rank 1 iff a > 0.8 b, q2/q3 iff b > 0.8 a, else rank 3.
    On a 0.1 grid only a = b = 0.5 ranks all four first (mAP@16 = 1); elsewhere (1 + 1 + 1/3 + 1/3) / 4.
    """
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    for query in range(4):
        good, bad = (a, b) if query < 2 else (b, a)
        good[query, query] = 1.0
        bad[query] = -1.0
        bad[query, query] = 0.0
        bad[query, [2, 3] if query < 2 else [0, 1]] = 0.8
    return a, b


def single_relevance() -> Relevance:
    return Relevance(QUERIES, [[name] for name in FILES], Path("<captions>"))


def write_system(path: Path, scores: np.ndarray, queries=QUERIES, files=FILES) -> str:
    write_matrix(SimilarityMatrix(list(queries), list(files), scores), path)
    return str(path)


def load(options) -> list[named.System]:
    """Parse ``NAME=PATH`` options, read and align their matrices, as the command line does."""
    return named.align_systems(read_systems(parse_system_options(options)))


def write_captions(path: Path) -> str:
    path.write_text("file_name,caption_1\n" + "".join(f"{f},{q}\n" for f, q in zip(FILES, QUERIES)), encoding="utf-8")
    return str(path)


def brute_force(scores: np.ndarray, relevance: Relevance, points: np.ndarray, queries, files) -> np.ndarray:
    """mAP@16 of every point by explicitly applying the weights and running `evaluate`."""
    return np.array([evaluate(SimilarityMatrix(queries, files, named.weighted_sum(scores, point)),
                              relevance).scores["mAP@16"] for point in points])


def random_case(rng: np.random.Generator, n_systems: int, n_queries: int, n_files: int, max_relevant: int,
                integer_scores: bool):
    files = [f"file{i}.wav" for i in range(n_files)]
    queries = [f"query {i}" for i in range(n_queries)]
    relevant = [list(rng.choice(files, size=rng.integers(1, max_relevant + 1), replace=False))
                for _ in range(n_queries)]
    if integer_scores:
        scores = rng.integers(0, 4, size=(n_systems, n_queries, n_files)).astype(np.float64)
    else:
        scores = rng.standard_normal((n_systems, n_queries, n_files))
    return scores, Relevance(queries, relevant, Path("<random>")), queries, files


# --- hand-computed ------------------------------------------------------------------------------
def test_complementary_systems_are_best_mixed_half_and_half():
    scores = np.stack(complementary_systems())
    result = grid.grid_search(scores, np.arange(4)[:, None], grid.grid_divisions(0.1), label="test")
    expected = np.where(np.isclose(result.points[:, 0], 0.5), 1.0, (1 + 1 + 1 / 3 + 1 / 3) / 4)
    np.testing.assert_allclose(result.scores, expected, rtol=0, atol=1e-15)
    assert result.points[result.best(1)[0]].tolist() == [0.5, 0.5]


def test_search_cli_writes_best_weights_and_exact_validation(tmp_path):
    a, b = complementary_systems()
    args = ["ensemble", "--search", "-s", f"a={write_system(tmp_path / 'a.csv', a)}",
            "-s", f"b={write_system(tmp_path / 'b.npz', b)}", "-c", write_captions(tmp_path / "captions.csv"),
            "--step", "0.1", "--top", "3", "--out", str(tmp_path / "weights.json"), "--json"]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    printed = json.loads(outcome.output)
    assert printed == json.loads((tmp_path / "weights.json").read_text(encoding="utf-8"))
    assert printed["weights"] == {"a": 0.5, "b": 0.5}
    assert printed["validation"]["mAP@16"] == 1.0 and printed["validation"]["n_queries"] == 4
    assert printed["validation"]["setting"] == "single-relevant"
    assert [c["mAP@16"] for c in printed["candidates"]] == pytest.approx([1.0, 2 / 3, 2 / 3])
    assert printed["candidates"][1]["weights"] == {"a": 0.4, "b": 0.6}  # ties: most even, then grid order
    assert printed["grid_points"] == 11 and printed["strategy"] == "flat" and printed["groups"] == []


def test_search_library_takes_matrices_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = complementary_systems()
    found = ensembling.search([named.System("a", SimilarityMatrix(QUERIES, FILES, a)),
                               named.System("b", SimilarityMatrix(QUERIES, FILES, b))],
                              single_relevance(), ensembling.SearchOptions(step=0.1, top=3))
    assert found.weights.weights == {"a": 0.5, "b": 0.5} and found.weights.strategy == "flat"
    assert found.evaluation.scores["mAP@16"] == 1.0 == found.weights.validation.scores["mAP@16"]
    assert [candidate.score for candidate in found.weights.candidates] == pytest.approx([1.0, 2 / 3, 2 / 3])
    assert found.weights.systems == {"a": "", "b": ""} and not list(tmp_path.iterdir())


def test_weights_file_round_trips_byte_for_byte(tmp_path):
    a, b = complementary_systems()
    useless = np.zeros((4, 4))
    args = ["ensemble", "--search", "-s", f"m1/a={write_system(tmp_path / 'a.csv', a)}",
            "-s", f"m1/b={write_system(tmp_path / 'b.csv', b)}",
            "-s", f"m2/a={write_system(tmp_path / 'c.csv', useless)}",
            "-c", write_captions(tmp_path / "captions.csv"), "--step", "0.1", "--strategy", "system-first",
            "--out", str(tmp_path / "weights.json")]
    assert CliRunner().invoke(main, args).exit_code == 0
    stored = read_weights(tmp_path / "weights.json")
    assert stored.groups[0] == GroupWeights("m1", 0.5, {"m1/a": 0.5, "m1/b": 0.5}, 1.0)
    write_weights(stored, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "weights.json").read_bytes()


@pytest.mark.parametrize("document, message", [
    ({"weights": {"a": -1}}, 'expected an object with "weights"'),
    ({"weights": {"a": 1}, "normalize": "minmax"}, '"normalize" is \'minmax\''),
    ({"weights": {"a": 1}, "version": 2}, "reads version 1"),
    ({"weights": {"a": 1}, "groups": [{"name": "g"}]}, '"groups" must be a list of'),
    ({"weights": {"a": 1}, "candidates": {"a": 1}}, '"candidates" must be a list of'),
])
def test_weights_reader_names_the_bad_field(tmp_path, document, message):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(UserError, match=f"w\\.json: .*{message}"):
        read_weights(path)


def test_hand_written_weights_get_the_documented_defaults(tmp_path):
    path = tmp_path / "w.json"
    path.write_text('{"weights": {"a": 1, "b": 0.5}}', encoding="utf-8")
    stored = read_weights(path)
    assert stored == EnsembleWeights({"a": 1.0, "b": 0.5}, normalize="none", metric="mAP@16")
    assert stored.as_json() == {"format": WEIGHTS_FORMAT, "version": 1, "metric": "mAP@16", "normalize": "none",
                                "weights": {"a": 1.0, "b": 0.5}}


def test_search_cli_prints_tables(tmp_path):
    a, b = complementary_systems()
    args = ["ensemble", "--search", "-s", f"a={write_system(tmp_path / 'a.csv', a)}",
            "-s", f"b={write_system(tmp_path / 'b.csv', b)}", "-c", write_captions(tmp_path / "captions.csv"),
            "--step", "0.5", "--out", str(tmp_path / "weights.json")]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    assert "best weights: validation mAP@16 1.0000" in outcome.output
    assert "top 3 candidates" in outcome.output and "a=0.5 b=0.5" in outcome.output


# --- brute force --------------------------------------------------------------------------------
@pytest.mark.parametrize("max_relevant, integer_scores, step", [(1, False, 0.1), (1, True, 0.25),
                                                                (4, False, 0.1), (4, True, 0.25)])
def test_search_equals_evaluate_on_every_applied_grid_point(max_relevant, integer_scores, step):
    rng = np.random.default_rng(max_relevant * 10 + integer_scores)
    scores, relevance, queries, files = random_case(rng, 3, 40, 45, max_relevant, integer_scores)
    alignment = align(SimilarityMatrix(queries, files, scores[0]), relevance)
    result = grid.grid_search(scores, alignment.relevant, grid.grid_divisions(step), label="test")
    expected = brute_force(scores, relevance, result.points, queries, files)
    np.testing.assert_allclose(result.scores, expected, rtol=0, atol=1e-12)


def test_pruning_settles_hopeless_and_sure_queries():
    rng = np.random.default_rng(3)
    scores, relevance, queries, files = random_case(rng, 2, 30, 60, 1, False)
    relevant = align(SimilarityMatrix(queries, files, scores[0]), relevance).relevant
    scores[:, 0] = scores[:, 0] * 0.0  # query 0: a 60-way tie in both systems -> beyond 16 for every weight
    scores[:, 1, relevant[1, 0]] = 99.0  # query 1: first in both systems -> rank 1 for every weight
    table = grid.build_comparison_table(scores, relevant)
    assert table.variable_constant.shape[0] < 28
    points = grid.simplex_grid(2, 10)
    expected = brute_force(scores, relevance, points, queries, files)
    np.testing.assert_allclose(grid.map_at_k_for_weights(table, points), expected, rtol=0, atol=1e-12)


# --- normalisation, grid, groups -----------------------------------------------------------------
def test_zscore_rows_by_hand():
    rows = named.zscore_rows(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(rows, [[-np.sqrt(1.5), 0.0, np.sqrt(1.5)], [0.0, 0.0, 0.0]])


def test_zscore_search_ignores_per_query_scale_and_offset(tmp_path):
    rng = np.random.default_rng(5)
    scores, relevance, queries, files = random_case(rng, 2, 30, 40, 3, False)
    rescaled = scores.copy()
    rescaled[1] = 250.0 * scores[1] + rng.normal(size=(30, 1)) * 40.0
    paths = {}
    for label, stack in (("plain", scores), ("rescaled", rescaled)):
        paths[label] = [f"s{i}={write_system(tmp_path / f'{label}{i}.npz', stack[i], queries, files)}"
                        for i in range(2)]
    def run(label, normalize):
        options = ensembling.SearchOptions(normalize=normalize, step=0.1, top=3)
        return ensembling.search(load(paths[label]), relevance, options).weights
    plain, rescaled_z = run("plain", "zscore"), run("rescaled", "zscore")
    assert rescaled_z.weights == plain.weights
    assert rescaled_z.validation.scores["mAP@16"] == pytest.approx(plain.validation.scores["mAP@16"], abs=1e-12)
    assert run("rescaled", "none").weights != rescaled_z.weights
    normalized = named.weighted_sum(np.stack([named.zscore_rows(s) for s in scores]),
                                    list(plain.weights.values()))
    exact = evaluate(SimilarityMatrix(queries, files, normalized), relevance).scores["mAP@16"]
    assert plain.validation.scores["mAP@16"] == exact


def test_simplex_grid_counts_and_step_checks():
    points = grid.simplex_grid(4, grid.grid_divisions(0.05))
    assert points.shape == (1771, 4) and grid.grid_size(4, 20) == 1771
    np.testing.assert_allclose(points.sum(axis=1), 1.0)
    assert (points >= 0).all() and len(np.unique(np.round(points * 20).astype(int), axis=0)) == 1771
    for bad in (0.3, 0.0, -0.1, 1.5):
        with pytest.raises(UserError, match="must divide 1"):
            grid.grid_divisions(bad)


def test_groups_from_options_and_strategies():
    names = ["passt/s1", "passt/s2", "cnn/s1", "cnn/s2"]
    assert grouping.resolve_groups(names, {}, "system-first") == [
        grouping.Group("passt", (0, 1)), grouping.Group("cnn", (2, 3))]
    assert grouping.resolve_groups(names, {}, "model-first") == [
        grouping.Group("s1", (0, 2)), grouping.Group("s2", (1, 3))]
    assert grouping.resolve_groups(names, parse_group_options(["g=cnn/s2,passt/s1"]), "model-first") == [
        grouping.Group("g", (3, 0)), grouping.Group("passt/s2", (1,)), grouping.Group("cnn/s1", (2,))]
    assert grouping.resolve_groups(names, {}, None) == [grouping.Group("all", (0, 1, 2, 3))]
    for options, strategy, message in ((["g=passt/s1,nope"], None, "not a --system name"),
                                       (["g=passt/s1", "h=passt/s1"], None, "in groups 'g' and 'h'"),
                                       (["g"], None, "expected GROUP=NAME1,NAME2"),
                                       (["g=passt/s1", "g=cnn/s1"], None, "given twice")):
        with pytest.raises(UserError, match=message):
            grouping.resolve_groups(names, parse_group_options(options), strategy)
    with pytest.raises(UserError, match="is not MODEL/SYSTEM"):
        grouping.resolve_groups(["a", "b"], {}, "system-first")


def test_two_stage_search_multiplies_inner_and_group_weights(tmp_path):
    a, b = complementary_systems()
    useless = np.zeros((4, 4))  # every file ties: all relevant ranks are 4
    args = ["ensemble", "--search", "-s", f"m1/a={write_system(tmp_path / 'a.csv', a)}",
            "-s", f"m1/b={write_system(tmp_path / 'b.csv', b)}",
            "-s", f"m2/a={write_system(tmp_path / 'c.csv', useless)}",
            "-c", write_captions(tmp_path / "captions.csv"), "--step", "0.1", "--strategy", "system-first",
            "--out", str(tmp_path / "weights.json"), "--json"]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.output)
    # stage 1: m1 = a + b at (0.5, 0.5), mAP 1; stage 2: every point giving m1 weight ties, the most even wins
    assert document["groups"] == [
        {"name": "m1", "weight": 0.5, "members": {"m1/a": 0.5, "m1/b": 0.5}, "mAP@16": 1.0},
        {"name": "m2", "weight": 0.5, "members": {"m2/a": 1.0}, "mAP@16": 0.25}]
    assert document["weights"] == {"m1/a": 0.25, "m1/b": 0.25, "m2/a": 0.5}
    assert document["validation"]["mAP@16"] == 1.0
    assert document["strategy"] == "system-first" and document["grid_points"] == 22


def test_two_stage_search_equals_searching_stage_by_stage():
    rng = np.random.default_rng(11)
    scores, relevance, queries, files = random_case(rng, 3, 40, 40, 3, False)
    relevant = align(SimilarityMatrix(queries, files, scores[0]), relevance).relevant
    groups = [grouping.Group("g", (0, 2)), grouping.Group("h", (1,))]
    outcome = grouping.two_stage_search(scores, relevant, grouping.SearchPlan(groups, 10, 2))
    inner = grid.grid_search(scores[[0, 2]], relevant, 10, label="g")
    inner_best = inner.points[inner.best(1)[0]]
    outer = grid.grid_search(np.stack([named.weighted_sum(scores[[0, 2]], inner_best), scores[1]]),
                                 relevant, 10, label="groups")
    outer_best = outer.points[outer.best(1)[0]]
    expected = [inner_best[0] * outer_best[0], outer_best[1], inner_best[1] * outer_best[0]]
    np.testing.assert_array_equal(outcome.candidates[0], expected)


# --- apply, alignment, errors --------------------------------------------------------------------
def test_apply_round_trip_with_reordered_system(tmp_path):
    rng = np.random.default_rng(7)
    first, second = rng.standard_normal((2, 4, 4))
    weights = {"format": WEIGHTS_FORMAT, "normalize": "none", "weights": {"x": 0.3, "y": 0.7}}
    (tmp_path / "w.json").write_text(json.dumps(weights), encoding="utf-8")
    rows, columns = [2, 0, 3, 1], [3, 1, 0, 2]
    shuffled = write_system(tmp_path / "y.csv", second[np.ix_(rows, columns)],
                            [QUERIES[r] for r in rows], [FILES[c] for c in columns])
    args = ["ensemble", "--apply", "-w", str(tmp_path / "w.json"), "-s", f"y={shuffled}",
            "-s", f"x={write_system(tmp_path / 'x.npz', first)}", "-o", str(tmp_path / "ens.csv"), "--json"]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.output)["n_queries"] == 4
    written = read_matrix(tmp_path / "ens.csv")
    assert written.queries == [QUERIES[r] for r in rows] and written.files == [FILES[c] for c in columns]
    expected = 0.3 * first + 0.7 * second
    np.testing.assert_array_equal(written.scores, expected[np.ix_(rows, columns)])


def test_apply_uses_stored_zscore(tmp_path):
    scores = np.random.default_rng(8).standard_normal((2, 4, 4))
    weights = {"format": WEIGHTS_FORMAT, "normalize": "zscore", "weights": {"x": 0.25, "y": 0.75}}
    (tmp_path / "w.json").write_text(json.dumps(weights), encoding="utf-8")
    options = [f"x={write_system(tmp_path / 'x.csv', scores[0])}", f"y={write_system(tmp_path / 'y.csv', scores[1])}"]
    write_matrix(ensembling.apply(read_weights(tmp_path / "w.json"), load(options)), tmp_path / "ens.npz")
    expected = 0.25 * named.zscore_rows(scores[0]) + 0.75 * named.zscore_rows(scores[1])
    np.testing.assert_array_equal(read_matrix(tmp_path / "ens.npz").scores, expected)


def test_mismatched_queries_or_files_name_the_file_and_the_item(tmp_path):
    base = write_system(tmp_path / "a.csv", np.zeros((4, 4)))
    other_query = write_system(tmp_path / "b.csv", np.zeros((4, 4)), ["q0", "q1", "q2", "other"])
    with pytest.raises(UserError, match=r"b\.csv: lacks the query 'q3' of .*a\.csv"):
        load([f"a={base}", f"b={other_query}"])
    extra_file = write_system(tmp_path / "c.csv", np.zeros((4, 5)), files=FILES + ["f4.wav"])
    with pytest.raises(UserError, match=r"c\.csv: has the audio file 'f4\.wav' that .*a\.csv lacks"):
        load([f"a={base}", f"c={extra_file}"])


def test_repeated_captions_align_occurrence_by_occurrence(tmp_path):
    repeated = write_system(tmp_path / "a.csv", np.arange(16.0).reshape(4, 4), ["dup", "x", "dup", "y"])
    shuffled = write_system(tmp_path / "b.csv", np.arange(16.0).reshape(4, 4)[[1, 0, 3, 2]], ["x", "dup", "y", "dup"])
    first, second = load([f"a={repeated}", f"b={shuffled}"])
    np.testing.assert_array_equal(second.matrix.scores, first.matrix.scores)
    once = write_system(tmp_path / "c.csv", np.zeros((4, 4)), ["dup", "x", "z", "y"])
    with pytest.raises(UserError, match=r"lacks the query 'dup' \(occurrence 2\)"):
        load([f"a={repeated}", f"c={once}"])


def test_weights_and_systems_must_name_the_same_systems(tmp_path):
    base = write_system(tmp_path / "a.csv", np.zeros((4, 4)))
    weights = {"format": WEIGHTS_FORMAT, "normalize": "none", "weights": {"a": 0.5, "b": 0.5}}
    (tmp_path / "w.json").write_text(json.dumps(weights), encoding="utf-8")
    with pytest.raises(UserError, match="weights name system 'b', which no --system gives"):
        ensembling.apply(read_weights(tmp_path / "w.json"), load([f"a={base}"]))
    with pytest.raises(UserError, match="--system 'c' has no weight"):
        ensembling.apply(read_weights(tmp_path / "w.json"), load([f"a={base}", f"b={base}", f"c={base}"]))
    (tmp_path / "bad.json").write_text('{"format": "something else"}', encoding="utf-8")
    with pytest.raises(UserError, match="not an ensemble weights file"):
        ensembling.apply(read_weights(tmp_path / "bad.json"), load([f"a={base}"]))


@pytest.mark.parametrize("extra, message", [
    (["-s", "a"], "expected NAME=PATH"),
    (["--step", "0.3"], "must divide 1"),
    (["-s", "a=A"], "'a' is given twice"),
])
def test_search_input_errors_exit_2_with_one_line(tmp_path, extra, message):
    base = write_system(tmp_path / "a.csv", np.zeros((4, 4)))
    args = ["ensemble", "--search", "-s", f"a={base}", "-s", f"b={base}", "-c", write_captions(tmp_path / "c.csv"),
            "-o", str(tmp_path / "w.json"), *extra]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 2 and message in outcome.output
    assert not (tmp_path / "w.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--search", "-s", "a=a.csv", "-c", "c.csv"], "at least 2 --system"),
    (["--search", "--apply", "-s", "a=a.csv"], "exactly one of --search"),
    (["-s", "a=a.csv"], "exactly one of --search"),
    (["--apply", "-s", "a=a.csv", "-w", "w.json", "--step", "0.1"], "--step belongs to --search"),
    (["--search", "-s", "a=a.csv", "-s", "b=a.csv", "-w", "w.json"], "--weights belongs to --apply"),
    (["--search", "-s", "a=a.csv", "-s", "b=a.csv"], "exactly one of --relevance (multi-relevant) or --captions"),
    (["--apply", "-s", "a=a.csv"], "give --weights"),
])
def test_cli_mode_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_system(tmp_path / "a.csv", np.zeros((4, 4)))
    write_captions(tmp_path / "c.csv")
    outcome = CliRunner().invoke(main, ["ensemble", *args, "-o", "out.json"])
    assert outcome.exit_code == 2 and message in outcome.output
    assert not (tmp_path / "out.json").exists()


def test_allow_missing_scores_only_the_queries_present(tmp_path):
    a, b = complementary_systems()
    options = [f"a={write_system(tmp_path / 'a.csv', a[:3], QUERIES[:3])}",
               f"b={write_system(tmp_path / 'b.csv', b[:3], QUERIES[:3])}"]
    args = ["ensemble", "--search", "-s", options[0], "-s", options[1], "-c", write_captions(tmp_path / "c.csv"),
            "--step", "0.1", "-o", str(tmp_path / "w.json"), "--json"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "1 of 4 queries are missing" in refused.output
    outcome = CliRunner().invoke(main, [*args, "--allow-missing"])
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.output)["validation"]["n_queries"] == 3


def test_oversized_grid_is_refused_before_reading_any_matrix(tmp_path):
    options = [f"s{i}={tmp_path / 'absent.csv'}" for i in range(8)]
    names = [name for name, _ in parse_system_options(options)]
    with pytest.raises(UserError, match="would visit 26075972546 weight points"):
        ensembling.plan_search(names, ensembling.SearchOptions(step=0.01))
    args = ["ensemble", "--search", *[arg for option in options for arg in ("-s", option)],
            "-c", str(tmp_path / "absent_captions.csv"), "--step", "0.01", "-o", str(tmp_path / "w.json")]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 2 and "would visit 26075972546 weight points" in outcome.output
    assert not (tmp_path / "w.json").exists()
