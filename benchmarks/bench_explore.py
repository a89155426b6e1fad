"""Benchmark `explore` on the sizes of the real sets: the dev-test multi-relevance shape (1,000 queries with 1-12
relevant clips x 1,045 clips) and Clotho's captions shape (5,225 queries x 1,045 clips, one relevant each).

For each, from generated matrices (.npz and the submission CSV): the seconds to read and score them (what the
command does before it serves), to build the queries page and its table data, a query page, the first clip page
(which ranks every clip in every query) and a later one, the summary with its charts, the whole static site
(`--html`), and, when Playwright and Debian's Chromium are there, the time to first render of the queries page
in the browser (navigation start to the table drawn) and of a query page.

`--servers` also compares the candidate servers on the same 30 s WAV and page: Werkzeug (chosen), the standard
library's http.server and, when importable, Starlette + Uvicorn: latency per request, and whether a Range
request (how browsers seek) gets its bytes.

``--write-docs`` puts the start, browser and static-site figures into this script's block of docs/speed.md
(the server comparison is printed only).

    .venv/bin/python benchmarks/bench_explore.py [--servers] [--no-browser] [--write-docs]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

import _published
from dcase_t6.explore.analysis import SystemSource, explore
from dcase_t6.explore.audio import scan_audio
from dcase_t6.explore.pages import Site
from dcase_t6.explore.server import bind
from dcase_t6.explore.site import write_site
from dcase_t6.retrieval.ground_truth import read_relevance_file
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_matrix, write_matrix

CHROMIUM = Path(os.environ.get("DCASE_T6_CHROMIUM", "/usr/bin/chromium"))
N_CLIPS = 1045
CASES = (("dev-test multi-relevance", 1000, (1, 12)), ("Clotho captions", 5225, (1, 1)))


def generate(folder: Path, n_queries: int, relevant_range: tuple[int, int], seed: int = 0) -> dict:
    """Two systems' matrices (.npz, .csv), a relevance file and an audio folder of tiny WAVs (hard links)."""
    rng = np.random.default_rng(seed)
    clips = [f"clip {index:04d}.wav" for index in range(N_CLIPS)]
    queries = [f"query {index}: a sound of {rng.choice(['rain', 'birds', 'a car', 'voices'])}"
               for index in range(n_queries)]
    relevant = [rng.choice(N_CLIPS, size=rng.integers(relevant_range[0], relevant_range[1] + 1), replace=False)
                for _ in range(n_queries)]
    paths = {}
    for system in (0, 1):
        scores = rng.standard_normal((n_queries, N_CLIPS)) * 0.1
        for row, columns in enumerate(relevant):
            scores[row, columns] += rng.uniform(0.0, 0.4, len(columns))
        matrix = SimilarityMatrix(queries, clips, scores)
        for suffix in (".npz", ".csv"):
            paths[f"{system}{suffix}"] = folder / f"system{system}{suffix}"
            write_matrix(matrix, paths[f"{system}{suffix}"])
    relevance = folder / "relevance.csv"
    pd.DataFrame({"query": queries, "audio_filenames": [repr([clips[c] for c in columns]) for columns in relevant]}
                 ).to_csv(relevance, index=False)
    audio = folder / "audio"
    audio.mkdir()
    sf.write(folder / "one.wav", np.zeros(4410, dtype=np.float32), 44100, subtype="PCM_16")
    for name in clips:
        os.link(folder / "one.wav", audio / name)
    return {"paths": paths, "relevance": relevance, "audio": audio}


