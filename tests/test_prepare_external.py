"""AudioCaps / WavCaps from local folders (forbidden Freesound ids excluded) and the evaluation set."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.data.audiocaps import prepare_audiocaps
from dcase_t6.data.dataset_files import DEFAULT_FORBIDDEN, read_forbidden_ids
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import load_split, read_index
from dcase_t6.data.wavcaps import WavCapsSource, prepare_wavcaps
from helpers.data import write_tone

# SHA-256 of resources/dcase2025_task6_excluded_freesound_ids.csv as the organisers distribute it (baseline repository)
ORGANISERS_FORBIDDEN_SHA256 = "243671ebaebad871615e6903d3e23643ea75f121aa873d7e0172a477d04caf20"
JSON_NAMES = {"FreeSound": "fsd_final.json", "BBC_Sound_Effects": "bbc_final.json", "AudioSet_SL": "as_final.json"}


def test_forbidden_list_shipped_with_the_package_is_the_dcase_file():
    ids, ignored = read_forbidden_ids(DEFAULT_FORBIDDEN)
    assert (len(ids), ignored) == (3079, 1)  # plus the literal 'Not found' row
    assert hashlib.sha256(DEFAULT_FORBIDDEN.read_bytes()).hexdigest() == ORGANISERS_FORBIDDEN_SHA256


def make_wavcaps(root):
    ids, _ = read_forbidden_ids(DEFAULT_FORBIDDEN)
    forbidden = sorted(ids)[:2]
    items = {"FreeSound": [forbidden[0], "11", forbidden[1], "12"], "BBC_Sound_Effects": ["07001", "07002"],
             "AudioSet_SL": ["Yabc.wav", "Ydef.wav"]}
    for source, source_ids in items.items():
        data = [{"id": item_id, "caption": f"{source} sound {i}", "duration": 1.0}
                for i, item_id in enumerate(source_ids)]
        (root / "json_files" / source).mkdir(parents=True)
        (root / "json_files" / source / JSON_NAMES[source]).write_text(json.dumps({"num_captions_per_audio": 1,
                                                                                   "data": data}))
        for item_id in source_ids:
            write_tone(root / "Audio" / source / f"{Path(item_id).stem}.flac", 0.5, 32000)
    (root / "Audio" / "FreeSound" / "12.flac").write_bytes(b"broken")
    return forbidden


def test_wavcaps_excludes_forbidden_freesound_ids_per_source_and_lists_broken_files(tmp_path):
    forbidden = make_wavcaps(tmp_path)
    layout = Layout.at(tmp_path / "data")
    summary = prepare_wavcaps(layout, WavCapsSource(tmp_path / "json_files", tmp_path / "Audio"), workers=2)
    assert summary.excluded == {"AudioSet_SL": 0, "BBC_Sound_Effects": 0, "FreeSound": 2}
    assert [item["path"].endswith("FreeSound/12.flac") for item in summary.skipped] == [True]
    index = read_index(layout.root, "wavcaps")
    assert not set(index["sound_id"]) & set(forbidden)
    assert sorted(index["file_name"]) == ["07001.flac", "07002.flac", "11.flac", "Yabc.flac", "Ydef.flac"]
    assert index.set_index("file_name").loc["11.flac", "sound_id"] == "11"
    stored = json.loads(layout.report_file("wavcaps").read_text())
    assert stored["excluded"]["FreeSound"] == 2 and stored["forbidden_ids"]["ids"] == 3079


def test_wavcaps_cli_with_a_user_forbidden_file(tmp_path):
    make_wavcaps(tmp_path)
    (tmp_path / "mine.csv").write_text("sound_id\n11\nNot found\n")
    result = CliRunner().invoke(main, ["prepare", "wavcaps", "--root", str(tmp_path / "data"), "--json-dir",
                                       str(tmp_path / "json_files"), "--audio", str(tmp_path / "Audio"),
                                       "--forbidden", str(tmp_path / "mine.csv")])
    assert result.exit_code == 0, result.output
    assert "excluded 1 forbidden Freesound item(s) from FreeSound" in result.output
    assert "skipped 1 item(s)" in result.output


def make_audiocaps(root):
    meta = root / "dataset"
    meta.mkdir()
    pd.DataFrame({"audiocap_id": [1, 2, 3, 4],
                  "youtube_id": ["abcdefghijk", "abcdefghijk", "ABC-DEF_123", "zzzzzzzzzzz"],
                  "start_time": [30, 30, 0, 10], "caption": ["A dog barks", "A dog, barking", "", "Rain"]}
                 ).to_csv(meta / "val.csv", index=False)
    pd.DataFrame({"audiocap_id": [9], "youtube_id": ["Q-_qwertyui"], "start_time": [5], "caption": ["Wind blows"]}
                 ).to_csv(meta / "train.csv", index=False)
    write_tone(root / "audio" / "val" / "Yabcdefghijk.wav", 0.5)
    write_tone(root / "audio" / "val" / "ABC-DEF_123_0.flac", 0.5)
    write_tone(root / "audio" / "train" / "Q-_qwertyui.mp3", 0.5)
    return meta


def test_audiocaps_matches_youtube_ids_and_lists_skips(tmp_path):
    meta = make_audiocaps(tmp_path)
    layout = Layout.at(tmp_path / "data")
    summary = prepare_audiocaps(layout, meta, tmp_path / "audio", workers=1)
    assert summary.excluded == {"audiocaps": 0}
    assert [row["reason"] for row in summary.skipped_rows] == ["empty caption (AudioCaps)"]
    assert [Path(item["path"]).name for item in summary.skipped] == ["zzzzzzzzzzz.wav"]  # no such audio file
    index = read_index(layout.root, "audiocaps")
    assert sorted(zip(index["split"], index["file_name"], index["caption_index"])) == [
        ("train", "Q-_qwertyui.mp3", "1"), ("val", "Yabcdefghijk.wav", "1"), ("val", "Yabcdefghijk.wav", "2")]


def test_audiocaps_duplicate_audio_names_and_missing_columns_fail(tmp_path):
    meta = make_audiocaps(tmp_path)
    write_tone(tmp_path / "audio" / "other" / "Yabcdefghijk.flac", 0.5)
    with pytest.raises(UserError, match="duplicate audio file name 'Yabcdefghijk'"):
        prepare_audiocaps(Layout.at(tmp_path / "data"), meta, tmp_path / "audio")
    (tmp_path / "audio" / "other" / "Yabcdefghijk.flac").rename(tmp_path / "audio" / "other" / "abcdefghijk.flac")
    with pytest.raises(UserError, match="same YouTube id 'abcdefghijk'"):
        prepare_audiocaps(Layout.at(tmp_path / "data"), meta, tmp_path / "audio")
    (tmp_path / "audio" / "other" / "abcdefghijk.flac").unlink()
    pd.DataFrame({"youtube_id": ["x"], "caption": ["y"]}).to_csv(meta / "test.csv", index=False)
    with pytest.raises(UserError, match=r"test.csv: missing column\(s\) \['audiocap_id', 'start_time'\]"):
        prepare_audiocaps(Layout.at(tmp_path / "data"), meta, tmp_path / "audio")


def test_eval_set_indexes_every_clip_and_stores_the_queries(tmp_path):
    write_tone(tmp_path / "audio" / "b, clip.wav", 0.5)
    write_tone(tmp_path / "audio" / "a&#39;s clip.wav", 0.5)
    write_tone(tmp_path / "audio" / "quiet.wav", 0.5, amplitude=0.0)  # silent clips still need a column
    pd.DataFrame({"caption": ["A dog barks.", "Rain, then thunder."]}).to_csv(tmp_path / "captions.csv", index=False)
    root = tmp_path / "data"
    result = CliRunner().invoke(main, ["prepare", "eval", "--root", str(root), "--captions",
                                       str(tmp_path / "captions.csv"), "--audio", str(tmp_path / "audio")])
    assert result.exit_code == 0, result.output
    split = load_split(root, "eval", "evaluation")
    assert split.files == ["a&#39;s clip.wav", "b, clip.wav", "quiet.wav"]
    assert split.queries == ["A dog barks.", "Rain, then thunder."] and split.query_files == [None, None]


@pytest.mark.parametrize("problem, message", [
    ("unreadable", "unreadable"), ("duplicate", "two clips named 'a.wav'"),
    ("empty", "row 3, column 'caption' is empty"), ("column", "missing column(s) ['caption']")])
def test_eval_set_problems_are_errors(tmp_path, problem, message):
    write_tone(tmp_path / "audio" / "a.wav", 0.5)
    captions = pd.DataFrame({"caption": ["one", "two"]})
    if problem == "unreadable":
        (tmp_path / "audio" / "b.wav").write_bytes(b"RIFFxxxx")
    elif problem == "duplicate":
        write_tone(tmp_path / "audio" / "sub" / "a.wav", 0.5)
    elif problem == "empty":
        captions = pd.DataFrame({"caption": ["one", " "]})
    else:
        captions = captions.rename(columns={"caption": "query"})
    captions.to_csv(tmp_path / "captions.csv", index=False)
    result = CliRunner().invoke(main, ["prepare", "eval", "--root", str(tmp_path / "data"), "--captions",
                                       str(tmp_path / "captions.csv"), "--audio", str(tmp_path / "audio")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "data" / "index" / "eval.csv").exists()
