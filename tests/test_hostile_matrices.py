"""Hostile inputs for the similarity-matrix readers, `evaluate` and `ensemble`, through the command line.

Every refusal must be: exit code 2, one line naming the file and the row/field/entry with the fix, no
traceback (the exception is click's SystemExit), no input changed and nothing half-written.
"""

import io
import json
import os
import pathlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.ensemble.grid import simplex_grid
from dcase_t6.ensemble.systems import weighted_sum
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import read_captions_file
from dcase_t6.retrieval.matrices import FIELD_LIMIT, SimilarityMatrix, read_matrix, write_matrix

FILES = ["f0.wav", "f1.wav", "f2.wav", "f3.wav"]
QUERIES = ["q0", "q1", "q2", "q3"]
BIG = 1 << 20  # a 1 MiB cell: over the 128 KiB field limit, small enough for a quick test


def run(*args: str):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_refused(result, *fragments: str) -> str:
    """Exit 2, one line starting with 'error:', every fragment in it, no traceback."""
    message = result.output.strip()
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and "\n" not in message and message.startswith("error:")
    for fragment in fragments:
        assert fragment in message
    return message


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def write_captions(path: Path, queries=QUERIES, files=FILES) -> Path:
    path.write_text("file_name,caption_1\n" + "".join(f"{f},{q}\n" for f, q in zip(files, queries)), encoding="utf-8")
    return path


def csv_text(rows: list[list[str]], header: list[str] | None = None) -> str:
    lines = [",".join(header or ["index", *FILES])] + [",".join(row) for row in rows]
    return "\r\n".join(lines) + "\r\n"


def good_rows() -> list[list[str]]:
    return [[query] + [repr(float(value)) for value in row] for query, row in zip(QUERIES, np.eye(4))]


def with_cell(row: int, column: int, value: str) -> str:
    rows = good_rows()
    rows[row][column] = value
    return csv_text(rows)


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def good_npz(**overrides) -> bytes:
    arrays = {"scores": np.eye(4), "queries": np.array(QUERIES), "files": np.array(FILES)}
    arrays.update(overrides)
    return npz_bytes(**{name: value for name, value in arrays.items() if value is not None})


