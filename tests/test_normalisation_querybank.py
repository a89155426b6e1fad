"""QB-Norm (``querybank``): a brute-force reference, a hub losing a query by hand, the activation set, that a row
depends on no other query, the bank checks, the weights file, and `evaluate` / `ensemble` / `package` with a bank."""

import json
import zipfile

import numpy as np
import pytest

from dcase_t6.common.errors import UserError
from dcase_t6.ensemble import search as ensembling
from dcase_t6.ensemble.systems import System
from dcase_t6.ensemble.weights import EnsembleWeights, read_weights, write_weights
from dcase_t6.retrieval import normalisation as norm
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import Relevance
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_csv, write_matrix
from dcase_t6.submission.package import CSV_KIND, member_name
from helpers.cli import refused, run_dcase
from helpers.submission import PDF, label, make_system

# By hand, T = 1 (scores = log of the values). The bank's three captions all rank hub.wav first, so A = {hub};
# its column sums are 6, 6, 12. Query 0 ("a dog barks") ranks the hub first (5 > 4): it is corrected to 4/6, 1/6,
# 5/12 and its own clip wins. Query 1 also starts at the hub and keeps it (3/12 > 1/6). Query 2 starts at rain.wav,
# outside A: its raw scores stay.
FILES = ["dog.wav", "rain.wav", "hub.wav"]
QUERIES = ["a dog barks", "rain falls", "a hub hums"]
SCORES = np.log(np.array([[4.0, 1.0, 5.0], [1.0, 1.0, 3.0], [2.0, 3.0, 1.0]]))
BANK = np.log(np.array([[4.0, 1.0, 5.0], [1.0, 4.0, 5.0], [1.0, 1.0, 2.0]]))
BANK_QUERIES = ["a training dog", "training rain", "a quiet room"]


def brute_force(scores: np.ndarray, bank: np.ndarray, temperature: float, top_k: int) -> np.ndarray:
    """QB-Norm row by row in plain Python, straight from the definition."""
    clips = scores.shape[1]
    active = set()
    for row in bank:
        order = sorted(range(clips), key=lambda clip: -row[clip])
        active.update(order[:top_k])
    sums = []
    for clip in range(clips):
        column = [value / temperature for value in bank[:, clip]]
        peak = max(column)
        sums.append(peak + np.log(sum(np.exp(value - peak) for value in column)))
    result = np.empty_like(scores, dtype=np.float64)
    for q, row in enumerate(scores):
        best = int(np.argmax(row))
        for clip in range(clips):
            result[q, clip] = row[clip] / temperature - (sums[clip] if best in active else 0.0)
    return result


@pytest.mark.parametrize("seed, top_k, temperature", [(0, 1, 0.1), (1, 2, 0.05), (2, 3, 1.0), (3, 1, 0.02),
                                                      (4, 7, 0.3)])
def test_the_vectorised_result_equals_the_brute_force_reference(seed, top_k, temperature):
    rng = np.random.default_rng(seed)
    scores, bank = rng.uniform(-1, 1, (9, 7)), rng.uniform(-1, 1, (13, 7))
    bank[:, 2] += 0.4  # a hub, so that some rows are corrected and (with k = 1) others are not
    expected = brute_force(scores, bank, temperature, top_k)
    np.testing.assert_allclose(norm.querybank_normalise(scores, bank, temperature, top_k), expected, rtol=0,
                               atol=1e-12)


def test_blocks_of_the_bank_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(5)
    scores, bank = rng.uniform(-1, 1, (6, 5)), rng.uniform(-1, 1, (40, 5))
    whole = norm.querybank_normalise(scores, bank, 0.1, 2)
    monkeypatch.setattr(norm, "_BLOCK_ELEMENTS", 10)  # blocks of 2 bank rows
    np.testing.assert_allclose(norm.querybank_normalise(scores, bank, 0.1, 2), whole, rtol=0, atol=1e-12)


