"""`explore` in a real browser: Debian's headless Chromium driven by Playwright opens every page of a demo-like
output (synthetic data, two systems trained and embedded by the CLI), clicks a query, checks that the audio
element loads its clip (the bytes of the file) and that the numbers on the pages equal `evaluate --json`.
Screenshots of each page are saved to the test's temporary folder, or to $DCASE_T6_SCREENSHOTS; the ones
docs/explore.md shows come from the demo's own systems instead (`make screenshots`, scripts/screenshots.py).

Without Chromium (`apt-get install chromium`) or Playwright (`pip install playwright`) the tests skip with the
reason on a developer's machine and fail under CI (CI=true), where `.ci/run` installs Chromium."""

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.data.layout import Layout
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.retrieval.metrics import METRIC_KEYS
from helpers.servers import start_server, started_json

CHROMIUM = Path(os.environ.get("DCASE_T6_CHROMIUM", "/usr/bin/chromium"))
VIEWPORT = {"width": 1280, "height": 860}
SPLIT = "synthetic/development-testing"
QUERY_KEYS = [key.replace("mAP@", "AP@") for key in METRIC_KEYS]


def _require_browser():
    """Playwright's sync API, or a skip (a failure under CI) that says what to install."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "Playwright is not installed: pip install 'playwright>=1.40'"
    if problem is None and not CHROMIUM.is_file():
        problem = f"no Chromium at {CHROMIUM}: apt-get install chromium (or set DCASE_T6_CHROMIUM)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {problem}")
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _require_browser()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield chromium
        chromium.close()


def _cli(workdir, *args):
    result = CliRunner().invoke(main, ["--workdir", str(workdir), *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    """What `make demo` makes, in small: the synthetic dataset, two systems (seeds 0 and 1) trained and embedded
    on dev-test, their `evaluate --json` and `--per-query` outputs."""
    root = tmp_path_factory.mktemp("explore-data")
    workdir = root / "work"
    prepare_synthetic(Layout.at(root), SyntheticConfig(development=32, validation=8, evaluation=24,
                                                       min_duration=2.0, max_duration=3.0))
    layout = Layout.at(root)
    relevance = layout.relevance_file("synthetic")
    runs, evaluations, per_query = [], [], []
    for seed in (0, 1):
        trained = json.loads(_cli(workdir, "train", "--data-root", root, "--datasets", "synthetic", "--backbone",
                                  "tiny-cnn", "--text-model", "tiny-random", "--seed", seed, "--name", f"seed{seed}",
                                  "--set", "model.embed_dim=16", "--set", "batch_size=8", "--set", "epochs=2",
                                  "--set", "lr=1e-3", "--set", "audio_seconds=2.0", "--set", "warmup_epochs=0.5",
                                  "--set", "decay_epochs=1.5", "--json"))
        run = trained["run"]
        _cli(workdir, "embed", run, "--data-root", root, "--dataset", "synthetic", "--split", "development-testing")
        table = root / f"per_query_{seed}.csv"
        evaluations.append(json.loads(_cli(workdir, "evaluate", "-p", f"{run}:{SPLIT}", "-r", relevance,
                                           "--per-query", table, "--json", "--direction", "t2a")))
        per_query.append(pd.read_csv(table, keep_default_na=False))
        runs.append(run)
    return {"root": root, "workdir": workdir, "runs": runs, "relevance": relevance, "evaluations": evaluations,
            "per_query": per_query, "audio": layout.audio_dir("synthetic", "evaluation"),
            "captions": layout.captions_csv("synthetic", "evaluation")}


def _explore_args(demo):
    return ["-m", "dcase_t6", "--workdir", str(demo["workdir"]), "explore",
            "-p", f"seed0={demo['runs'][0]}:{SPLIT}", "-p", f"seed1={demo['runs'][1]}:{SPLIT}",
            "-r", str(demo["relevance"]), "--audio", str(demo["audio"]), "--clip-captions", str(demo["captions"])]


@pytest.fixture(scope="module")
def server(demo_output):
    """`dcase-t6 explore ... --json` running as the user runs it; its printed URL."""
    process = start_server([sys.executable, *_explore_args(demo_output), "--json"])
    try:
        yield started_json(process)["url"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def _relevant_sets(demo):
    frame = pd.read_csv(demo["relevance"], keep_default_na=False)
    return {query: set(ast.literal_eval(files)) for query, files in zip(frame["query"], frame["audio_filenames"])}


def _captions(demo):
    frame = pd.read_csv(demo["captions"], keep_default_na=False)
    return {row["file_name"]: [row[f"caption_{k}"] for k in range(1, 6)] for _, row in frame.iterrows()}


def _first_render_ms(page) -> float:
    page.wait_for_function("performance.getEntriesByName('queries-rendered').length > 0")
    return page.evaluate("performance.getEntriesByName('queries-rendered')[0].startTime")


def test_every_page_of_the_server_in_chromium(browser, demo_output, server, tmp_path):
    demo = demo_output
    per_query = demo["per_query"]
    n_queries = len(per_query[0])
    shots = Path(os.environ.get("DCASE_T6_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)

    # the queries page: every query, worst first (AP@16 of the first system, ties by query order)
    page.goto(server)
    render_ms = _first_render_ms(page)
    rows = page.locator("#queries tbody tr")
    assert rows.count() == n_queries
    shown = [int(row.get_attribute("data-query")) for row in rows.all()]
    expected = sorted(range(n_queries), key=lambda index: (round(per_query[0]["AP@16"][index], 6), index))
    assert shown == expected
    worst = shown[0]
    cells = rows.nth(0).locator("td")
    assert cells.nth(1).inner_text() == per_query[0]["query"][worst]
    assert cells.nth(3).inner_text() == f"{per_query[0]['AP@16'][worst]:.3f}"
    assert cells.nth(7).inner_text() == ", ".join(str(per_query[0]["ranks"][worst]).split())
    assert page.locator("#count").inner_text() == f"{n_queries} of {n_queries} queries"
    page.wait_for_function("document.querySelector('figure.scatter img').naturalWidth > 0")
    page.screenshot(path=str(shots / "queries.png"))

    # search, then sort by the difference of AP@16 (largest first)
    word = per_query[0]["query"][worst].split()[1].lower()
    page.fill("#search", word)
    texts = [text.lower() for text in page.locator("#queries tbody td.text").all_inner_texts()]
    assert texts and all(word in text for text in texts)
    assert len(texts) == sum(word in query.lower() for query in per_query[0]["query"])
    page.fill("#search", "")
    page.locator("#queries thead th").last.click()
    differences = [float(text) for text in page.locator("#queries tbody td:last-child").all_inner_texts()]
    assert differences == sorted(differences, reverse=True)
    page.locator("#queries thead th").nth(3).click()

    # click the worst query: its top 16, relevant clips marked, numbers of `evaluate --per-query`
    page.locator(f'#queries tbody tr[data-query="{worst}"] td.text a').click()
    page.wait_for_url(re.compile(rf"/query/{worst}\.html$"))
    query = per_query[0]["query"][worst]
    assert page.locator("#query-text").inner_text() == query
    for system in (0, 1):
        for key in QUERY_KEYS:
            cell = page.locator(f'#query-metrics td[data-system="{system}"][data-metric="{key}"]')
            assert float(cell.get_attribute("data-value")) == per_query[system][key][worst]
    clips = pd.read_csv(demo["captions"], keep_default_na=False)["file_name"].tolist()
    relevant = _relevant_sets(demo)[query]
    top = page.locator('section.ranking[data-system="0"] table.clips:not(.missed) tbody tr')
    assert top.count() == 16
    marked = {top.nth(i).locator("a.clip-link").inner_text() for i in range(16)
              if "relevant" in (top.nth(i).get_attribute("class") or "")}
    ranks = [int(rank) for rank in str(per_query[0]["ranks"][worst]).split()]
    assert marked == {name for name in relevant if name in marked} and len(marked) == sum(r <= 16 for r in ranks)
    listed = [int(row.get_attribute("data-rank")) for row in
              page.locator('section.ranking[data-system="0"] tbody tr.relevant').all()]
    assert sorted(listed) == ranks  # every relevant clip, in the top or below it, at the rank evaluate used

    # the audio element loads its clip from the server: the file's bytes
    player = page.locator('section.ranking[data-system="0"] audio').first
    clip = int(player.get_attribute("data-clip"))
    data = (demo["audio"] / clips[clip]).read_bytes()
    with page.expect_response(lambda response: "/audio/" in response.url) as loaded:
        player.evaluate("audio => audio.play()")
    response = loaded.value
    assert response.status in (200, 206) and response.body() == data  # Chromium asks for 'Range: bytes=0-'
    page.wait_for_function("audio => audio.readyState >= 1", arg=player.element_handle())
    duration = player.evaluate("audio => audio.duration")
    assert duration == pytest.approx(sf.info(demo["audio"] / clips[clip]).duration, abs=0.01)
    player.evaluate("audio => audio.pause()")
    whole = page.request.get(response.url)
    assert whole.status == 200 and whole.body() == data
    part = page.request.get(response.url, headers={"Range": "bytes=44-1043"})
    assert part.status == 206 and part.body() == data[44:1044]
    page.screenshot(path=str(shots / "query.png"))

    # a clip: its captions, the queries it is relevant to
    page.locator('section.ranking[data-system="0"] a.clip-link').first.click()
    page.wait_for_url(re.compile(rf"/clip/{clip}\.html$"))
    assert page.locator("#clip-name").inner_text() == clips[clip]
    assert page.locator("ol.captions li").all_inner_texts() == _captions(demo)[clips[clip]]
    page.screenshot(path=str(shots / "clip.png"))

    # the summary: the numbers of `evaluate --json`, and the two charts
    page.click("#nav-summary")
    page.wait_for_url(re.compile(r"/summary\.html$"))
    page.wait_for_load_state("load")
    for system, evaluation in enumerate(demo["evaluations"]):
        for key, value in evaluation.items():
            cell = page.locator(f'#summary-metrics tr[data-system="{system}"] td[data-metric="{key}"]')
            assert float(cell.get_attribute("data-value")) == value
            if key != "n_queries":
                assert cell.inner_text() == f"{value:.4f}"
    page.wait_for_function("[...document.images].every(image => image.complete && image.naturalWidth > 0)")
    page.screenshot(path=str(shots / "summary.png"))
    for name in ("queries", "query", "clip", "summary"):
        assert (shots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"queries page first render: {render_ms:.0f} ms ({n_queries} queries)")


def test_static_site_opens_from_files_in_chromium(browser, demo_output, tmp_path):
    demo = demo_output
    site = tmp_path / "site"
    written = subprocess.run([sys.executable, *_explore_args(demo), "--html", str(site), "--json"],
                             capture_output=True, text=True, check=False)
    assert written.returncode == 0, written.stderr
    page = browser.new_page(viewport=VIEWPORT)
    page.goto((site / "index.html").as_uri())
    _first_render_ms(page)
    n_queries = len(demo["per_query"][0])
    assert page.locator("#queries tbody tr").count() == n_queries
    page.locator("#queries tbody tr td.text a").first.click()
    page.wait_for_url(re.compile(r"/query/\d+\.html$"))
    player = page.locator("audio").first
    player.evaluate("audio => audio.play()")
    page.wait_for_function("audio => audio.readyState >= 1 && audio.duration > 0", arg=player.element_handle())
    page.click("#nav-summary")
    for system, evaluation in enumerate(demo["evaluations"]):
        cell = page.locator(f'#summary-metrics tr[data-system="{system}"] td[data-metric="mAP@16"]')
        assert float(cell.get_attribute("data-value")) == evaluation["mAP@16"]
    started = time.perf_counter()
    page.goto((site / "clip" / "0.html").as_uri())
    assert page.locator("ol.captions li").count() == 5 and time.perf_counter() - started < 10