def huge_shape_npz() -> bytes:
    """A scores member whose .npy header claims 10^6 x 10^6 float64 (8 TB) over 128 bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (1000000, 1000000)})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("scores.npy", header.getvalue() + np.eye(4).tobytes())
        for name, array in (("queries", np.array(QUERIES)), ("files", np.array(FILES))):
            member = io.BytesIO()
            np.lib.format.write_array(member, array)
            zipped.writestr(f"{name}.npy", member.getvalue())
    return archive.getvalue()


def bad_crc_npz() -> bytes:
    data = bytearray(good_npz())
    data[data.find(b"\x93NUMPY") + 200] ^= 0xFF  # a byte of the scores data: the stored CRC no longer matches
    return bytes(data)


def bare_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.eye(4))
    return buffer.getvalue()


BROKEN_MATRICES = [
    # --- CSV ---
    pytest.param("bad.csv", csv_text([]), ["the header names 4 audio files but no query rows follow"],
                 id="csv-header-only"),
    pytest.param("bad.csv", "", ["the file is empty"], id="csv-empty-file"),
    pytest.param("bad.csv", with_cell(1, 2, "nan"), ["row 3, column 3 ('f1.wav') holds 'nan', not a number"],
                 id="csv-nan-cell"),
    pytest.param("bad.csv", with_cell(1, 2, "inf"), ["row 3, column 3 ('f1.wav') is inf"], id="csv-inf-cell"),
    pytest.param("bad.csv", with_cell(1, 2, "-inf"), ["row 3, column 3 ('f1.wav') is -inf"], id="csv-neg-inf-cell"),
    pytest.param("bad.csv", with_cell(1, 2, "1e400"), ["row 3, column 3 ('f1.wav') is inf"], id="csv-overflow-cell"),
    pytest.param("bad.csv", with_cell(2, 3, "high"), ["row 4, column 4 ('f2.wav') holds 'high', not a number"],
                 id="csv-text-cell"),
    pytest.param("bad.csv", with_cell(2, 3, ""), ["row 4, column 4 ('f2.wav') is empty"], id="csv-empty-cell"),
    pytest.param("bad.csv", csv_text([row + ["0.5"] if index == 1 else row for index, row in enumerate(good_rows())]),
                 ["malformed CSV", "Expected 5 fields in line 3, saw 6", "every row needs 1 + 4 fields"],
                 id="csv-row-with-too-many-fields"),
    pytest.param("bad.csv", csv_text([row + ["0.5"] for row in good_rows()]),
                 ["found 5 score columns but the header names 4 files"], id="csv-every-row-too-long"),
    pytest.param("bad.csv", csv_text([row[:-1] if index == 2 else row for index, row in enumerate(good_rows())]),
                 ["row 4, column 5 ('f3.wav') is empty (short row or missing score)"],
                 id="csv-row-with-too-few-fields"),
    pytest.param("bad.csv", csv_text(good_rows()) + '"q4,1,2,3,4\r\n', ["malformed CSV", "EOF inside string"],
                 id="csv-unterminated-quote"),
    pytest.param("bad.csv", csv_text(good_rows(), ["index", "f0.wav", "x" * BIG, "f2.wav", "f3.wav"]),
                 ["row 1 (the header) is not CSV", "field larger than field limit"], id="csv-huge-header-field"),
    pytest.param("bad.csv", csv_text(good_rows()[:2] + [["y" * BIG, "0", "0", "1", "0"]]),
                 [f"row 4, column 1 (the query text) is {BIG} characters long (more than {FIELD_LIMIT})"],
                 id="csv-huge-query-field"),
    pytest.param("bad.csv", with_cell(2, 1, "z" * BIG),
                 ["row 4, column 2 ('f0.wav') holds 'zzz", f"({BIG} characters)"], id="csv-huge-text-score-cell"),
    pytest.param("bad.csv", with_cell(1, 0, "q\x001"), ["row 3, column 1 (the query text) holds a NUL character"],
                 id="csv-nul-byte-in-query"),
    pytest.param("bad.csv", csv_text(good_rows(), ["index", "f0.wav", "", "f2.wav", "f3.wav"]),
                 ["header cell 3 (an audio file name) is empty"], id="csv-empty-file-name"),
    pytest.param("bad.csv", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
                 ["not UTF-8 text", "save the CSV as UTF-8"], id="csv-binary-garbage"),
    pytest.param("bad.csv", (csv_text(good_rows()) * 2000).encode() + b"q9,\xff\xfe,1,2,3\r\n",
                 ["not UTF-8 text after the header", "save the CSV as UTF-8"], id="csv-garbage-after-valid-rows"),
    # --- .npz ---
    pytest.param("bad.npz", good_npz()[: len(good_npz()) // 2], ["not an .npz (zip) archive", "numpy.savez"],
                 id="npz-truncated"),
    pytest.param("bad.npz", good_npz()[:-30], ["not an .npz (zip) archive"], id="npz-truncated-tail"),
    pytest.param("bad.npz", b"", ["not an .npz (zip) archive"], id="npz-empty-file"),
    pytest.param("bad.npz", csv_text(good_rows()), ["not an .npz (zip) archive"], id="npz-csv-text-inside"),
    pytest.param("bad.npz", bare_npy(), ["not an .npz (zip) archive"], id="npz-bare-npy-inside"),
    pytest.param("bad.npz", bad_crc_npz(), ["array 'scores' cannot be read (Bad CRC-32", "truncated or corrupt"],
                 id="npz-corrupt-member"),
    pytest.param("bad.npz", huge_shape_npz(), ["array 'scores' declares shape (1000000, 1000000)",
                                               "but the member holds 256 bytes"], id="npz-header-claims-8-TB"),
    pytest.param("bad.npz", good_npz(files=None), ["missing arrays ['files']"], id="npz-missing-array"),
    pytest.param("bad.npz", good_npz(queries=np.array(QUERIES, dtype=object)),
                 ["array 'queries' holds Python objects (dtype object), which are never unpickled"],
                 id="npz-object-queries"),
    pytest.param("bad.npz", good_npz(scores=np.eye(4).astype(object)), ["array 'scores' holds Python objects"],
                 id="npz-object-scores"),
    pytest.param("bad.npz", good_npz(scores=np.eye(4).astype(str)),
                 ["array 'scores' is 2-D of dtype <U32", "must be a 2-D array of floats"], id="npz-string-scores"),
    pytest.param("bad.npz", good_npz(scores=np.eye(4) + 1j), ["array 'scores' is 2-D of dtype complex128"],
                 id="npz-complex-scores"),
    pytest.param("bad.npz", good_npz(scores=np.eye(4, dtype=bool)), ["array 'scores' is 2-D of dtype bool"],
                 id="npz-bool-scores"),
    pytest.param("bad.npz", good_npz(scores=np.eye(4).ravel()), ["array 'scores' is 1-D of dtype float64"],
                 id="npz-1d-scores"),
    pytest.param("bad.npz", good_npz(scores=np.eye(4)[None]), ["array 'scores' is 3-D"], id="npz-3d-scores"),
    pytest.param("bad.npz", good_npz(scores=np.eye(4)[:3]), ["array 'scores' has shape (3, 4) but there are 4 queries"],
                 id="npz-shape-mismatch"),
    pytest.param("bad.npz", good_npz(scores=np.zeros((0, 4)), queries=np.array([], dtype=str)),
                 ["array 'scores' has shape (0, 4)", "neither empty"], id="npz-zero-queries"),
    pytest.param("bad.npz", good_npz(queries=np.arange(4)), ["array 'queries' is 1-D of dtype int64",
                                                             "1-D array of str"], id="npz-numeric-queries"),
    pytest.param("bad.npz", good_npz(queries=np.array([q.encode() for q in QUERIES])),
                 ["array 'queries' is 1-D of dtype |S2"], id="npz-bytes-queries"),
    pytest.param("bad.npz", good_npz(queries=np.array(QUERIES).reshape(2, 2)), ["array 'queries' is 2-D"],
                 id="npz-2d-queries"),
    pytest.param("bad.npz", good_npz(files=np.array("f0.wav")), ["array 'files' is 0-D"], id="npz-scalar-files"),
    pytest.param("bad.npz", good_npz(queries=np.array(["q0", "", "q2", "q3"])),
                 ["entry 1 of array 'queries' is empty"], id="npz-empty-query"),
    pytest.param("bad.npz", good_npz(scores=np.where(np.eye(4) > 0, np.nan, 0.0)),
                 ["row 2, column 2 ('f0.wav') is nan"], id="npz-nan-scores"),
]


@pytest.mark.parametrize(("name", "content", "fragments"), BROKEN_MATRICES)
def test_broken_matrix_is_refused_in_one_line(tmp_path, name, content, fragments):
    bad = tmp_path / name
    bad.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    captions = write_captions(tmp_path / "captions.csv")
    before = snapshot(tmp_path)
    message = assert_refused(run("evaluate", "-p", bad, "-c", captions, "--per-query", tmp_path / "pq.csv"),
                             str(bad), *fragments)
    assert len(message) < 600  # a huge cell is never echoed whole
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


def test_npz_pickle_payload_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = np.empty(4, dtype=object)
    payload[:] = QUERIES
    payload[0] = _Touch(str(marker))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good_npz(queries=payload))
    with np.load(bad, allow_pickle=True) as unsafe:  # the payload is live: an unsafe load runs it
        unsafe["queries"]
    assert marker.exists()
    marker.unlink()
    assert_refused(run("evaluate", "-p", bad, "-c", write_captions(tmp_path / "c.csv")),
                   "array 'queries' holds Python objects")
    assert not marker.exists()


class _Touch:
    """Unpickling this creates a file: proof that a loader ran pickled code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_valid_npz_of_every_writer_still_reads(tmp_path):
    """The checks refuse broken files only: savez, savez_compressed, float32 scores and Fortran order read back."""
    scores = np.asfortranarray(np.random.default_rng(1).standard_normal((4, 4)))
    for name, writer, array in (("plain.npz", np.savez, scores), ("zipped.npz", np.savez_compressed, scores),
                                ("single.npz", np.savez, scores.astype(np.float32))):
        with open(tmp_path / name, "wb") as handle:
            writer(handle, scores=array, queries=np.array(QUERIES), files=np.array(FILES))
        matrix = read_matrix(tmp_path / name)
        assert matrix.queries == QUERIES and matrix.files == FILES
        np.testing.assert_array_equal(matrix.scores, array.astype(np.float64))


