"""`explore` without a browser: rankings against the metrics, hand-computed pages, the server's answers (Range,
refusals), the static site and the CLI's errors. The browser test is tests/test_explore_browser.py."""

import json
import sys
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from werkzeug.test import Client

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.explore.analysis import SystemSource, clip_captions, explore, rank_order, rank_positions
from dcase_t6.explore.audio import scan_audio
from dcase_t6.explore.pages import Site
from dcase_t6.explore.server import ExploreApp, bind
from dcase_t6.retrieval import metrics
from dcase_t6.retrieval.ground_truth import read_captions_file, read_relevance_file
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_matrix
from helpers.explore import FILES, QUERIES, SCORES
from helpers.servers import start_server, started_json


def load(case, second=True, top=3):
    from dcase_t6.retrieval.matrices import read_matrix

    sources = [SystemSource("first", read_matrix(case["first"]), str(case["first"]))]
    if second:
        sources.append(SystemSource("second", read_matrix(case["second"]), str(case["second"])))
    truth = read_relevance_file(case["relevance"])
    return explore(sources, truth, clip_captions(read_captions_file(case["captions"])), top=top)


def evaluate_json(*args):
    result = CliRunner().invoke(main, ["evaluate", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_rank_order_puts_relevant_clips_at_the_ranks_the_metrics_use():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(200, 30)).astype(np.float64)  # many ties
    relevant = np.full((200, 5), metrics.PADDING)
    mask = np.zeros(scores.shape, dtype=bool)
    for row in range(200):
        chosen = rng.choice(30, size=rng.integers(1, 6), replace=False)
        relevant[row, : len(chosen)] = chosen
        mask[row, chosen] = True
    positions = rank_positions(rank_order(scores, mask))
    expected = metrics.relevant_ranks(scores, relevant)
    for row in range(200):
        got = np.sort(positions[row, mask[row]])
        assert got.tolist() == expected[row, : len(got)].tolist()
    # every row is a permutation, ordered by score descending
    assert (np.sort(positions, axis=1) == np.arange(1, 31)).all()
    ordered = np.take_along_axis(scores, rank_order(scores, mask), axis=1)
    assert (np.diff(ordered, axis=1) <= 0).all()


def test_numbers_equal_evaluate_json_and_second_matrix_is_realigned(case):
    exploration = load(case)
    for system, path in zip(exploration.systems, (case["first"], case["second"])):
        assert system.evaluation.as_json() == evaluate_json("-p", path, "-r", case["relevance"])
    # the second matrix's columns were shuffled: its scores are back in the first one's file order
    assert np.array_equal(exploration.systems[1].scores, case["second_scores"])
    assert exploration.clips == FILES
    # q0 by hand: ranks 2 and 4 -> AP@16 = (1/2 + 2/4) / 2; q2 all tied -> ranks 4, 5, 6
    assert exploration.systems[0].relevant_ranks[0, :2].tolist() == [2, 4]
    assert exploration.systems[0].per_query["AP@16"][0] == 0.5
    assert exploration.systems[0].relevant_ranks[2].tolist() == [4, 5, 6]


def test_query_view_lists_the_top_and_where_missed_relevant_clips_ranked(case):
    view = load(case, top=3).query_view(0)
    first = view.top[0]
    assert [FILES[item.clip] for item in first] == ["Café 1.wav", "a.wav", "b, c.wav"]
    assert [(item.rank, item.relevant) for item in first] == [(1, False), (2, True), (3, False)]
    assert first[0].score == 0.95
    assert [(FILES[item.clip], item.rank, item.score) for item in view.missed[0]] == [("d&#39;e.wav", 4, 0.7)]
    assert view.metrics[0]["AP@16"] == 0.5 and view.metrics[0]["R@1"] == 0.0
    # each listed clip carries its rank in the other system
    second = load(case, top=6).query_view(0).top[1]
    rank_in_second = {item.clip: item.rank for item in second}
    assert [item.other_ranks[0] for item in first] == [rank_in_second[item.clip] for item in first]


def test_clip_view_shows_captions_relevant_queries_and_the_queries_ranking_it_highest(case):
    exploration = load(case)
    view = exploration.clip_view(0)  # a.wav: relevant to q0 (rank 2) and q2 (all tied: rank 4)
    assert view.captions == tuple(f"a.wav caption {k}" for k in range(1, 6))
    assert [(hit.query, hit.rank) for hit in view.relevant_to[0]] == [(0, 2), (2, 4)]
    highest = view.ranked_highest[0]
    assert [hit.rank for hit in highest] == sorted(hit.rank for hit in highest)
    assert {hit.query: hit.rank for hit in highest} == {0: 2, 1: 4, 2: 4, 3: 6}


def test_a_second_matrix_of_other_clips_is_refused(case, tmp_path):
    other = tmp_path / "other.csv"
    write_matrix(SimilarityMatrix(QUERIES, FILES[:-1] + ["z.wav"], SCORES), other)
    result = CliRunner().invoke(main, ["explore", "-p", str(case["first"]), "-p", str(other), "-r",
                                       str(case["relevance"]), "--audio", str(case["audio"]), "--html",
                                       str(tmp_path / "site")])
    assert result.exit_code == 2
    assert "lacks the audio file 'h.wav'" in result.output and "same split" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_audio_is_found_by_matrix_names_only(case):
    folder = scan_audio(case["audio"], [*FILES, "../secret.wav", "/etc/passwd", "missing.wav"])
    assert folder.missing == [6, 7, 8]
    assert folder.url(1) == "audio/1.wav" and folder.url(6) is None
    assert folder.lookup("1.wav") == case["audio"] / "b, c.wav"
    for address in ("1.mp3", "01.wav", "6.wav", "../secret.wav", "1.wav/..", "-1.wav", "99.wav"):
        assert folder.lookup(address) is None, address
    with pytest.raises(UserError, match="holds none of the 1 audio files"):
        scan_audio(case["audio"], ["../secret.wav"])


def test_server_answers_pages_and_audio_with_ranges_and_nothing_else(case):
    exploration = load(case)
    site = Site(exploration, scan_audio(case["audio"], exploration.clips))
    client = Client(ExploreApp(site))
    data = (case["audio"] / "b, c.wav").read_bytes()
    whole = client.get("/audio/1.wav")
    assert whole.status_code == 200 and whole.get_data() == data
    assert whole.headers["Accept-Ranges"] == "bytes" and whole.mimetype.startswith("audio/")
    part = client.get("/audio/1.wav", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.get_data() == data[100:1100]
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    assert client.get("/audio/1.wav", headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416
    for path in ("/audio/../secret.wav", "/audio/%2e%2e/secret.wav", "/audio/1.mp3", "/static/../analysis.py",
                 "/static/base.html", "/query/4.html", "/query/01.html", "/clip/6.html", "/charts/x.svg",
                 "/../secret.wav", "/explore/analysis.py"):
        assert client.get(path).status_code == 404, path
    assert client.post("/index.html").status_code == 405
    page = client.get("/query/0.html").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'src="../audio/3.wav"' in page and "d&amp;#39;e.wav" in page
    assert client.get("/").get_data() == client.get("/index.html").get_data()
    table = client.get("/data/queries.js").get_data(as_text=True)
    rows = json.loads(table[table.index("{"): table.rindex("}") + 1])["rows"]
    assert [row[0] for row in rows] == [0, 1, 2, 3] and rows[2][7] == [4, 5, 6]
    assert client.get("/charts/scatter.svg").get_data().startswith(b"<?xml")


def test_html_writes_every_page_and_the_audio_and_refuses_a_foreign_folder(case, tmp_path):
    site = tmp_path / "site"
    args = ["explore", "-p", f"one={case['first']}", "-p", str(case["second"]), "-r", str(case["relevance"]),
            "--audio", str(case["audio"]), "--clip-captions", str(case["captions"]), "--html", str(site), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["pages"] == 4 + 2 + 3 + len(QUERIES) + len(FILES) and report["audio_files"] == len(FILES)
    for index, name in enumerate(FILES):
        assert (site / "audio" / f"{index}.wav").read_bytes() == (case["audio"] / name).read_bytes()
    description = json.loads((site / "explore.json").read_text())
    assert [system["name"] for system in description["systems"]] == ["one", "second"]
    assert {key: description["systems"][0][key] for key in ("R@1", "mAP@16", "n_queries")} == {
        key: evaluate_json("-p", case["first"], "-r", case["relevance"])[key] for key in ("R@1", "mAP@16", "n_queries")}
    assert "a.wav caption 5" in (site / "clip" / "0.html").read_text()
    assert CliRunner().invoke(main, args).exit_code == 0  # an earlier site is replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = CliRunner().invoke(main, args[:-3] + ["--html", str(foreign)])
    assert refused.exit_code == 2 and "is not an explorer site" in refused.output
    assert (foreign / "notes.txt").read_text() == "keep me"
    holding = CliRunner().invoke(main, args[:-3] + ["--html", str(case["tmp"])])
    assert holding.exit_code == 2


@pytest.mark.parametrize("extra, message", [
    (["-c", "{captions}"], "exactly one of --relevance"),
    (["-p", "{first}"], "3 matrices given"),
    (["--html", "{tmp}/s", "--port", "8000"], "--port set the server"),
    (["--top", "0"], "Invalid value for '--top'"),
])
def test_cli_refuses_bad_options_with_one_line(case, extra, message):
    base = ["explore", "-p", str(case["first"]), "-p", str(case["second"]), "-r", str(case["relevance"]),
            "--audio", str(case["audio"])]
    result = CliRunner().invoke(main, base + [part.format(**case) for part in extra])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_names_the_audio_folder_that_lacks_the_clips(case, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, message in ((tmp_path / "nowhere", "no such folder"), (empty, "holds none of the 6 audio files")):
        result = CliRunner().invoke(main, ["explore", "-p", str(case["first"]), "-r", str(case["relevance"]),
                                           "--audio", str(folder), "--html", str(tmp_path / "site")])
        assert result.exit_code == 2 and message in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_bind_refuses_a_busy_port_with_one_line(case):
    exploration = load(case, second=False)
    site = Site(exploration, scan_audio(case["audio"], exploration.clips))
    server = bind(site)
    try:
        port = int(server.url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(UserError, match=f"--port {port}: 127.0.0.1:{port} is in use"):
            bind(site, port=port)
    finally:
        server.shutdown()


def test_cli_serves_on_loopback_on_a_free_port(case):
    command = [sys.executable, "-m", "dcase_t6", "explore", "-p", str(case["first"]), "-c", str(case["captions"]),
               "--audio", str(case["audio"]), "--json"]
    captions_queries = [f"{name} caption {k}" for name in FILES for k in range(1, 6)]
    write_matrix(SimilarityMatrix(captions_queries, FILES, np.tile(SCORES[:1], (30, 1))), case["first"])
    process = start_server(command)
    try:
        started = started_json(process)
        assert started["url"].startswith("http://127.0.0.1:") and started["queries"] == 30
        with urllib.request.urlopen(started["url"] + "clip/0.html", timeout=10) as response:
            assert response.status == 200
            assert "a.wav caption 3" in response.read().decode("utf-8")
        with urllib.request.urlopen(started["url"] + "summary.html", timeout=10) as response:
            page = response.read().decode("utf-8")
        expected = evaluate_json("-p", case["first"], "-c", case["captions"])
        assert f'data-metric="mAP@16" data-value="{expected["mAP@16"]!r}"' in page
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_allow_missing_explores_the_queries_every_matrix_has(case, tmp_path):
    partial = tmp_path / "partial.csv"
    write_matrix(SimilarityMatrix(QUERIES[1:], FILES, SCORES[1:]), partial)
    base = ["explore", "-p", str(partial), "-r", str(case["relevance"]), "--audio", str(case["audio"]), "--html",
            str(tmp_path / "site"), "--json"]
    refused = CliRunner().invoke(main, base)
    assert refused.exit_code == 2 and "1 of 4 queries are missing" in refused.output
    assert CliRunner().invoke(main, [*base, "--allow-missing"]).exit_code == 0
    description = json.loads((tmp_path / "site" / "explore.json").read_text())
    expected = evaluate_json("-p", partial, "-r", case["relevance"], "--allow-missing")
    assert {key: description["systems"][0][key] for key in expected if key != "n_skipped"} == {
        key: value for key, value in expected.items() if key != "n_skipped"}
    assert description["queries"] == 3 and "1 ground-truth queries missing" in (tmp_path / "site" /
                                                                                "summary.html").read_text()
