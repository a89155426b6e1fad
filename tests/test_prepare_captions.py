"""`prepare captions`: any captioned set from a CSV (wide or one row per caption, optional split and Freesound id
columns), and `dataset_weights`: how often each dataset's pairs are drawn per epoch (measured; resume bit for bit)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.data.dataset_files import DEFAULT_FORBIDDEN, read_forbidden_ids
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import read_index
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from dcase_t6.training.data import epoch_batches, load_pairs
from helpers.data import write_tone


def _prepare(root: Path, *arguments: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["prepare", "captions", "--root", str(root), *arguments])
    return result.exit_code, result.stdout, result.output


def test_a_wide_csv_with_splits_is_indexed_with_missing_and_broken_files_reported(tmp_path):
    audio = tmp_path / "audio"
    for index, name in enumerate(["a.wav", "sub/b.wav", "c.flac"]):
        write_tone(audio / name, 1.0 + index, 22050)
    (audio / "broken.wav").write_bytes(b"not audio")
    csv = tmp_path / "captions.csv"
    csv.write_text("file_name,caption_1,caption_2,split\n"
                   "a.wav,a dog barks,a dog is barking,\n"
                   "sub/b.wav,rain on a roof,,val\n"
                   "c,a bell rings,bells ring twice,train\n"      # found by name without its extension
                   "broken.wav,static,,\n"
                   "gone.wav,nothing here,,\n", encoding="utf-8")
    code, stdout, output = _prepare(tmp_path / "data", "--name", "mine", "--csv", str(csv), "--audio", str(audio),
                                    "--json")
    assert code == 0, output
    report = json.loads(stdout)
    assert report["splits"] == {"train": {"clips": 2, "captions": 4, "hours": pytest.approx(4 / 3600, abs=1e-3)},
                                "val": {"clips": 1, "captions": 1, "hours": pytest.approx(2 / 3600, abs=1e-3)}}
    assert sorted((Path(item["path"]).name, item["reason"]) for item in report["skipped"])[1] == (
        "gone.wav", "missing audio file")
    assert {Path(item["path"]).name for item in report["skipped"]} == {"broken.wav", "gone.wav"}
    assert report["excluded"] == {"mine": 0} and report["freesound_derived"] == []
    index = read_index(tmp_path / "data", "mine")
    assert index[["file_name", "caption_index", "caption", "split"]].values.tolist() == [
        ["a.wav", "1", "a dog barks", "train"], ["a.wav", "2", "a dog is barking", "train"],
        ["b.wav", "1", "rain on a roof", "val"],
        ["c.flac", "1", "a bell rings", "train"], ["c.flac", "2", "bells ring twice", "train"]]
    code, stdout, _ = _prepare(tmp_path / "data", "--name", "mine", "--csv", str(csv), "--audio", str(audio), "--json")
    assert code == 0 and json.loads(stdout)["up_to_date"] is True


def test_one_row_per_caption_with_freesound_ids_excludes_the_forbidden_ones(tmp_path):
    forbidden = sorted(read_forbidden_ids(DEFAULT_FORBIDDEN)[0])[0]
    audio = tmp_path / "fsd"
    for clip in ("101", forbidden, "303"):
        write_tone(audio / f"{clip}.wav", 1.0, 16000)
    csv = tmp_path / "fsd_captions.csv"
    csv.write_text("file_name,caption,freesound_id\n"
                   f"101.wav,a door creaks,101\n101.wav,a creaking door,101\n{forbidden}.wav,a car,{forbidden}\n"
                   "303.wav,,303\n303.wav,birds sing,303\n", encoding="utf-8")
    code, stdout, output = _prepare(tmp_path / "data", "--name", "fsd-captions", "--csv", str(csv), "--audio",
                                    str(audio), "--split", "train", "--json")
    assert code == 0, output
    report = json.loads(stdout)
    assert report["excluded"] == {"fsd-captions": 1} and report["freesound_derived"] == ["fsd-captions"]
    assert report["forbidden_ids"]["ids"] == 3079
    assert [row["reason"] for row in report["skipped_rows"]] == ["empty caption (fsd-captions)"]
    index = read_index(tmp_path / "data", "fsd-captions")
    assert index[["file_name", "caption_index", "sound_id"]].values.tolist() == [
        ["101.wav", "1", "101"], ["101.wav", "2", "101"], ["303.wav", "2", "303"]]
    audited = CliRunner().invoke(main, ["prepare", "audit", "--root", str(tmp_path / "data"), "--json"])
    assert audited.exit_code == 0, audited.output
    source = json.loads(audited.stdout)["sources"][0]
    assert (source["dataset"], source["source"], source["clips"]) == ("fsd-captions", "fsd-captions", 2)


@pytest.mark.parametrize("csv_text, arguments, message", [
    ("file_name,text\na.wav,x\n", [], "no caption column"),
    ("file_name,caption\na.wav,x\n,y\n", [], "row 3: empty file_name; fill it in or delete the row"),
    ("file_name,caption,split\na.wav,x,dev set\n", [], "row 2: split 'dev set' is not a split name"),
    ("file_name,caption\na.wav,x\n", ["--name", "clotho"], "not one of clotho"),
    ("name,caption\na.wav,x\n", [], "missing column\\(s\\) \\['file_name'\\]"),
])
def test_bad_input_is_one_line_naming_the_row_or_field_and_exit_2(tmp_path, csv_text, arguments, message):
    write_tone(tmp_path / "audio" / "a.wav", 1.0, 16000)
    csv = tmp_path / "c.csv"
    csv.write_text(csv_text, encoding="utf-8")
    code, _, output = _prepare(tmp_path / "data", "--csv", str(csv), "--audio", str(tmp_path / "audio"),
                               *(arguments or ["--name", "mine"]))
    assert code == 2 and len(output.strip().splitlines()) == 1
    import re

    assert re.search(message, output), output


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory) -> Path:
    """Synthetic (12 training clips x 5 captions = 60 pairs) plus `extra` (8 clips x 2 captions = 16 pairs)."""
    root = tmp_path_factory.mktemp("two-sets")
    prepare_synthetic(Layout.at(root / "data"), SyntheticConfig(development=12, validation=4, evaluation=4,
                                                                 min_duration=2.0, max_duration=3.0))
    rows = ["file_name,caption_1,caption_2"]
    for clip in range(8):
        write_tone(root / "extra" / f"e{clip}.wav", 2.0, 22050, frequency=200.0 + 50 * clip)
        rows.append(f"e{clip}.wav,a tone of {200 + 50 * clip} hertz,a steady hum number {clip}")
    (root / "extra.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    code, _, output = _prepare(root / "data", "--name", "extra", "--csv", str(root / "extra.csv"), "--audio",
                               str(root / "extra"))
    assert code == 0, output
    return root / "data"


def test_dataset_weights_set_how_often_each_datasets_pairs_are_drawn(two_sets):
    """Measured over 40 epochs: synthetic at weight 0.5 (60 pairs) and extra at weight 3 (16 pairs) give
    30 + 48 pairs per epoch (exactly w * n: tolerance half a pair per dataset and epoch), a share of 48 / 78 for
    extra (instead of 16 / 76 unweighted); every extra pair is drawn 3 times per epoch, every synthetic pair in
    0.5 of the epochs on average (each pair's rate within 0.5 +- 0.25 over the 40 epochs)."""
    config = build_config(None, {"data_root": str(two_sets), "datasets": "synthetic,extra",
                                 "dataset_weights": "synthetic=0.5,extra=3"})
    pairs = load_pairs(config)
    groups = pairs.weighted_groups(config.dataset_weights)
    is_extra = np.array([name.startswith("extra/") for name in pairs.pair_clips()])
    assert (len(pairs.captions), int(is_extra.sum())) == (76, 16)
    counts = np.zeros((40, len(pairs.captions)), dtype=np.int64)
    for epoch in range(40):
        drawn = np.concatenate(epoch_batches(len(pairs.captions), 8, config.seed, epoch, groups))
        counts[epoch] = np.bincount(drawn, minlength=len(pairs.captions))
        assert abs(counts[epoch, is_extra].sum() - 3 * 16) <= 0.5 and abs(counts[epoch, ~is_extra].sum() - 30) <= 0.5
    share = counts[:, is_extra].sum() / counts.sum()
    assert share == pytest.approx(48 / 78, abs=1e-9)
    assert (counts[:, is_extra] == 3).all()
    rate = counts[:, ~is_extra].mean(axis=0)
    assert ((counts[:, ~is_extra] <= 1).all() and np.abs(rate - 0.5).max() <= 0.25)
    # weights of 1 are the unweighted order itself
    assert pairs.weighted_groups({"synthetic": 1.0}) is None
    # an epoch of many more draws than pairs is cut whole into batches: nothing dropped at its end
    heavy = pairs.weighted_groups({"synthetic": 0.5, "extra": 10.0})
    drawn = np.concatenate(epoch_batches(len(pairs.captions), 8, config.seed, 0, heavy))
    assert len(drawn) == 30 + 160 and (np.bincount(drawn, minlength=76)[is_extra] == 10).all()


def test_weighted_training_resumes_bit_for_bit(two_sets, tmp_path):
    settings = {"data_root": str(two_sets), "datasets": "synthetic,extra", "dataset_weights": "synthetic=0.5,extra=3",
                "model.backbone": "tiny-cnn", "model.text_model": "tiny-random", "model.embed_dim": 16,
                "batch_size": 8, "epochs": 2, "lr": 1e-3, "audio_seconds": 2.0, "warmup_epochs": 0.5,
                "decay_epochs": 2.0}
    whole = training.train_new(tmp_path / "whole", build_config(None, settings))
    stopped = training.train_new(tmp_path / "parts", build_config(None, {**settings, "max_steps": 4}))
    resumed = training.resume(tmp_path / "parts", stopped.run)
    assert stopped.step == 4 and resumed.step == whole.step == 2 * 10  # 78 pairs: 10 batches of 8
    expected = torch.load(Registry(tmp_path / "whole").file(whole.run, "checkpoint", "last").path,
                          weights_only=True)
    actual = torch.load(Registry(tmp_path / "parts").file(stopped.run, "checkpoint", "last").path,
                        weights_only=True)
    assert all(torch.equal(expected["model"][key], actual["model"][key]) for key in expected["model"])
    assert expected["position"] == actual["position"]


def test_training_on_a_set_that_shares_freesound_ids_with_dev_test_is_refused_unless_allowed(tmp_path):
    """A captions set holding a dev-test clip's Freesound id: `train` stops before training, one line naming the
    pair of splits and the id; `allow_test_overlap` trains anyway."""
    root = tmp_path / "data"
    prepare_synthetic(Layout.at(root), SyntheticConfig(development=4, validation=2, evaluation=2, min_duration=2.0,
                                                       max_duration=3.0))
    index = read_index(root, "synthetic")
    leaked = index.loc[index["split"] == "development-testing", "sound_id"].iloc[0]
    write_tone(tmp_path / "leak" / "x.wav", 2.0, 16000)
    csv = tmp_path / "leak.csv"
    csv.write_text(f"file_name,caption,freesound_id\nx.wav,a beep and a hiss,{leaked}\n", encoding="utf-8")
    code, _, output = _prepare(root, "--name", "leak", "--csv", str(csv), "--audio", str(tmp_path / "leak"))
    assert code == 0, output
    base = ["--workdir", str(tmp_path / "work"), "train", "--data-root", str(root), "--datasets", "synthetic,leak",
            "--backbone", "tiny-cnn", "--text-model", "tiny-random", "--max-steps", "1", "--batch-size", "4",
            "--set", "audio_seconds=2", "--set", "model.embed_dim=16"]
    refused = CliRunner().invoke(main, base)
    assert refused.exit_code == 2, refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1, refused.output
    line = lines[0]
    assert "leak/train -> synthetic/development-testing share 1 Freesound id(s)" in line and leaked in line
    assert "allow_test_overlap=true" in line
    allowed = CliRunner().invoke(main, [*base, "--set", "allow_test_overlap=true", "--json"])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["step"] == 1