def test_the_hub_loses_a_query_by_hand():
    assert list(norm.activation_set(BANK)) == [False, False, True]
    result = norm.querybank_normalise(SCORES, BANK, 1.0)
    np.testing.assert_allclose(np.exp(result[:2]), [[4 / 6, 1 / 6, 5 / 12], [1 / 6, 1 / 6, 3 / 12]], atol=1e-15)
    assert int(np.argmax(SCORES[0])) == 2 and int(np.argmax(result[0])) == 0  # the hub lost query 0
    assert int(np.argmax(result[1])) == 2  # query 1 keeps the hub: it really is its best clip
    np.testing.assert_array_equal(result[2], SCORES[2])  # rain.wav is no hub: raw scores (T = 1)


def test_a_query_whose_best_clip_is_outside_the_activation_set_keeps_its_raw_ranking():
    rng = np.random.default_rng(6)
    scores, bank = rng.uniform(-1, 1, (30, 8)), rng.uniform(-1, 1, (20, 8))
    bank[:, :3] += 2.0  # every bank caption's best clip is one of 0, 1, 2
    active = norm.activation_set(bank)
    assert not active[3:].any()
    result = norm.querybank_normalise(scores, bank, 0.05)
    outside = ~active[np.argmax(scores, axis=1)]
    assert outside.sum() > 10 and (~outside).sum() > 5
    np.testing.assert_array_equal(result[outside], scores[outside] / 0.05)
    assert (np.argsort(-result[outside], axis=1) == np.argsort(-scores[outside], axis=1)).all()
    assert not (np.argsort(-result[~outside], axis=1) == np.argsort(-scores[~outside], axis=1)).all()


def test_activation_set_of_the_k_best_clips():
    bank = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.7]])
    assert list(norm.activation_set(bank, 1)) == [True, False, False, True]
    assert list(norm.activation_set(bank, 2)) == [True, True, True, True]
    assert list(norm.activation_set(bank[:1], 2)) == [True, True, False, False]
    assert norm.activation_set(bank, 10).all()
    # every clip active: the inverted softmax over the bank on every row
    rng = np.random.default_rng(7)
    scores = rng.uniform(-1, 1, (5, 4))
    lse = norm.column_log_sum_exp(bank / 0.2)
    np.testing.assert_allclose(norm.querybank_normalise(scores, bank, 0.2, 4), scores / 0.2 - lse, atol=1e-12)


def test_a_row_does_not_depend_on_the_other_queries():
    rng = np.random.default_rng(8)
    scores, bank = rng.uniform(-1, 1, (25, 6)), rng.uniform(-1, 1, (30, 6))
    bank[:, 4] += 0.5
    whole = norm.querybank_normalise(scores, bank, 0.1)
    for kept in ([0], [3, 7, 11], list(range(0, 25, 2)), [24, 1]):
        np.testing.assert_array_equal(norm.querybank_normalise(scores[kept], bank, 0.1), whole[kept])
    # the inverted softmax, transductive, does change
    inverted = norm.inverted_softmax(scores, 0.1)
    assert not np.allclose(norm.inverted_softmax(scores[[3, 7, 11]], 0.1), inverted[[3, 7, 11]])


def test_bad_banks_are_refused():
    with pytest.raises(UserError, match="the query bank has no captions; write one with `dcase-t6 embed"):
        norm.querybank_normalise(SCORES, np.zeros((0, 3)), 1.0)
    with pytest.raises(UserError, match="not finite"):
        norm.querybank_normalise(SCORES, np.array([[0.0, np.nan, 1.0]]), 1.0)
    with pytest.raises(UserError, match="not finite"):
        norm.querybank_normalise(np.array([[0.0, np.inf, 1.0]]), BANK, 1.0)
    qb = norm.Normalisation("querybank", 1.0)
    with pytest.raises(UserError, match="m.csv: querybank normalisation .* needs the query bank .* --bank FILE"):
        norm.normalise(SCORES, qb, "m.csv")
    matrix = SimilarityMatrix(QUERIES, FILES, SCORES)
    other = norm.QueryBank(SimilarityMatrix(BANK_QUERIES, ["dog.wav", "rain.wav", "other.wav"], BANK), "b.npz")
    with pytest.raises(UserError, match="b.npz: lacks the clip 'hub.wav' of m.csv; make the bank against the scored "
                                        "split: `dcase-t6 embed RUN --split SPLIT --bank development-training`"):
        norm.normalise_matrix(matrix, qb, "m.csv", other)
    wider = norm.QueryBank(SimilarityMatrix(BANK_QUERIES, [*FILES, "x.wav"], np.zeros((3, 4))), "w.npz")
    with pytest.raises(UserError, match="w.npz: has the clip 'x.wav' that m.csv lacks"):
        norm.normalise_matrix(matrix, qb, "m.csv", wider)


