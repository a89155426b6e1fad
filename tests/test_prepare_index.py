"""Split index of a Clotho-layout folder: bad CSVs fail clearly, bad audio is listed and skipped."""

import json

import pandas as pd
import pytest

from dcase_t6.common.errors import UserError
from dcase_t6.data.clotho_layout import index_clotho_layout
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import INDEX_COLUMNS, load_split, read_index
from helpers.data import write_tone

CAPTIONS = [f"caption_{i}" for i in range(1, 6)]


def make_dataset(root, names=("a.wav", "b, c.wav", "d&#39;e.wav"), part="evaluation"):
    """A Clotho-layout dataset 'toy' with one part, 44.1 kHz tones and a latin-1 metadata CSV."""
    layout = Layout.at(root)
    layout.dataset_dir("toy").mkdir(parents=True, exist_ok=True)
    rows = [[name, *[f"{name} caption {i}" for i in range(1, 6)]] for name in names]
    pd.DataFrame(rows, columns=["file_name", *CAPTIONS]).to_csv(layout.captions_csv("toy", part), index=False)
    metadata = pd.DataFrame({"file_name": list(names), "keywords": "k",
                             "sound_id": [str(100 + i) for i in range(len(names))], "sound_link": "",
                             "start_end_samples": "", "manufacturer": "Ünï", "license": ""})
    metadata.to_csv(layout.metadata_csv("toy", part), index=False, encoding="ISO-8859-1")
    for name in names:
        write_tone(layout.audio_dir("toy", part) / name)
    return layout


def test_index_has_one_row_per_caption_with_audio_facts(tmp_path):
    layout = make_dataset(tmp_path)
    report = index_clotho_layout(layout, "toy", workers=2)
    assert report.splits == {"development-testing": {"clips": 3, "captions": 15, "hours": round(3 / 3600, 3)}}
    index = read_index(tmp_path, "toy")
    assert list(index.columns) == INDEX_COLUMNS and len(index) == 15
    row = index.iloc[5]
    assert (row["file_name"], row["caption_index"], row["n_samples"], row["sample_rate"], row["sound_id"]) == \
        ("b, c.wav", "1", 44100, 44100, "101")
    assert row["duration_s"] == 1.0 and row["path"] == str(layout.audio_dir("toy", "evaluation") / "b, c.wav")
    assert (tmp_path / "index" / "toy.csv").read_text().count('"b, c.wav"') == 5  # quoted, round-trips
    split = load_split(tmp_path, "toy", "development-testing")
    assert split.files == ["a.wav", "b, c.wav", "d&#39;e.wav"] and len(split.queries) == 15
    assert split.query_files[5] == "b, c.wav"
    assert index_clotho_layout(layout, "toy", workers=1).up_to_date


@pytest.mark.parametrize("problem", ["unreadable", "silent", "rate", "missing", "empty"])
def test_bad_audio_is_listed_and_skipped(tmp_path, problem):
    layout = make_dataset(tmp_path)
    bad = layout.audio_dir("toy", "evaluation") / "a.wav"
    if problem == "unreadable":
        bad.write_bytes(b"RIFF....WAVEfmt garbage")
    elif problem == "silent":
        write_tone(bad, amplitude=0.0)
    elif problem == "rate":
        write_tone(bad, rate=16000)
    elif problem == "missing":
        bad.unlink()
    else:
        bad.write_bytes(b"")
    report = index_clotho_layout(layout, "toy", workers=2)
    assert [item["path"] for item in report.skipped] == [str(bad)]
    reason = report.skipped[0]["reason"]
    assert {"unreadable": "unreadable", "silent": "silent", "rate": "16000 Hz", "missing": "missing",
            "empty": "unreadable"}[problem] in reason
    assert set(read_index(tmp_path, "toy")["file_name"]) == {"b, c.wav", "d&#39;e.wav"}
    stored = json.loads(layout.report_file("toy").read_text())
    assert stored["skipped"] == report.skipped


def rewrite_captions(layout, edit):
    path = layout.captions_csv("toy", "evaluation")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame).to_csv(path, index=False)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.drop(columns=["caption_3"]), "missing column(s) ['caption_3']"),
    (lambda f: f.assign(caption_4=["x", "  ", "y"]), "row 3, column 'caption_4' is empty"),
    (lambda f: pd.concat([f, f.iloc[[0]]]), "file_name 'a.wav' appears in rows 2, 5"),
])
def test_bad_captions_csv_fails_and_writes_nothing(tmp_path, edit, message):
    layout = make_dataset(tmp_path)
    rewrite_captions(layout, edit)
    with pytest.raises(UserError, match="clotho_captions_evaluation.csv") as err:
        index_clotho_layout(layout, "toy", workers=1)
    assert message in str(err.value)
    assert not layout.index_file("toy").exists() and not layout.report_file("toy").exists()


def test_failed_rebuild_keeps_the_previous_index(tmp_path):
    layout = make_dataset(tmp_path)
    index_clotho_layout(layout, "toy", workers=1)
    before = layout.index_file("toy").read_bytes()
    rewrite_captions(layout, lambda f: f.drop(columns=["caption_1"]))
    with pytest.raises(UserError):
        index_clotho_layout(layout, "toy", workers=1)
    assert layout.index_file("toy").read_bytes() == before
    assert [p.name for p in (tmp_path / "index").iterdir() if p.name.startswith(".")] == []


def test_missing_dataset_and_missing_split_are_clear(tmp_path):
    with pytest.raises(UserError, match="no clotho_captions_<part>.csv"):
        index_clotho_layout(Layout.at(tmp_path), "toy", workers=1)
    make_dataset(tmp_path)
    index_clotho_layout(Layout.at(tmp_path), "toy", workers=1)
    with pytest.raises(UserError, match="no rows for split 'development-training'"):
        read_index(tmp_path, "toy", "development-training")
    with pytest.raises(UserError, match="found: toy"):
        read_index(tmp_path, "clotho")
