"""Search over your own sounds with a real (tiny, trained) model, through the command line: `index build` embeds
exactly as `embed` does, `search` ranks as `embed`'s similarity matrix does, a changed file is the only one
embedded again, another model is refused, `--like`, `--json`, and `explore --index`'s endpoint. Slow: it trains."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dcase_t6.data.layout import Layout
from dcase_t6.embedding.checkpoints import SplitRequest, embed_run
from dcase_t6.runs.config import build_config
from dcase_t6.search.store import open_index
from dcase_t6.training import trainer as training
from helpers.cli import cli, cli_error
from helpers.servers import start_server, started_json

pytestmark = pytest.mark.slow
DEV_TEST = "development-testing"


@pytest.fixture(scope="module")
def indexed(tiny_training, tmp_path_factory) -> dict:
    """A tiny run, `embed`'s dev-test outputs, its export, and an index of dev-test's clips (copied into
    sub-folders) built with the run."""
    root = tmp_path_factory.mktemp("search")
    workdir = root / "work"
    run = training.train_new(workdir, build_config(None, {**tiny_training, "name": "tiny"})).run
    data_root = Path(tiny_training["data_root"])
    outcome = embed_run(workdir, run, SplitRequest(data_root, "synthetic", DEV_TEST, batch_size=4))
    sounds = root / "my sounds"
    clips = sorted(Layout.at(data_root).audio_dir("synthetic", "evaluation").iterdir())
    for number, clip in enumerate(clips):
        target = sounds / ("" if number % 2 else "field recordings") / clip.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, target)
    built = cli(workdir, "index", "build", "--model", run[:8], "--audio", sounds, "--out", root / "index",
                "--batch-size", 3, "--json")
    cli(workdir, "export", run, "--out", root / "exported")
    with np.load(outcome.embeddings, allow_pickle=False) as data:
        embedded = {key: data[key] for key in data.files}
    return {"root": root, "workdir": workdir, "run": run, "sounds": sounds, "index": root / "index", "built": built,
            "embedded": embedded, "clips": clips}


def test_the_index_holds_embed_s_vectors_of_every_file(indexed):
    built, embedded = indexed["built"], indexed["embedded"]
    assert built["files"] == built["embedded"] == len(indexed["clips"]) and built["updated"] is True
    assert built["model"].startswith(f"run {indexed['run']} (checkpoint best)")
    view = open_index(indexed["index"])
    by_name = {Path(entry.path).name: row for row, entry in enumerate(view.entries)}
    for path, vector in zip(embedded["paths"], embedded["audio"]):
        np.testing.assert_allclose(view.vectors[by_name[Path(str(path)).name]], vector, atol=2e-5)


def test_search_ranks_as_embed_s_similarity_matrix_does(indexed):
    embedded, view = indexed["embedded"], open_index(indexed["index"])
    caption = str(embedded["queries"][0])
    answer = cli(indexed["workdir"], "search", indexed["index"], caption, "--top", 4, "--json")
    assert set(answer) == {"index", "text", "like", "top", "method", "model", "files", "seconds", "results"}
    assert (answer["text"], answer["method"], answer["files"]) == (caption, "exact", len(indexed["clips"]))
    scores = embedded["audio"] @ embedded["text"][0]  # embed's own vectors, by brute force
    expected = [Path(str(embedded["paths"][column])).name for column in np.argsort(-scores, kind="stable")[:4]]
    assert [Path(result["path"]).name for result in answer["results"]] == expected
    np.testing.assert_allclose([result["score"] for result in answer["results"]], np.sort(scores)[::-1][:4],
                               atol=1e-4)
    first = answer["results"][0]
    assert Path(first["file"]) == indexed["sounds"] / first["path"] == Path(view.manifest.audio) / first["path"]
    text = cli(indexed["workdir"], "search", indexed["index"], caption, "--top", 2)
    assert f'search "{caption}": top 2 of {len(indexed["clips"])} files, exact' in text


def test_like_finds_the_example_itself_first(indexed):
    example = next(indexed["sounds"].rglob("*.wav"))
    answer = cli(indexed["workdir"], "search", indexed["index"], "--like", example, "--top", 3, "--json")
    assert answer["results"][0]["path"] == example.relative_to(indexed["sounds"]).as_posix()
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-4) and answer["like"] == str(example)


def test_a_rebuild_embeds_only_the_changed_file_and_another_model_is_refused(indexed, tmp_path):
    workdir, root = indexed["workdir"], indexed["root"]
    copy = tmp_path / "index"
    shutil.copytree(indexed["index"], copy)
    changed = next(indexed["sounds"].rglob("*.wav"))
    samples, rate = sf.read(changed)
    try:
        sf.write(changed, samples[::-1].copy(), rate)
        rebuilt = cli(workdir, "index", "build", "--model", indexed["run"], "--audio", indexed["sounds"], "--out",
                      copy, "--json")
    finally:
        shutil.copy(next(clip for clip in indexed["clips"] if clip.name == changed.name), changed)
    assert (rebuilt["embedded"], rebuilt["unchanged"], rebuilt["files"]) == (1, len(indexed["clips"]) - 1,
                                                                           len(indexed["clips"]))
    line = cli_error(workdir, "index", "build", "--model", root / "exported", "--audio", indexed["sounds"],
                     "--out", copy)
    assert "this index holds the vectors of run" in line and "use a new --out for another model" in line
    line = cli_error(workdir, "index", "build", "--model", indexed["run"], "--audio", indexed["sounds"], "--out",
                     indexed["sounds"] / "index")
    assert "inside the --audio folder" in line
    by_folder = cli(workdir, "index", "build", "--model", root / "exported", "--audio", indexed["sounds"], "--out",
                    tmp_path / "exported-index", "--json")
    assert by_folder["model"].startswith(f"exported model {root / 'exported'}")
    found = cli(tmp_path / "elsewhere", "search", tmp_path / "exported-index", "a beep", "--json")
    assert len(found["results"]) == min(10, len(indexed["clips"]))  # a folder's index needs no registry


def test_explore_index_answers_the_search_endpoint(indexed):
    command = [sys.executable, "-m", "dcase_t6", "--workdir", str(indexed["workdir"]), "explore", "--index",
               str(indexed["index"]), "--json"]
    process = start_server(command)
    try:
        started = started_json(process)
        assert started["indexed"] == len(indexed["clips"]) and started["search"].endswith("/search.html")
        caption = str(indexed["embedded"]["queries"][1])
        query = urllib.parse.urlencode({"q": caption, "top": 3})
        with urllib.request.urlopen(f"{started['url']}api/search?{query}", timeout=30) as response:
            payload = json.loads(response.read())
        expected = cli(indexed["workdir"], "search", indexed["index"], caption, "--top", 3, "--json")
        assert [item["name"] for item in payload["results"]] == [item["path"] for item in expected["results"]]
        with urllib.request.urlopen(started["url"] + payload["results"][0]["audio"], timeout=30) as response:
            assert response.read() == (indexed["sounds"] / payload["results"][0]["name"]).read_bytes()
    finally:
        process.terminate()
        process.wait(timeout=10)