def test_the_bank_columns_are_matched_by_clip_name():
    matrix = SimilarityMatrix(QUERIES, FILES, SCORES)
    order = [2, 0, 1]
    shuffled = norm.QueryBank(SimilarityMatrix(BANK_QUERIES, [FILES[i] for i in order], BANK[:, order]), "b.npz")
    qb = norm.Normalisation("querybank", 1.0)
    normalised = norm.normalise_matrix(matrix, qb, "m.csv", shuffled)
    np.testing.assert_array_equal(normalised.scores, norm.querybank_normalise(SCORES, BANK, 1.0))


def test_options_of_the_normalisation():
    assert norm.check_normalisation("querybank", 0.05, top_k=3) == norm.Normalisation("querybank", 0.05, top_k=3)
    with pytest.raises(UserError, match="--bank-top-k 0: the activation set of querybank takes"):
        norm.check_normalisation("querybank", 0.05, top_k=0)
    with pytest.raises(UserError, match="only querybank has an activation set"):
        norm.check_normalisation("inverted-softmax", 0.05, top_k=2)
    qb = norm.Normalisation("querybank", 0.05, top_k=2)
    assert qb.as_json() == {"method": "querybank", "temperature": 0.05, "top_k": 2}
    assert not qb.transductive and qb.note.startswith("not transductive")
    assert norm.Normalisation("dual-softmax", 0.1).note == norm.TRANSDUCTIVE_NOTE
    assert qb.describe() == "querybank normalisation (QB-Norm, T = 0.05, top-2 hubs)"


# --- the ensemble search and the weights file ---------------------------------------------------------------------
def test_search_and_apply_with_a_bank_per_system(tmp_path):
    rng = np.random.default_rng(9)
    queries, files = [f"q{i}" for i in range(12)], [f"f{i}.wav" for i in range(6)]
    relevance = Relevance(queries, [[files[i % 6]] for i in range(12)], tmp_path / "captions.csv")
    banks = {name: norm.QueryBank(SimilarityMatrix([f"b{i}" for i in range(10)], files[::-1],
                                                   rng.standard_normal((10, 6))), f"{name}.bank.npz")
             for name in ("a", "b")}
    systems = [System(name, SimilarityMatrix(queries, files, rng.standard_normal((12, 6))), f"{name}.npz",
                      banks[name]) for name in ("a", "b")]
    options = ensembling.SearchOptions(normalize="querybank", step=0.25, temperatures=(0.1, 1.0), top_k=2)
    found = ensembling.search(systems, relevance, options)
    assert found.weights.top_k == 2 and found.weights.banks == {"a": "a.bank.npz", "b": "b.bank.npz"}
    applied = ensembling.apply(found.weights, systems)
    t = found.weights.temperature
    by_hand = sum(found.weights.weights[s.name] * norm.querybank_normalise(
        s.matrix.scores, s.bank.matrix.scores[:, ::-1], t, 2) for s in systems)
    np.testing.assert_allclose(applied.scores, by_hand, atol=1e-12)
    assert evaluate(applied, relevance).scores["mAP@16"] == found.weights.validation.scores["mAP@16"]
    with pytest.raises(UserError, match="system 'b' has no query bank; give --bank b=BANK.npz"):
        ensembling.apply(found.weights, [systems[0], System("b", systems[1].matrix, "b.npz")])
    write_weights(found.weights, tmp_path / "w.json")
    again = read_weights(tmp_path / "w.json")
    assert again == found.weights and again.normalisation == norm.Normalisation("querybank", t, top_k=2)
    document = json.loads((tmp_path / "w.json").read_text(encoding="utf-8"))
    assert document["normalize"] == "querybank" and document["top_k"] == 2