# --- outputs that are inputs ------------------------------------------------------------------------
def _same_file_spellings(folder: Path, target: Path) -> dict[str, Path]:
    (folder / "sub").mkdir(exist_ok=True)
    link = folder / "link.csv"
    link.symlink_to(target)
    hard = folder / "hard.csv"
    os.link(target, hard)
    return {"same-path": target, "dot-dot": folder / "sub" / ".." / target.name, "symlink": link, "hard-link": hard}


@pytest.mark.parametrize("spelling", ["same-path", "dot-dot", "symlink", "hard-link"])
def test_evaluate_per_query_onto_the_predictions_is_refused(tmp_path, spelling):
    predictions = tmp_path / "pred.csv"
    write_matrix(SimilarityMatrix(QUERIES, FILES, np.eye(4)), predictions)
    captions = write_captions(tmp_path / "captions.csv")
    out = _same_file_spellings(tmp_path, predictions)[spelling]
    before = snapshot(tmp_path)
    assert_refused(run("evaluate", "-p", predictions, "-c", captions, "--per-query", out),
                   f"--per-query {out}", "the same file as the input --predictions", "choose another --per-query")
    assert snapshot(tmp_path) == before
    assert read_matrix(predictions).shape == (4, 4)


def test_evaluate_per_query_onto_the_captions_is_refused(tmp_path):
    predictions = tmp_path / "pred.csv"
    write_matrix(SimilarityMatrix(QUERIES, FILES, np.eye(4)), predictions)
    captions = write_captions(tmp_path / "captions.csv")
    before = snapshot(tmp_path)
    assert_refused(run("evaluate", "-p", predictions, "-c", captions, "--per-query", captions),
                   "the same file as the input --captions")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["system", "weights"])
