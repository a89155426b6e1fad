"""Which metric picks the best checkpoint (``monitor``), training on several splits (``train_split``), and a final
system without validation (``validation_split: null``: best = last), through the CLI and the library on the tiny
synthetic dataset."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.pipeline.run import PipelineRequest, config_digest, run_pipeline
from dcase_t6.runs.config import build_config, from_dict
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from dcase_t6.training.data import load_pairs, training_splits

FINAL_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "final-system.yaml"


def _train(workdir: Path, tiny_training: dict, *options: str) -> dict:
    flags = ["--data-root", tiny_training["data_root"], "--datasets", "synthetic", "--backbone", "tiny-cnn",
             "--text-model", "tiny-random", "--batch-size", "8", "--lr", "1e-3", "--audio-seconds", "2",
             "--set", "model.embed_dim=16", "--set", "warmup_epochs=0.5", "--set", "decay_epochs=2"]
    result = CliRunner().invoke(main, ["--workdir", str(workdir), "train", *flags, *options, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_monitor_map16_selects_the_best_checkpoint_by_validation_map16(tiny_training, tmp_path):
    summary = _train(tmp_path, tiny_training, "--epochs", "2", "--monitor", "mAP@16")
    run = Registry(tmp_path).run(summary["run"])
    assert all("mAP@16" in epoch for epoch in run.epochs)
    best = max(run.epochs, key=lambda epoch: epoch["mAP@16"])
    assert summary["best_mAP@16"] == best["mAP@16"]
    info = Registry(tmp_path).file(summary["run"], "checkpoint", "best").info
    assert info["mAP@16"] == best["mAP@16"] and info["epoch"] == best["epoch"] + 1
    assert "validation mAP@16 on synthetic/development-validation" in info["selection"]


def test_train_split_names_several_splits_and_one_name_keeps_the_old_pairs(tiny_training):
    one = build_config(None, {**tiny_training, "train_split": "development-training"})
    both = build_config(None, {**tiny_training, "train_split": "development-training,development-validation"})
    assert one.train_split == ["development-training"]
    # the default (one split) reads the very pairs it always did: same fingerprint as the string form
    assert load_pairs(one).fingerprint == load_pairs(build_config(None, tiny_training)).fingerprint
    pairs_one, pairs_both = load_pairs(one), load_pairs(both)
    assert len(pairs_one.captions) == 12 * 5 and len(pairs_both.captions) == (12 + 4) * 5
    assert len(pairs_both.clip_names) == 16 and set(pairs_one.captions) < set(pairs_both.captions)


def test_audiocaps_and_wavcaps_splits_are_chosen_by_the_same_names():
    available = {"clotho": ["development-testing", "development-training", "development-validation"],
                 "audiocaps": ["test", "train", "val"], "wavcaps": ["train"]}
    config = from_dict({"datasets": ["clotho", "audiocaps", "wavcaps"],
                        "train_split": ["development-training", "development-validation"]})
    assert training_splits(config, available) == {"clotho": ["development-training", "development-validation"],
                                                  "audiocaps": ["train"], "wavcaps": ["train"]}
    # the AISTAT 2025 report's pretraining: AudioCaps' train, val and test together
    config = from_dict({"datasets": ["clotho", "audiocaps", "wavcaps"],
                        "train_split": ["development-training", "train", "audiocaps/val", "audiocaps/test"]})
    assert training_splits(config, available) == {"clotho": ["development-training"],
                                                  "audiocaps": ["train", "val", "test"], "wavcaps": ["train"]}


@pytest.mark.parametrize("train_split, message", [
    (["development-training", "development-validaton"],
     "train_split 'development-validaton' is a split of none of the datasets"),
    (["development-trainng"], "dataset 'clotho' has none of the splits development-trainng nor 'train'"),
    (["development-training", "audiocaps/valid"], "dataset 'audiocaps' has no split 'valid'"),
])
def test_a_split_no_dataset_has_is_named(train_split, message):
    available = {"clotho": ["development-training"], "audiocaps": ["test", "train", "val"]}
    config = from_dict({"datasets": ["clotho", "audiocaps"], "train_split": train_split})
    with pytest.raises(UserError, match=message):
        training_splits(config, available)


def test_an_empty_train_split_is_one_line_naming_the_key(tmp_path):
    result = CliRunner().invoke(main, ["--workdir", str(tmp_path), "train", "--train-split", ","])
    assert result.exit_code == 2 and "config key 'train_split' is empty" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_stage_digests_of_single_split_configs_are_unchanged():
    def old_digest(values: dict) -> str:  # what earlier versions computed: the non-default keys, train_split a string
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()

    assert config_digest(from_dict({})) == old_digest({})
    assert config_digest(from_dict({"train_split": "development-validation", "epochs": 3})) == old_digest(
        {"train_split": "development-validation", "epochs": 3})
    assert config_digest(from_dict({"train_split": ["development-training"]})) == old_digest({})
    assert config_digest(from_dict({"train_split": ["a", "b"]})) == old_digest({"train_split": ["a", "b"]})


def test_a_final_system_without_validation_keeps_the_last_epoch_and_says_so(tiny_training, tmp_path):
    summary = _train(tmp_path, tiny_training, "--epochs", "2", "--train-split",
                     "development-training,development-validation", "--no-validation")
    rule = "the last epoch (no validation split: best = last)"
    assert summary["status"] == "finished" and summary["best"] == rule
    registry = Registry(tmp_path)
    run = registry.run(summary["run"])
    assert run.config["validation_split"] is None
    assert run.config["train_split"] == ["development-training", "development-validation"]
    assert [sorted(key for key in epoch if key.startswith(("R@", "mAP@"))) for epoch in run.epochs] == [[], []]
    best = registry.file(summary["run"], "checkpoint", "best")
    assert best.info["epoch"] == 2 and best.info["selection"] == rule
    best_weights = torch.load(best.path, weights_only=True)["model"]
    last_weights = torch.load(registry.file(summary["run"], "checkpoint", "last").path, weights_only=True)["model"]
    assert all(torch.equal(best_weights[key], last_weights[key]) for key in last_weights)
    shown = CliRunner().invoke(main, ["--workdir", str(tmp_path), "runs", "show", summary["run"], "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["best_checkpoint"] == rule

    from dcase_t6.submission.systems import describe_runs

    description = describe_runs(registry, [summary["run"]])
    assert description.description["metric_monitored"] == "none: no validation split, the last epoch's checkpoint"
    assert description.validation_datasets == []
    assert [entry["purpose"] for entry in description.training_datasets] == ["training", "training"]


def test_a_run_without_validation_resumes_bit_for_bit(tiny_training, tmp_path):
    config = {**tiny_training, "epochs": 2, "train_split": "development-training,development-validation",
              "validation_split": "null"}
    whole = training.train_new(tmp_path / "whole", build_config(None, config))
    stopped = training.train_new(tmp_path / "parts", build_config(None, {**config, "max_steps": 3}))
    assert stopped.status == "stopped"
    resumed = training.resume(tmp_path / "parts", stopped.run)
    assert resumed.step == whole.step == 2 * 10  # 80 pairs in batches of 8, 2 epochs
    for tag in ("last", "best"):
        expected = torch.load(Registry(tmp_path / "whole").file(whole.run, "checkpoint", tag).path,
                              weights_only=True)
        actual = torch.load(Registry(tmp_path / "parts").file(stopped.run, "checkpoint", tag).path,
                            weights_only=True)
        assert all(torch.equal(expected["model"][key], actual["model"][key]) for key in expected["model"])


def test_the_final_system_example_ends_with_a_stage_on_development_and_validation(tiny_training, tmp_path):
    overrides = {key: value for key, value in tiny_training.items()}
    summaries = run_pipeline(tmp_path, PipelineRequest(FINAL_EXAMPLE, overrides))
    assert [(summary.stage, summary.status) for summary in summaries] == [("baseline/select", "finished"),
                                                                                 ("baseline/final", "finished")]
    assert summaries[1].training.selection == "the last epoch (no validation split: best = last)"
    final = Registry(tmp_path).run(summaries[1].run)
    assert final.config["train_split"] == ["development-training", "development-validation"]
    assert final.config["validation_split"] is None
