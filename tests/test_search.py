"""Search over your own sounds, fast cases: the index folder (incremental, resumable, atomic, one model), exact
top-K against brute force, the approximate index's recall, the search answer and the explorer's search endpoint,
with a stand-in model (``helpers.search.FakeEncoder``). The real model's cases are in test_search_model.py."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import Recorder
from dcase_t6.search.build import BuildRequest, build_index, check_index_folder
from dcase_t6.search.query import Query, Searcher
from dcase_t6.search.ranking import exact_top
from dcase_t6.search.store import MANIFEST, open_index, read_manifest
from helpers.cli import cli_error
from helpers.search import FakeEncoder, require_faiss, sound_folder, unit_vector


@pytest.fixture
def faiss_one_thread():
    """FAISS on one thread: its OpenMP threads spin for seconds on a loaded 2-core machine, for microseconds of
    work at these sizes."""
    faiss = require_faiss()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ query
    return np.lexsort((np.arange(len(vectors)), -scores))[:k]


@pytest.mark.parametrize("chunk_bytes", [4 * 16 * 7, 4 * 16 * 300, 1 << 30])
def test_exact_top_equals_brute_force_in_any_chunking_with_ties_by_row(chunk_bytes):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((1001, 16)).astype(np.float32)
    vectors[[700, 999]] = vectors[5]  # the same sound three times: tied, listed by row
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    queries[2] = vectors[5]
    found = exact_top(vectors, queries, 12, chunk_bytes=chunk_bytes)
    for number, (query, rows, scores) in enumerate(zip(queries, found.rows, found.scores)):
        expected = brute_force(vectors.astype(np.float64), query.astype(np.float64), 12)
        np.testing.assert_allclose(scores, vectors[expected] @ query, rtol=1e-5)
        assert (np.diff(scores) <= 0).all()
        # the three copies of one vector (query 2's best) tie only to rounding: BLAS sums in blocks
        copies = 3 if number == 2 else 0
        assert sorted(rows[:copies].tolist()) == sorted(expected[:copies].tolist())
        assert rows[copies:].tolist() == expected[copies:].tolist()
    assert sorted(found.rows[2][:3].tolist()) == [5, 700, 999]
    assert exact_top(vectors[:3], queries, 10).rows.shape == (4, 3)


def build(audio: Path, out: Path, encoder: FakeEncoder, **options):
    return build_index(BuildRequest(audio, out, **options), encoder, Recorder())


def test_build_indexes_every_sound_and_rebuilds_only_what_changed(tmp_path):
    audio, out = tmp_path / "sounds", tmp_path / "index"
    files = sound_folder(audio, 10)
    first = build(audio, out, FakeEncoder(), chunk_files=4)
    assert (first.files, first.embedded, first.updated) == (10, 10, True)
    view = open_index(out)
    assert [entry.path for entry in view.entries] == sorted(files)
    assert isinstance(view.vectors, np.memmap) and view.vectors.dtype == np.float32
    for entry, vector in zip(view.entries, view.vectors):
        np.testing.assert_array_equal(vector, unit_vector(files[entry.path], 8))
        assert entry.size == len(files[entry.path])
    assert not (out / "pending").exists()

    encoder = FakeEncoder()
    again = build(audio, out, encoder)
    assert (again.embedded, again.unchanged, again.updated, encoder.embedded) == (0, 10, False, [])

    changed, touched, gone = "clip 001.FLAC", "clip 002.mp3", "sub/clip 000.wav"
    (audio / changed).write_bytes(b"a new take")
    os.utime(audio / touched, ns=(1, 1))  # another time, the same content: kept
    (audio / gone).unlink()
    (audio / "new.wav").write_bytes(b"a new sound")
    (audio / "copy of new.wav").write_bytes(b"a new sound")  # the same content twice: embedded once
    (audio / "renamed.ogg").write_bytes(files["clip 004.wav"])  # content already indexed
    encoder = FakeEncoder()
    third = build(audio, out, encoder)
    assert sorted(encoder.embedded) == sorted([changed, "copy of new.wav"])
    assert (third.files, third.embedded, third.same_content, third.removed, third.unchanged) == (12, 2, 3, 1, 7)
    view = open_index(out)
    by_path = {entry.path: row for row, entry in enumerate(view.entries)}
    assert gone not in by_path
    np.testing.assert_array_equal(view.vectors[by_path[changed]], unit_vector(b"a new take", 8))
    np.testing.assert_array_equal(view.vectors[by_path["renamed.ogg"]], view.vectors[by_path["clip 004.wav"]])
    assert view.entries[by_path[touched]].mtime_ns == 1
    generations = sorted(path.name for path in out.iterdir() if path.name.startswith("embeddings."))
    assert generations == ["embeddings.1.npy", "embeddings.2.npy"]  # the one before stays for running searches


def test_another_model_is_refused_in_one_line(tmp_path):
    audio, out = tmp_path / "sounds", tmp_path / "index"
    sound_folder(audio, 3)
    build(audio, out, FakeEncoder())
    before = (out / MANIFEST).read_bytes()
    with pytest.raises(UserError, match="holds the vectors of exported model /models/ffffff.*use a new --out"):
        build(audio, out, FakeEncoder(digest="e" * 64))
    assert (out / MANIFEST).read_bytes() == before


def test_an_interrupted_build_keeps_the_old_index_and_resumes_its_finished_chunks(tmp_path):
    audio, out = tmp_path / "sounds", tmp_path / "index"
    sound_folder(audio, 4)
    build(audio, out, FakeEncoder())
    sound_folder(audio, 10, prefix="more")
    with pytest.raises(KeyboardInterrupt):
        build(audio, out, FakeEncoder(fail_after=2), chunk_files=3)
    assert open_index(out).manifest.count == 4  # the committed index, whole
    assert len(list((out / "pending").iterdir())) == 2
    encoder = FakeEncoder()
    resumed = build(audio, out, encoder, chunk_files=3)
    assert (resumed.files, resumed.resumed, resumed.embedded, resumed.unchanged) == (14, 6, 4, 4)
    assert len(encoder.embedded) == 4 and not (out / "pending").exists()


def test_files_that_do_not_decode_are_left_out_and_not_tried_again_until_changed(tmp_path):
    audio, out = tmp_path / "sounds", tmp_path / "index"
    sound_folder(audio, 3)
    (audio / "broken.wav").write_bytes(b"bad bytes")
    recorder = Recorder()
    outcome = build_index(BuildRequest(audio, out), FakeEncoder(), recorder)
    assert (outcome.files, outcome.skipped) == (3, 1)
    assert recorder.messages == [("warning", "1 of 4 files do not decode and are left out (first broken.wav: "
                                             "unreadable (not audio))")]
    assert [item.path for item in read_manifest(out).skipped] == ["broken.wav"]
    encoder = FakeEncoder()
    assert build(audio, out, encoder).updated is False and encoder.batches == 0
    (audio / "broken.wav").write_bytes(b"fixed now")
    assert build(audio, out, FakeEncoder()).files == 4


def test_the_index_folder_is_never_inside_or_around_the_sounds_nor_a_foreign_folder(tmp_path):
    audio = tmp_path / "sounds"
    sound_folder(audio, 2)
    with pytest.raises(UserError, match="inside the --audio folder"):
        check_index_folder(audio / "index", audio)
    with pytest.raises(UserError, match="holds the input --audio"):
        check_index_folder(tmp_path, audio)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not a search index written by dcase-t6"):
        check_index_folder(foreign, audio)
    (foreign / MANIFEST).write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="not a dcase-t6 search index"):
        check_index_folder(foreign, audio)
    out = tmp_path / "index"
    build(audio, out, FakeEncoder())
    (out / "mine.txt").write_text("a note of the user's")
    assert check_index_folder(out, audio) == out
    sound_folder(audio, 3)
    build(audio, out, FakeEncoder())
    assert (out / "mine.txt").read_text() == "a note of the user's"


def test_search_answers_the_brute_force_ranking_by_text_and_by_example(tmp_path):
    audio, out = tmp_path / "sounds", tmp_path / "index"
    files = sound_folder(audio, 30)
    encoder = FakeEncoder()
    build(audio, out, encoder)
    searcher = Searcher(open_index(out), encoder)
    view = searcher.view
    answer = searcher.search(Query("a dog barks twice", top=5))
    expected = brute_force(np.asarray(view.vectors), unit_vector("a dog barks twice", 8), 5)
    assert [hit.row for hit in answer.hits] == expected.tolist()
    assert answer.method == "exact" and answer.vectors == 30
    like = searcher.search(Query(like=audio / "clip 007.ogg", top=3))
    assert like.hits[0].path == "clip 007.ogg" and like.hits[0].score == pytest.approx(1.0)
    payload = json.loads(json.dumps(answer.as_json()))
    assert set(payload) == {"index", "text", "like", "top", "method", "model", "files", "seconds", "results"}
    assert payload["results"][0] == {"rank": 1, "path": view.entries[expected[0]].path,
                                     "file": str(audio / view.entries[expected[0]].path),
                                     "score": answer.hits[0].score}
    assert files  # every file found on disk
    for bad, message in ((Query(), "give a TEXT"), (Query("x", top=0), "--top 0"), (Query("  "), "is empty"),
                         (Query("x", method="approximate"), "has no approximate index")):
        with pytest.raises(UserError, match=message):
            searcher.search(bad)


def test_the_approximate_index_finds_what_the_exact_search_finds(tmp_path, faiss_one_thread):
    from dcase_t6.search.approximate import build_ivf, ivf_settings, ivf_top, load_ivf

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32))
    vectors = centres[rng.integers(0, 40, 4000)] + 0.35 * rng.standard_normal((4000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    queries = vectors[rng.choice(4000, 50, replace=False)] + 0.1 * rng.standard_normal((50, 32)).astype(np.float32)
    settings = ivf_settings(len(vectors))
    assert settings.lists == 63 and settings.probe == 8
    build_ivf(vectors, tmp_path / "ivf.faiss", settings)
    approximate = ivf_top(load_ivf(tmp_path / "ivf.faiss", settings.probe), queries, 10)
    exact = exact_top(vectors, queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate.rows, exact.rows)])
    assert recall >= 0.9
    found = approximate.rows >= 0
    np.testing.assert_allclose(approximate.scores[found],
                               np.take_along_axis(queries @ vectors.T, approximate.rows, axis=1)[found], rtol=1e-5)


def test_an_index_built_with_approximate_searches_it_by_default(tmp_path, faiss_one_thread):
    audio, out = tmp_path / "sounds", tmp_path / "index"
    sound_folder(audio, 80)
    encoder = FakeEncoder()
    assert build(audio, out, encoder, approximate=True).approximate
    view = open_index(out)
    assert view.manifest.approximate.file == "ivf.1.faiss"
    searcher = Searcher(view, encoder)
    approximate, exact = (searcher.search(Query("rain", top=3, method=method)) for method in ("auto", "exact"))
    assert (approximate.method, exact.method) == ("approximate", "exact")
    assert approximate.hits[0].score <= exact.hits[0].score + 1e-6
    assert build(audio, out, FakeEncoder()).approximate  # kept on a rebuild


def test_explore_serves_the_search_page_and_its_endpoint(tmp_path):
    from dcase_t6.explore.audio import scan_audio
    from dcase_t6.explore.searchbox import FoundClip, SearchBox
    from dcase_t6.explore.server import bind

    audio = tmp_path / "sounds"
    names = list(sound_folder(audio, 3))
    asked = []

    def find(text, top):
        if not text:
            raise UserError("search: the TEXT is empty")
        asked.append((text, top))
        return [FoundClip(2, names[2], 0.5), FoundClip(0, names[0], 0.25)]

    box = SearchBox(find, scan_audio(audio, names), "3 files · <model>", standalone=True)
    server = bind(None, search=box)
    server.start()
    try:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            page = response.read().decode()
        assert 'id="search-form"' in page and "&lt;model&gt;" in page and "nav-summary" not in page
        with urllib.request.urlopen(server.url + "api/search?q=a+dog+barks&top=2", timeout=10) as response:
            payload = json.loads(response.read())
        assert asked == [("a dog barks", 2)]
        assert payload["results"][0] == {"rank": 1, "name": names[2], "score": 0.5,
                                         "audio": "found/2" + Path(names[2]).suffix.lower()}
        with urllib.request.urlopen(server.url + payload["results"][0]["audio"], timeout=10) as response:
            assert response.read() == (audio / names[2]).read_bytes()
        for bad in ("api/search?q=", "api/search?q=x&top=0", "found/9.wav", "query/0.html"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(server.url + bad, timeout=10)
            assert refused.value.code in (400, 404)
    finally:
        server.shutdown()


def test_without_faiss_the_approximate_index_is_one_line_naming_the_install(tmp_path, monkeypatch, faiss_one_thread):
    audio, out = tmp_path / "sounds", tmp_path / "index"
    sound_folder(audio, 40)
    encoder = FakeEncoder()
    build(audio, out, encoder, approximate=True)
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    with pytest.raises(UserError, match=r"needs FAISS, which is not installed: pip install 'dcase-t6\[search\]'"):
        build(audio, tmp_path / "other", encoder, approximate=True)
    recorder = Recorder()
    searcher = Searcher(open_index(out), encoder, recorder)
    assert searcher.search(Query("rain")).method == "exact"
    assert recorder.messages == [("warning", "FAISS is not installed (pip install 'dcase-t6[search]' (or: pip install "
                                             "faiss-cpu)): searching exactly")]
    with pytest.raises(UserError, match="--approximate: the approximate index needs FAISS"):
        searcher.search(Query("rain", method="approximate"))


@pytest.mark.parametrize("args, message", [
    (["index", "build", "--model", "run-x", "--audio", "{sounds}", "--out", "{sounds}/index"],
     "inside the --audio folder"),
    (["index", "build", "--model", "run-x", "--audio", "{sounds}", "--out", "{sounds}/.."], "holds the input --audio"),
    (["index", "build", "--model", "run-x", "--audio", "{tmp}/nowhere", "--out", "{tmp}/index"],
     "--audio {tmp}/nowhere: no such folder"),
    (["search", "{tmp}/nowhere", "a dog"], "no such folder"),
    (["search", "{tmp}", "a dog"], "is not a search index"),
    (["search", "{tmp}", "a dog", "--exact", "--approximate"], "give --exact or --approximate, not both"),
    (["search", "{tmp}"], "give a TEXT to look for, or --like FILE"),
    (["search", "{tmp}", "a dog", "--like", "{sounds}/clip 001.FLAC"], "not both"),
    (["search", "{tmp}", "a dog", "--top", "0"], "--top 0: give a whole number"),
    (["explore", "--index", "{tmp}", "--html", "{tmp}/site"], "--index needs the server"),
    (["explore", "--index", "{tmp}", "-r", "{tmp}/r.csv"], "which --relevance belong to"),
    (["explore"], "give -p MATRIX"),
])
def test_the_commands_refuse_bad_options_in_one_line_before_loading_a_model(tmp_path, args, message):
    sounds = tmp_path / "mine" / "sounds"
    sound_folder(sounds, 2)
    line = cli_error(tmp_path / "work", *[arg.format(sounds=sounds, tmp=tmp_path) for arg in args])
    assert message.format(tmp=tmp_path) in line


def test_a_moved_folder_keeps_every_vector_and_an_unreadable_file_is_tried_on_every_build(tmp_path, monkeypatch):
    from dcase_t6.search import build as building

    audio, out = tmp_path / "sounds", tmp_path / "index"
    sound_folder(audio, 5)
    build(audio, out, FakeEncoder())
    moved = audio.rename(tmp_path / "moved")
    encoder = FakeEncoder()
    outcome = build(moved, out, encoder)
    assert (outcome.files, outcome.embedded, outcome.same_content) == (5, 0, 5)
    assert read_manifest(out).audio == str(moved)

    def denied(path):
        if Path(path).name == "new.wav":
            raise PermissionError(13, "Permission denied", str(path))
        return hashed(path)

    hashed = building.sha256_of
    (moved / "new.wav").write_bytes(b"a new sound")
    monkeypatch.setattr(building, "sha256_of", denied)
    assert build(moved, out, FakeEncoder()).skipped == 1
    assert read_manifest(out).skipped == ()  # not remembered: tried again next time
    monkeypatch.setattr(building, "sha256_of", hashed)
    assert build(moved, out, FakeEncoder()).embedded == 1