def test_ensemble_apply_out_onto_an_input_is_refused(tmp_path, target):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_matrix(SimilarityMatrix(QUERIES, FILES, np.eye(4)), a)
    write_matrix(SimilarityMatrix(QUERIES, FILES, np.ones((4, 4))), b)
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"weights": {"a": 0.5, "b": 0.5}}), encoding="utf-8")
    out = b if target == "system" else weights
    before = snapshot(tmp_path)
    expected = "--system b" if target == "system" else "--weights"
    assert_refused(run("ensemble", "--apply", "-w", weights, "-s", f"a={a}", "-s", f"b={b}", "--out", out),
                   f"--out {out}", f"the same file as the input {expected}")
    assert snapshot(tmp_path) == before


def test_ensemble_search_out_onto_a_system_is_refused(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_matrix(SimilarityMatrix(QUERIES, FILES, np.eye(4)), a)
    write_matrix(SimilarityMatrix(QUERIES, FILES, np.ones((4, 4))), b)
    captions = write_captions(tmp_path / "captions.csv")
    before = snapshot(tmp_path)
    assert_refused(run("ensemble", "--search", "-s", f"a={a}", "-s", f"b={b}", "-c", captions, "--out", a),
                   "the same file as the input --system a")
    assert snapshot(tmp_path) == before


# --- ensembles of systems that score repeated captions differently ----------------------------------------
def repeated_caption_case(folder: Path, seed: int = 2) -> tuple[Path, Path, Path, list[str]]:
    """24 clips whose first 12 form 6 pairs sharing a caption (as in Clotho). System a is a text model
    (identical rows for a repeated caption); system b scores the two occurrences differently."""
    rng = np.random.default_rng(seed)
    files = [f"f{i}.wav" for i in range(24)]
    queries = [f"q{i}" for i in range(24)]
    for i in range(0, 12, 2):
        queries[i] = queries[i + 1] = f"dup {i}"
    a, b = rng.standard_normal((2, 24, 24)) + 0.8 * np.eye(24)
    a[1:12:2] = a[0:12:2]
    write_matrix(SimilarityMatrix(queries, files, a), folder / "a.csv")
    write_matrix(SimilarityMatrix(queries, files, b), folder / "b.csv")
    return folder / "a.csv", folder / "b.csv", write_captions(folder / "captions.csv", queries, files), queries


def search_and_apply(folder: Path, systems: list[tuple[str, Path]], captions: Path, tag: str) -> tuple[dict, float]:
    options = [arg for name, path in systems for arg in ("-s", f"{name}={path}")]
    searched = run("ensemble", "--search", *options, "-c", captions, "--step", "0.1", "--out",
                   folder / f"w_{tag}.json", "--json")
    assert searched.exit_code == 0, searched.output
    applied = run("ensemble", "--apply", "-w", folder / f"w_{tag}.json", *options, "--out", folder / f"e_{tag}.csv")
    assert applied.exit_code == 0, applied.output
    evaluated = run("evaluate", "-p", folder / f"e_{tag}.csv", "-c", captions, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    return json.loads(searched.output), json.loads(evaluated.output)["mAP@16"]


def test_repeated_captions_search_is_independent_of_system_order(tmp_path):
    a, b, captions, _ = repeated_caption_case(tmp_path)
    first, _ = search_and_apply(tmp_path, [("a", a), ("b", b)], captions, "ab")
    second, _ = search_and_apply(tmp_path, [("b", b), ("a", a)], captions, "ba")
    assert first["weights"] == second["weights"] == {"a": 0.3, "b": 0.7}
    assert first["candidates"] == second["candidates"]
    assert first["validation"] == second["validation"]


def test_repeated_captions_exact_score_equals_evaluate_on_the_applied_matrix(tmp_path):
    a, b, captions, queries = repeated_caption_case(tmp_path)
    found, evaluated = search_and_apply(tmp_path, [("a", a), ("b", b)], captions, "ab")
    assert found["candidates"][0]["mAP@16"] == found["validation"]["mAP@16"] == evaluated
    # brute force: `evaluate` on the applied matrix of every grid point; the search picked a maximum
    scores = np.stack([read_matrix(a).scores, read_matrix(b).scores])
    truth = read_captions_file(captions)
    files = read_matrix(a).files
    brute = [evaluate(SimilarityMatrix(queries, files, weighted_sum(scores, point)), truth).scores["mAP@16"]
             for point in simplex_grid(2, 10)]
    assert evaluated == max(brute) == pytest.approx(0.3122549903799904, abs=1e-15)
    for candidate in found["candidates"]:
        point = [candidate["weights"]["a"], candidate["weights"]["b"]]
        expected = evaluate(SimilarityMatrix(queries, files, weighted_sum(scores, point)), truth).scores["mAP@16"]
        assert candidate["mAP@16"] == expected


def test_repeated_caption_scored_once_by_one_system_is_used_for_every_occurrence(tmp_path):
    a, b, captions, queries = repeated_caption_case(tmp_path)
    once = tmp_path / "once.csv"  # system a with each repeated caption's duplicate rows removed
    matrix = read_matrix(a)
    keep = [row for row, query in enumerate(queries) if queries.index(query) == row]
    write_matrix(SimilarityMatrix([queries[row] for row in keep], matrix.files, matrix.scores[keep]), once)
    with_duplicates, _ = search_and_apply(tmp_path, [("a", a), ("b", b)], captions, "ab")
    deduplicated, evaluated = search_and_apply(tmp_path, [("a", once), ("b", b)], captions, "once")
    assert deduplicated["weights"] == with_duplicates["weights"]
    assert deduplicated["candidates"][0]["mAP@16"] == evaluated == with_duplicates["validation"]["mAP@16"]


def test_repeated_caption_with_conflicting_distinct_rows_is_refused(tmp_path):
    a, b, captions, queries = repeated_caption_case(tmp_path)
    third = tmp_path / "c.csv"  # 'dup 0' three times with different scores where b has it twice
    matrix = read_matrix(b)
    write_matrix(SimilarityMatrix(queries + ["dup 0"], matrix.files, np.vstack([matrix.scores, matrix.scores[:1] + 1])),
                 third)
    before = snapshot(tmp_path)
    assert_refused(run("ensemble", "--search", "-s", f"b={b}", "-s", f"c={third}", "-c", captions, "--out",
                       tmp_path / "w.json"), str(third), "has the query 'dup 0' (occurrence 3)", "same queries")
    assert snapshot(tmp_path) == before


def test_all_zero_weights_are_refused(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_matrix(SimilarityMatrix(QUERIES, FILES, np.eye(4)), a)
    write_matrix(SimilarityMatrix(QUERIES, FILES, np.ones((4, 4))), b)
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"weights": {"a": 0, "b": 0.0}}), encoding="utf-8")
    before = snapshot(tmp_path)
    assert_refused(run("ensemble", "--apply", "-w", weights, "-s", f"a={a}", "-s", f"b={b}", "--out",
                       tmp_path / "ens.csv"), str(weights), "every \"weights\" entry is 0", "positive weight")
    assert snapshot(tmp_path) == before