def timed(function, *args):
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def bench_case(label: str, n_queries: int, relevant_range: tuple[int, int], browser) -> dict:
    """Time one case and print the figures; return the published ones: queries, seconds to read and score from
    .npz and from CSV, the static site's pages and seconds, and the browser's milliseconds (None without one)."""
    figures: dict = {"queries": n_queries, "browser": None}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = generate(folder, n_queries, relevant_range)
        print(f"\n{label}: {n_queries:,} queries x {N_CLIPS:,} clips, two systems")
        reads = {}
        for suffix in (".csv", ".npz"):
            matrices, reads[suffix] = timed(lambda: [read_matrix(data["paths"][f"{s}{suffix}"]) for s in (0, 1)])
            print(f"  read both matrices ({suffix}):                 {reads[suffix]:6.2f} s")
        truth = read_relevance_file(data["relevance"])
        sources = [SystemSource(f"system{s}", matrix, f"system{s}.npz") for s, matrix in enumerate(matrices)]
        exploration, score_seconds = timed(explore, sources, truth)
        print(f"  score and align (evaluate x 2, ranks):         {score_seconds:6.2f} s")
        figures.update(start_npz=reads[".npz"] + score_seconds, start_csv=reads[".csv"] + score_seconds)
        site = Site(exploration, scan_audio(data["audio"], exploration.clips))
        for path, what in (("index.html", "queries page"), ("data/queries.js", "queries table data"),
                           ("query/0.html", "a query page"), ("clip/0.html", "first clip page (ranks all)"),
                           ("clip/1.html", "a later clip page"), ("summary.html", "summary page"),
                           ("charts/ap-histogram.svg", "AP histogram (cold matplotlib)"),
                           ("charts/recall-curve.svg", "R@K curve"), ("charts/scatter.svg", "scatter plot")):
            page, seconds = timed(site.render, path)
            print(f"  {what + ':':<46} {seconds:6.3f} s  {len(page.content) / 1024:8.0f} KiB")
        report, _ = timed(write_site, Site(exploration, site.audio), folder / "site")
        print(f"  static site (--html), {report.pages:,} pages + {report.audio_files:,} audio links: "
              f"{report.seconds:6.1f} s")
        figures.update(pages=report.pages, site_s=report.seconds)
        if browser is not None:
            server = bind(Site(exploration, site.audio))
            server.start()
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(server.url)
                page.wait_for_function("performance.getEntriesByName('queries-rendered').length > 0")
                first = page.evaluate("performance.getEntriesByName('queries-rendered')[0].startTime")
                page.goto(server.url + "query/0.html")
                page.wait_for_load_state("load")
                query = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
                page.goto(server.url + "clip/5.html")
                page.wait_for_load_state("load")
                clip = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
                start = score_seconds + reads['.npz']
                print(f"  browser, queries page drawn (navigation -> table): {first:6.0f} ms "
                      f"(+ {start:.1f} s to read the .npz and score before the server answers)")
                print(f"  browser, a query page loaded:                  {query:6.0f} ms")
                print(f"  browser, a clip page loaded:                   {clip:6.0f} ms")
                figures["browser"] = (first, query)
                page.close()
            finally:
                server.shutdown()
    return figures


def published_rows(cases: list[dict]) -> list[_published.Row]:
    """Start and browser figures of the largest case; the static site of every case."""
    largest = max(cases, key=lambda figures: figures["queries"])
    size = f"{largest['queries']:,} queries x {N_CLIPS:,} clips"
    browser = ("not measured in this run (`--no-browser`, or no Playwright and Chromium)" if largest["browser"] is None
               else "{:.2f} s / {:.2f} s".format(*(ms / 1000 for ms in largest["browser"])))
    ordered = sorted(cases, key=lambda figures: -figures["queries"])
    sizes = " / ".join(f"{figures['queries']:,}" for figures in ordered)
    sites = " / ".join(f"{figures['pages']:,} pages in {figures['site_s']:.0f} s" for figures in ordered)
    return [_published.Row(f"`explore` start, {size}, two systems: read and score before the server answers",
                           f"{largest['start_npz']:.1f} s from `.npz` ({largest['start_csv']:.1f} s from CSV)"),
            _published.Row(f"`explore` in Chromium, {largest['queries']:,} queries: queries page drawn / "
                           "a query page loaded", browser),
            _published.Row(f"`explore --html` static site, {sizes} queries", sites)]


# --- servers -------------------------------------------------------------------------------------------------

