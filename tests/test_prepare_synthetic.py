"""prepare synthetic: deterministic Clotho-layout data whose captions describe the placed events."""

import numpy as np
import pandas as pd
import soundfile as sf
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.data.clotho_layout import read_captions_csv, read_metadata_csv
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import load_split, read_index
from dcase_t6.data.synthetic import KINDS, LOUDNESS, SyntheticConfig, generate, prepare_synthetic
from dcase_t6.retrieval.ground_truth import read_relevance_file
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_matrix
from helpers.data import SMALL, tree_digest

CONFIG = SyntheticConfig(seed=7, development=10, validation=4, evaluation=12, min_duration=2.0, max_duration=3.0)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    generate(CONFIG, tmp_path / "a")
    generate(CONFIG, tmp_path / "b")
    generate(SyntheticConfig(**{**CONFIG.__dict__, "seed": 8}), tmp_path / "c")
    first = tree_digest(tmp_path / "a")
    assert first == tree_digest(tmp_path / "b")
    assert first != tree_digest(tmp_path / "c")
    assert len([name for name in first if name.startswith("audio/")]) == 26


def test_clotho_layout_with_awkward_names_and_latin1_metadata(tmp_path):
    generate(CONFIG, tmp_path)
    captions = read_captions_csv(tmp_path / "clotho_captions_development.csv")
    assert list(captions.columns) == ["file_name", *[f"caption_{i}" for i in range(1, 6)]]
    names = pd.concat([read_captions_csv(tmp_path / f"clotho_captions_{p}.csv")["file_name"]
                       for p in ("development", "validation", "evaluation")])
    assert names.is_unique
    assert any("," in n for n in names) and any("&#39;" in n for n in names) and any("é" in n for n in names)
    metadata = read_metadata_csv(tmp_path / "clotho_metadata_development.csv")
    assert "Café demo 4.wav" in set(metadata["file_name"])  # decoded from ISO-8859-1
    info = sf.info(tmp_path / "audio" / "development" / captions["file_name"][0])
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    assert 2.0 <= info.duration <= 3.0


def test_captions_name_the_placed_events_in_order_and_audio_matches(tmp_path):
    generate(CONFIG, tmp_path)
    events = pd.read_csv(tmp_path / "events.csv", keep_default_na=False)
    captions = pd.concat([read_captions_csv(tmp_path / f"clotho_captions_{p}.csv")
                          for p in ("development", "validation", "evaluation")]).set_index("file_name")
    for name, placed in events.groupby("file_name", sort=False):
        assert placed["onset_s"].is_monotonic_increasing
        canonical = captions.loc[name, "caption_1"].lower()
        phrases = [f"{LOUDNESS[row.loudness][1][0]} {KINDS[row.kind].phrases[row.variant][0]}"
                   for row in placed.itertuples()]
        positions = [canonical.index(phrase) for phrase in phrases]
        assert positions == sorted(positions), (canonical, phrases)
        for column in ("caption_2", "caption_3", "caption_4", "caption_5"):
            text = captions.loc[name, column].lower()
            for row in placed.itertuples():  # every paraphrase still names each event
                assert any(noun in text for noun in KINDS[row.kind].phrases[row.variant])
    beeps = events[events["kind"] == "beep"]
    assert len(beeps) > 0
    for row in beeps.itertuples():
        samples, rate = sf.read(tmp_path / "audio" / row.part / row.file_name)
        window = samples[int(row.onset_s * rate): int((row.onset_s + row.duration_s) * rate)]
        peak_hz = np.argmax(np.abs(np.fft.rfft(window))) * rate / len(window)
        assert (peak_hz > 1500) if row.variant == "high" else (peak_hz < 500)


def test_prepare_indexes_and_writes_valid_multi_relevance(tmp_path):
    layout = Layout.at(tmp_path)
    summary = prepare_synthetic(layout, CONFIG)
    assert summary.generated and summary.skipped == []
    assert {split: (c["clips"], c["captions"]) for split, c in summary.splits.items()} == {
        "development-training": (10, 50), "development-validation": (4, 20), "development-testing": (12, 60)}
    relevance = read_relevance_file(layout.relevance_file("synthetic"))
    counts = [len(files) for files in relevance.relevant_files]
    assert max(counts) >= 2 and sum(counts) == 12  # every test clip is relevant to exactly one query
    index = read_index(tmp_path, "synthetic", "development-testing")
    for query, files in zip(relevance.queries, relevance.relevant_files):
        holders = set(index.loc[index["caption"] == query, "file_name"])
        assert holders == set(files)  # the query is caption_1 of every relevant clip
    again = prepare_synthetic(layout, CONFIG)
    assert not again.generated and again.up_to_date


def test_relevance_scores_through_evaluate_with_quoted_names(tmp_path):
    layout = Layout.at(tmp_path)
    prepare_synthetic(layout, CONFIG)
    split = load_split(tmp_path, "synthetic", "development-testing")
    relevance = read_relevance_file(layout.relevance_file("synthetic"))
    scores = np.array([[1.0 if name in files else 0.0 for name in split.files] for files in relevance.relevant_files])
    write_matrix(SimilarityMatrix(relevance.queries, split.files, scores), tmp_path / "perfect.csv")
    result = CliRunner().invoke(main, ["evaluate", "-p", str(tmp_path / "perfect.csv"),
                                       "-r", str(layout.relevance_file("synthetic")), "--json"])
    assert result.exit_code == 0, result.output
    assert '"mAP@16": 1.0' in result.output


def test_cli_synthetic_json_and_bad_sizes(tmp_path):
    runner = CliRunner()
    args = ["prepare", "synthetic", "--root", str(tmp_path), "--train", "4", "--val", "3", "--test", "5",
            "--min-duration", "2", "--max-duration", "3", "--seed", str(SMALL.seed), "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert '"development-testing"' in result.output
    bad = runner.invoke(main, ["prepare", "synthetic", "--root", str(tmp_path / "x"), "--min-duration", "9",
                               "--max-duration", "3"])
    assert bad.exit_code == 2 and "min-duration" in bad.output
    assert not (tmp_path / "x" / "synthetic").exists()