@pytest.mark.parametrize("document, message", [
    ({"weights": {"s": 1}, "normalize": "inverted-softmax", "temperature": 1, "top_k": 2}, '"top_k" applies only'),
    ({"weights": {"s": 1}, "normalize": "querybank", "temperature": 1, "top_k": 0}, '"top_k" must be a whole'),
    ({"weights": {"s": 1}, "normalize": "querybank"}, 'needs "temperature"'),
])
def test_weights_reader_checks_top_k(tmp_path, document, message):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(UserError, match=f"w\\.json: .*{message}"):
        read_weights(path)
    assert read_weights_default(tmp_path).top_k == 1


def read_weights_default(tmp_path):
    path = tmp_path / "default.json"
    path.write_text(json.dumps({"weights": {"s": 1}, "normalize": "querybank", "temperature": 0.5}), encoding="utf-8")
    return read_weights(path).normalisation


# --- the command line ---------------------------------------------------------------------------------------------
def qb_files(folder):
    matrix, bank, captions = folder / "m.csv", folder / "bank.npz", folder / "captions.csv"
    write_matrix(SimilarityMatrix(QUERIES, FILES, SCORES), matrix)
    write_matrix(SimilarityMatrix(BANK_QUERIES, FILES, BANK), bank)
    captions.write_text("file_name,caption_1\ndog.wav,a dog barks\nrain.wav,rain falls\nhub.wav,a hub hums\n",
                        encoding="utf-8")
    return str(matrix), str(bank), str(captions)


def test_evaluate_and_ensemble_cli_with_a_bank(tmp_path):
    matrix, bank, captions = qb_files(tmp_path)
    raw = json.loads(run_dcase("evaluate", "-p", matrix, "-c", captions, "--json").output)
    assert raw["R@1"] == 0.0  # the hub takes queries 0 and 1, rain.wav query 2
    direct = run_dcase("evaluate", "-p", matrix, "-c", captions, "--normalise", "querybank", "--temperature", 1,
                       "--bank", bank, "--json")
    assert direct.exit_code == 0, direct.output
    result = json.loads(direct.output)
    assert result["R@1"] == pytest.approx(1 / 3) and result["normalize"] == {"method": "querybank",
                                                                             "temperature": 1.0, "top_k": 1}
    text = run_dcase("evaluate", "-p", f"x={matrix}", "-p", f"y={matrix}", "-c", captions, "--normalise",
                     "querybank", "--temperature", 1, "--bank", f"x={bank}", "--bank", f"y={bank}",
                     "--direction", "t2a")
    assert text.exit_code == 0 and "not transductive" in text.output, text.output

    weights = tmp_path / "qb.json"
    searched = run_dcase("ensemble", "--search", "-s", f"m={matrix}", "--bank", f"m={bank}", "-c", captions,
                         "--normalise", "querybank", "--temperatures", "0.5,1", "--out", weights, "--json")
    assert searched.exit_code == 0, searched.output
    stored = json.loads(searched.output)
    assert stored["normalize"] == "querybank" and stored["top_k"] == 1 and stored["banks"] == {"m": bank}
    applied = tmp_path / "applied.npz"
    assert run_dcase("ensemble", "--apply", "-w", weights, "-s", f"m={matrix}", "--bank", f"m={bank}", "--out",
                     applied).exit_code == 0
    np.testing.assert_array_equal(np.load(applied)["scores"],
                                  norm.querybank_normalise(SCORES, BANK, stored["temperature"]))
    from_file = run_dcase("evaluate", "-p", matrix, "-c", captions, "--normalise-from", weights, "--bank", bank,
                          "--json")
    assert json.loads(from_file.output)["normalize"]["method"] == "querybank"


