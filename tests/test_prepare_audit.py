"""`prepare audit`: Freesound-id overlaps of training sources with protected splits, and forbidden ids left."""

import json
from pathlib import Path

import pandas as pd
import pytest

from dcase_t6.common.tables import write_table
from dcase_t6.data.split_index import INDEX_COLUMNS
from helpers.cli import run_dcase


def _index(root: Path, dataset: str, rows: list[tuple[str, str, str, str]], captions: int = 1) -> None:
    """A split index as the prepare steps write it: ``captions`` rows per clip (split, source, file, sound id)."""
    records = [{"dataset": dataset, "split": split, "source": source, "file_name": name, "caption_index": index,
                "caption": f"caption {index} of {name}", "path": f"{dataset}/{name}", "duration_s": 10.0,
                "n_samples": 441000, "sample_rate": 44100, "sound_id": sound_id}
               for split, source, name, sound_id in rows for index in range(1, captions + 1)]
    write_table(pd.DataFrame(records, columns=INDEX_COLUMNS), root / "index" / f"{dataset}.csv")


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    clotho = [("development-training", "development", f"dev{i}.wav", str(i)) for i in (1, 2, 3, 4)]
    clotho += [("development-validation", "validation", "val3.wav", "3"), ("development-validation", "validation",
                                                                           "val10.wav", "0010")]
    clotho += [("development-testing", "evaluation", "test4.wav", "4.0"), ("development-testing", "evaluation",
                                                                           "test11.wav", "11")]
    _index(root, "clotho", clotho, captions=5)
    wavcaps = [("train", "FreeSound", f"{i}.flac", str(i)) for i in (10, 11, 12, 500)]
    wavcaps += [("train", "BBC_Sound_Effects", "bbc1.flac", ""), ("train", "SoundBible", "sb1.flac", "")]
    _index(root, "wavcaps", wavcaps)
    _index(root, "audiocaps", [("train", "audiocaps", "yt1.wav", ""), ("val", "audiocaps", "yt2.wav", "")])
    _index(root, "eval", [("evaluation", "eval", "e1.wav", ""), ("evaluation", "eval", "e2.wav", "")])
    return root


@pytest.fixture
def forbidden(tmp_path) -> Path:
    path = tmp_path / "excluded.csv"
    path.write_text("sound_id\n500\n11\nNot found\n", encoding="utf-8")
    return path


def test_audit_counts_and_lists_every_offending_id(data, forbidden):
    result = run_dcase("prepare", "audit", "--root", data, "--forbidden", forbidden, "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["ok"] is False and report["forbidden_ids"] == 2
    assert [(p["dataset"], p["split"], p["clips"], p["with_ids"]) for p in report["protected"]] == [
        ("clotho", "development-testing", 2, 2), ("clotho", "development-validation", 2, 2),
        ("eval", "evaluation", 2, 0)]
    sources = {f"{s['dataset']}/{s['split']}/{s['source']}": s for s in report["sources"]}
    assert set(sources) == {"audiocaps/train/audiocaps", "audiocaps/val/audiocaps", "clotho/development-training/"
                            "development", "wavcaps/train/BBC_Sound_Effects", "wavcaps/train/FreeSound",
                            "wavcaps/train/SoundBible"}
    clotho = sources["clotho/development-training/development"]
    assert (clotho["clips"], clotho["with_ids"]) == (4, 4)  # clips, not caption rows
    assert clotho["overlaps"] == {"clotho/development-testing": ["4"], "clotho/development-validation": ["3"]}
    assert clotho["forbidden"] == []
    freesound = sources["wavcaps/train/FreeSound"]
    assert freesound["overlaps"] == {"clotho/development-testing": ["11"], "clotho/development-validation": ["10"]}
    assert freesound["forbidden"] == ["11", "500"]
    bbc = sources["wavcaps/train/BBC_Sound_Effects"]
    assert (bbc["clips"], bbc["with_ids"], bbc["overlaps"], bbc["forbidden"]) == (1, 0, {}, [])


def test_audit_table_names_sources_and_ids(data, forbidden):
    result = run_dcase("prepare", "audit", "--root", data, "--forbidden", forbidden)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "wavcaps/train/FreeSound holds forbidden 2 Freesound id(s): 11, 500" in text
    assert "clotho/development-training/development shares with clotho/development-testing 1 Freesound id(s): 4" in text
    assert "eval/evaluation: 2 clips without Freesound ids; only the forbidden list guards it" in text
    assert "audit failed" in text


def test_clean_root_passes_with_the_shipped_list(tmp_path):
    root = tmp_path / "data"
    _index(root, "clotho", [("development-training", "development", "a.wav", "999999901"),
                            ("development-validation", "validation", "b.wav", "999999902")])
    _index(root, "wavcaps", [("train", "FreeSound", "999999903.flac", "999999903")])
    result = run_dcase("prepare", "audit", "--root", root)
    assert result.exit_code == 0, result.output
    assert "ok: no training source shares a Freesound id" in " ".join(result.output.split())
    payload = json.loads(run_dcase("prepare", "audit", "--root", root, "--json").output)
    assert payload["ok"] is True and payload["forbidden_ids"] > 3000


def test_root_without_index_exits_2(tmp_path):
    result = run_dcase("prepare", "audit", "--root", tmp_path)
    assert result.exit_code == 2 and "no split index; run `dcase-t6 prepare" in result.output


def test_help_has_an_example():
    result = run_dcase("prepare", "audit", "--help")
    assert result.exit_code == 0 and "Example:" in result.output and "prepare audit --root data" in result.output
