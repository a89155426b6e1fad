"""prepare relevance: the real dev-test metadata_eval.csv is validated against the split index."""


import pandas as pd
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.common.tables import write_table
from dcase_t6.data.layout import Layout
from dcase_t6.data.relevance import attach_relevance, write_relevance_csv
from dcase_t6.data.split_index import INDEX_COLUMNS
from dcase_t6.retrieval.ground_truth import read_relevance_file
from helpers.data import DEVTEST_RELEVANCE

REAL = DEVTEST_RELEVANCE  # the organisers' file, shipped in tests/data: these tests always run


def index_for(layout: Layout, queries: list[str], files: list[str]) -> None:
    """A hand-written Clotho dev-test index whose captions are ``queries`` and clips ``files``."""
    rows = [{"dataset": "clotho", "split": "development-testing", "source": "evaluation", "file_name": name,
             "caption_index": 1, "caption": queries[i] if i < len(queries) else f"other {i}",
             "path": f"clotho/audio/evaluation/{name}", "duration_s": 20.0, "n_samples": 882000, "sample_rate": 44100,
             "sound_id": ""} for i, name in enumerate(files)]
    rows += [{**rows[0], "caption_index": 2, "caption": query} for query in queries[len(files):]]
    write_table(pd.DataFrame(rows, columns=INDEX_COLUMNS), layout.index_file("clotho"))


def test_real_metadata_eval_attaches_to_a_matching_split(tmp_path):
    layout = Layout.at(tmp_path)
    truth = read_relevance_file(REAL)
    files = sorted({name for names in truth.relevant_files for name in names})
    index_for(layout, truth.queries, files)
    summary = attach_relevance(layout, "clotho", REAL)
    assert summary.queries == 1037
    per_query = summary.relevant_per_query
    assert (per_query["min"], per_query["max"], round(per_query["mean"], 1)) == (1, 12, 3.0)
    assert layout.relevance_file("clotho").read_bytes() == REAL.read_bytes()


def test_mismatches_are_reported_and_nothing_is_written(tmp_path):
    layout = Layout.at(tmp_path)
    truth = read_relevance_file(REAL)
    files = sorted({name for names in truth.relevant_files for name in names})
    index_for(layout, truth.queries[1:], [name for name in files if name != "bridge.wav"])
    with pytest.raises(UserError) as err:
        attach_relevance(layout, "clotho", REAL)
    message = str(err.value)
    assert "1 of 1037 queries are not captions" in message and "A Bicycle rides past" in message
    assert "1 listed files are not clips of the split (first 'bridge.wav')" in message
    assert not layout.relevance_file("clotho").exists()


def test_writer_matches_the_organiser_format_and_cli_attaches(tmp_path):
    layout = Layout.at(tmp_path)
    queries = ["A dog barks, then a car passes.", "Rain falls."]
    relevant = [["d&#39;og, 1.wav", "car.wav"], ["rain.wav"]]
    source = tmp_path / "metadata_eval.csv"
    write_relevance_csv(source, queries, relevant)
    assert source.read_text() == ('query,audio_filenames\n"A dog barks, then a car passes.",'
                                  '"[\'d&#39;og, 1.wav\', \'car.wav\']"\nRain falls.,[\'rain.wav\']\n')
    index_for(layout, queries, ["d&#39;og, 1.wav", "car.wav", "rain.wav"])
    result = CliRunner().invoke(main, ["prepare", "relevance", "--root", str(tmp_path), "--file", str(source),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert read_relevance_file(layout.relevance_file("clotho")).relevant_files == relevant
    missing = CliRunner().invoke(main, ["prepare", "relevance", "--root", str(tmp_path), "--file", str(source),
                                        "--dataset", "audiocaps"])
    assert missing.exit_code == 2 and "no index for dataset 'audiocaps'" in missing.output