@pytest.mark.parametrize("args, fragment", [
    (["--normalise", "querybank", "--temperature", "1"], "system m.csv has no query bank; give --bank BANK.npz"),
    (["--normalise", "inverted-softmax", "--temperature", "1", "--bank", "bank.npz"], "--bank goes with --normalize "
                                                                                      "querybank"),
    (["--normalise", "inverted-softmax", "--temperature", "1", "--bank-top-k", "2"], "--bank-top-k 2: only"),
    (["--normalise", "querybank", "--temperature", "1", "--bank", "bank.npz", "--bank-top-k", "0"],
     "--bank-top-k 0: the activation set"),
    (["--normalise", "querybank", "--temperature", "1", "--bank", "other.npz"], "other.npz: lacks the clip"),
])
def test_evaluate_refuses_bad_bank_options(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    qb_files(tmp_path)
    write_matrix(SimilarityMatrix(BANK_QUERIES, ["a.wav", "b.wav", "c.wav"], BANK), tmp_path / "other.npz")
    refused(run_dcase("evaluate", "-p", "m.csv", "-c", "captions.csv", *args), fragment)


def test_ensemble_refuses_bad_bank_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    matrix, bank, captions = qb_files(tmp_path)
    base = ["ensemble", "--search", "-s", f"m={matrix}", "-c", captions, "--out", "w.json"]
    refused(run_dcase(*base, "--normalise", "querybank"), "system 'm' has no query bank; give --bank m=BANK.npz")
    refused(run_dcase(*base, "--normalise", "querybank", "--bank", f"z={bank}"), "no --system is named 'z'")
    refused(run_dcase(*base, "--normalise", "inverted-softmax", "--bank", f"m={bank}"), "only --normalize querybank")
    refused(run_dcase(*base, "--normalise", "dual-softmax", "--bank-top-k", "2"), "--bank-top-k 2: only")


def test_package_writes_the_querybank_matrix_and_says_it_is_not_transductive(tmp_path):
    system = make_system(tmp_path, 1)
    original = read_csv(system.predictions)
    rng = np.random.default_rng(10)
    bank = tmp_path / "eval.bank.npz"
    write_matrix(SimilarityMatrix([f"b{i}" for i in range(8)], original.files,
                                  rng.uniform(-1, 1, (8, len(original.files)))), bank)
    report, weights, out = tmp_path / "report.pdf", tmp_path / "qb.json", tmp_path / "submission.zip"
    report.write_bytes(PDF)
    write_weights(EnsembleWeights({"s": 1.0}, "querybank", temperature=0.5, top_k=1), weights)
    base = ["package", "-l", system.label, "-p", system.predictions, "-m", system.meta, "--report", report,
            "--normalise-from", weights, "--out", out]
    refused(run_dcase(*base), "has no query bank; give --bank BANK.npz")
    built = run_dcase(*base, "--bank", bank)
    assert built.exit_code == 0, built.output
    assert "QB-Norm, T = 0.5" in built.output and "not transductive" in built.output
    with zipfile.ZipFile(out) as archive:
        (tmp_path / "packed.csv").write_bytes(archive.read(member_name(label(1), CSV_KIND)))
    packed = read_csv(tmp_path / "packed.csv")
    bank_scores = np.load(bank)["scores"]
    np.testing.assert_array_equal(packed.scores, norm.querybank_normalise(original.scores, bank_scores, 0.5))


# --- embed --bank -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tiny_training, tmp_path_factory) -> dict:
    """A tiny run (1 epoch on the synthetic clips, no validation) and its work directory."""
    from dcase_t6.runs.config import build_config
    from dcase_t6.training import trainer as training

    workdir = tmp_path_factory.mktemp("querybank") / "work"
    run = training.train_new(workdir, build_config(None, {**tiny_training, "name": "qb",
                                                          "validation_split": "null"})).run
    return {"workdir": workdir, "run": run, "data": tiny_training["data_root"]}


def test_embed_writes_a_bank_that_evaluate_uses(tiny_run, tmp_path):
    from dcase_t6.data.layout import Layout
    from dcase_t6.data.split_index import load_split
    from dcase_t6.retrieval.matrices import read_matrix
    from dcase_t6.runs.registry import Registry
    from helpers.cli import cli, cli_error

    workdir, run, data = tiny_run["workdir"], tiny_run["run"], tiny_run["data"]
    common = ["--data-root", data, "--dataset", "synthetic", "--batch-size", 4]
    assert "the bank must not be the scored split synthetic/development-testing" in cli_error(
        workdir, "embed", run, *common, "--split", "development-testing", "--bank", "development-testing")
    # the bank first: its captions are embedded now (no training embeddings exist yet)
    written = cli(workdir, "embed", run, *common, "--split", "development-testing", "--bank", "development-training",
                  "--json")
    training = cli(workdir, "embed", run, *common, "--split", "development-training", "--json")
    bank, scored = read_matrix(written["bank"]), read_matrix(written["similarity"])
    assert written["bank"].endswith("synthetic.development-testing.bank.npz")
    captions = load_split(data, "synthetic", "development-training").queries
    assert bank.queries == list(dict.fromkeys(captions)) and bank.files == scored.files
    # the vectors embed writes for the training split, against the dev-test clips' audio
    with np.load(training["embeddings"]) as text, np.load(written["embeddings"]) as audio:
        row_of = {caption: row for row, caption in enumerate(text["queries"].tolist())}
        expected = text["text"][[row_of[q] for q in bank.queries]].astype(np.float64) @ \
            audio["audio"].astype(np.float64).T
    np.testing.assert_allclose(bank.scores, expected, atol=1e-5)
    again = cli(workdir, "embed", run, *common, "--split", "development-testing", "--bank", "synthetic/"
                "development-training", "--json")  # now the training split's text vectors are reused
    np.testing.assert_allclose(read_matrix(again["bank"]).scores, expected, atol=1e-12)
    assert Registry(workdir).has_file(run, "bank", "synthetic/development-testing")
    relevance = Layout.at(data).relevance_file("synthetic")
    evaluated = cli(workdir, "evaluate", "-p", f"{run}:synthetic/development-testing", "-r", relevance,
                    "--normalise", "querybank", "--temperature", 0.05, "--bank", written["bank"], "--json")
    assert evaluated["normalize"]["method"] == "querybank" and 0.0 <= evaluated["mAP@16"] <= 1.0
    registered = cli(workdir, "evaluate", "-p", written["similarity"], "-r", relevance, "--normalise", "querybank",
                     "--temperature", 0.05, "--bank", f"{run}:synthetic/development-testing", "--json")
    assert registered == evaluated  # the bank named as RUN:DATASET/SPLIT


def test_embed_of_an_exported_model_writes_the_same_bank(tiny_run, tmp_path):
    from dcase_t6.retrieval.matrices import read_matrix
    from helpers.cli import cli

    workdir, run, data = tiny_run["workdir"], tiny_run["run"], tiny_run["data"]
    common = ["--data-root", data, "--dataset", "synthetic", "--batch-size", 4, "--split", "development-testing",
              "--bank", "development-training", "--json"]
    registered = cli(workdir, "embed", run, *common)
    cli(workdir, "export", run, "--out", tmp_path / "exported")
    exported = cli(tmp_path / "unused", "embed", "--model", tmp_path / "exported", "--out", tmp_path / "emb", *common)
    assert exported["bank"] == str(tmp_path / "emb" / "synthetic.development-testing.bank.npz")
    ours, theirs = read_matrix(registered["bank"]), read_matrix(exported["bank"])
    assert ours.queries == theirs.queries and ours.files == theirs.files
    np.testing.assert_allclose(theirs.scores, ours.scores, atol=1e-6)