def test_weights_that_make_repeated_rows_identical_are_rescored_as_evaluate_aligns_them(tmp_path):
    """'dup 0' is the caption of 3 clips but has 2 rows in the systems (identical in a, different in b); with
    --allow-missing the search skips its 3rd occurrence, but weight 0 on b makes the rows identical and then
    `evaluate` uses the one row for all 3 occurrences: every candidate's score must still be `evaluate`'s."""
    rng = np.random.default_rng(5)
    files = [f"f{i}.wav" for i in range(24)]
    captions = [f"q{i}" for i in range(24)]
    for i in range(0, 12, 2):
        captions[i] = captions[i + 1] = f"dup {i}"
    captions[12] = "dup 0"
    queries = captions[:12] + captions[13:]  # the systems lack row 12: 'dup 0' twice
    a, b = rng.standard_normal((2, 23, 24)) + 0.8 * np.eye(24)[[*range(12), *range(13, 24)]]
    a[1:12:2] = a[0:12:2]
    write_matrix(SimilarityMatrix(queries, files, a), tmp_path / "a.csv")
    write_matrix(SimilarityMatrix(queries, files, b), tmp_path / "b.csv")
    caption_file = write_captions(tmp_path / "captions.csv", captions, files)
    searched = run("ensemble", "--search", "-s", f"b={tmp_path / 'b.csv'}", "-s", f"a={tmp_path / 'a.csv'}",
                   "-c", caption_file, "--step", "0.1", "--top", "11", "--allow-missing", "--out", tmp_path / "w.json",
                   "--json")
    assert searched.exit_code == 0, searched.output
    truth = read_captions_file(caption_file)
    scored = {}
    for candidate in json.loads(searched.output)["candidates"]:
        point = [candidate["weights"]["a"], candidate["weights"]["b"]]
        applied = SimilarityMatrix(queries, files, weighted_sum(np.stack([a, b]), point))
        result = evaluate(applied, truth, allow_missing=True)
        assert candidate["mAP@16"] == result.scores["mAP@16"]
        scored[tuple(point)] = result.n_queries
    assert len(scored) == 11 and scored[(1.0, 0.0)] == 24 and scored[(0.5, 0.5)] == 23  # the case really occurs