def _request(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


def _measure(name: str, port: int, audio: bytes, repeats: int = 200) -> None:
    rows = []
    for what, path, headers, expected in (
            ("page (60 KiB)", "/page.html", None, None),
            ("whole WAV (2.6 MiB)", "/clip.wav", None, audio),
            ("Range bytes=0-", "/clip.wav", {"Range": "bytes=0-"}, audio),
            ("Range, 64 KiB mid-file", "/clip.wav", {"Range": "bytes=1000000-1065535"}, audio[1000000:1065536])):
        times, status, body = [], None, b""
        for _ in range(repeats if "WAV" not in what else repeats // 4):
            started = time.perf_counter()
            status, body = _request(port, path, headers)
            times.append(time.perf_counter() - started)
        right = "" if expected is None else ("right bytes" if body == expected else f"WRONG: {len(body)} bytes")
        rows.append(f"    {what:<24} {statistics.median(times) * 1000:7.2f} ms  HTTP {status}  {right}")
    print(f"  {name}")
    print("\n".join(rows))


def bench_servers() -> None:
    """The same page and WAV served by each candidate; median latency of sequential requests on 127.0.0.1."""
    from werkzeug.serving import WSGIRequestHandler, make_server
    from werkzeug.utils import send_file
    from werkzeug.wrappers import Request, Response

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sf.write(folder / "clip.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 30 * 44100).astype(np.float32),
                 44100, subtype="PCM_16")
        (folder / "page.html").write_bytes(b"<p>" + b"x" * 60000 + b"</p>")
        audio = (folder / "clip.wav").read_bytes()
        print("\nservers: median of sequential requests on 127.0.0.1 (a new connection each)")

        @Request.application
        def werkzeug_app(request):
            if request.path == "/clip.wav":
                return send_file(folder / "clip.wav", request.environ, conditional=True)
            return Response((folder / "page.html").read_bytes(), content_type="text/html")

        class QuietWerkzeug(WSGIRequestHandler):
            def log_request(self, *args):
                pass

        server = make_server("127.0.0.1", 0, werkzeug_app, threaded=True, request_handler=QuietWerkzeug)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _measure("Werkzeug 3 (threaded WSGI server, send_file)", server.socket.getsockname()[1], audio)
        server.shutdown()

        import functools
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        stdlib = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        threading.Thread(target=stdlib.serve_forever, daemon=True).start()
        _measure("standard library http.server (ThreadingHTTPServer)", stdlib.server_address[1], audio)
        stdlib.shutdown()

        try:
            import uvicorn
            from starlette.applications import Starlette
            from starlette.responses import FileResponse
            from starlette.routing import Route
        except ImportError:
            print("  Starlette + Uvicorn: not installed (pip install starlette uvicorn to compare)")
            return
        app = Starlette(routes=[Route("/clip.wav", lambda request: FileResponse(folder / "clip.wav")),
                                Route("/page.html", lambda request: FileResponse(folder / "page.html"))])
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error")
        asgi = uvicorn.Server(config)
        threading.Thread(target=asgi.run, daemon=True).start()
        while not asgi.started:
            time.sleep(0.05)
        _measure("Starlette + Uvicorn (ASGI, FileResponse)", asgi.servers[0].sockets[0].getsockname()[1], audio)
        asgi.should_exit = True


def import_seconds(statement: str) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return float(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", action="store_true", help="also compare the candidate servers")
    parser.add_argument("--no-browser", action="store_true", help="skip the browser timings")
    _published.add_option(parser)
    options = parser.parse_args()
    browser, playwright = None, None
    if not options.no_browser:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            sync_playwright = None
        if sync_playwright is None or not CHROMIUM.is_file():
            print(f"browser timings skipped: needs Playwright and Chromium at {CHROMIUM}")
        else:
            playwright = sync_playwright().start()
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
    try:
        cases = [bench_case(label, n_queries, relevant_range, browser) for label, n_queries, relevant_range in CASES]
    finally:
        if browser is not None:
            browser.close()
            playwright.stop()
    if options.servers:
        bench_servers()
        print("\nimport time of each server stack (fresh interpreter):")
        for name, statement in (("Werkzeug", "import werkzeug.serving, werkzeug.utils, werkzeug.wrappers"),
                                ("http.server", "import http.server"),
                                ("Starlette + Uvicorn", "import starlette.applications, starlette.responses, uvicorn")):
            try:
                print(f"  {name:<22} {import_seconds(statement) * 1000:6.0f} ms")
            except subprocess.CalledProcessError:
                print(f"  {name:<22} not installed")
    _published.finish(__file__, published_rows(cases), options.write_docs)


if __name__ == "__main__":
    main()
