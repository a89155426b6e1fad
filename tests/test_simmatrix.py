"""Submission CSV and .npz round trips, and the errors for malformed matrices."""

import numpy as np
import pytest

from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_csv, read_matrix, write_csv, write_matrix

AWKWARD_FILES = ["Ambiance, Carnival.wav", "Hang Man&#39;s Rope.wav", 'say "hi".wav', "café à noël.wav", " lead.wav"]
AWKWARD_QUERIES = ["A dog barks, then stops.", 'He said "ok"', "NA", "line\nbreak", "null"]


def awkward_matrix() -> SimilarityMatrix:
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((5, 5))
    scores[0, 0] = 1e-300
    scores[1, 1] = -0.0
    return SimilarityMatrix(AWKWARD_QUERIES, AWKWARD_FILES, scores)


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_round_trip_keeps_names_and_exact_values(tmp_path, suffix):
    matrix = awkward_matrix()
    path = tmp_path / f"system{suffix}"
    write_matrix(matrix, path)
    again = read_matrix(path)
    assert again.queries == AWKWARD_QUERIES
    assert again.files == AWKWARD_FILES
    assert np.array_equal(again.scores, matrix.scores)


def test_csv_layout_matches_the_submission_format(tmp_path):
    path = tmp_path / "out.csv"
    write_csv(SimilarityMatrix(["q, one"], ["a.wav", "b, c.wav"], np.array([[0.5, 0.25]])), path)
    assert path.read_bytes() == b'index,a.wav,"b, c.wav"\r\n"q, one",0.5,0.25\r\n'


def _error_for(tmp_path, text: str) -> str:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        read_csv(path)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("index,a.wav,a.wav\nq,1,2\n", "duplicated audio file column 'a.wav' (positions 2 and 3)"),
        ("query,a.wav\nq,1\n", "the first header cell must be 'index'"),
        ("index,a.wav,b.wav\nq,1,abc\n", "row 2, column 3 ('b.wav') holds 'abc', not a number"),
        ("index,a.wav,b.wav\nq,1,nan\n", "row 2, column 3 ('b.wav') holds 'nan'"),
        ("index,a.wav,b.wav\nq,1,inf\nr,1,2\n", "row 2, column 3 ('b.wav') is inf"),
        ("index,a.wav,b.wav\nq,1\n", "row 2, column 3 ('b.wav') is empty"),
        ("index,a.wav,b.wav\nq,1,2\nr,1,2,3\n", "malformed CSV"),
        ("index,a.wav\n,1\n", "row 2 has an empty query text"),
        ("", "the file is empty"),
        ("index\nq\n", "the header names no audio files"),
    ],
)
def test_malformed_csv_gives_one_line_naming_the_place(tmp_path, text, expected):
    message = _error_for(tmp_path, text)
    assert expected in message
    assert "bad.csv" in message and "\n" not in message


def test_writing_a_non_finite_matrix_is_refused_and_leaves_no_file(tmp_path):
    path = tmp_path / "out.csv"
    bad = SimilarityMatrix(["q"], ["a.wav"], np.array([[np.nan]]))
    with pytest.raises(UserError, match="row 2, column 2"):
        write_csv(bad, path)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_and_bare_npy_are_explained(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_matrix(tmp_path / "nope.csv")
    np.save(tmp_path / "bare.npy", np.zeros((2, 2)))
    with pytest.raises(UserError, match="no query or file names"):
        read_matrix(tmp_path / "bare.npy")
