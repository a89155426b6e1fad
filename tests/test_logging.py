"""Experiment logging: TensorBoard and Weights & Biases (offline) get the config, the run id and its registry
link, per-step loss terms, learning rate and data-loader wait every ``log_every`` steps, and every epoch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.runs.registry import Registry

# tiny_training: 12 clips x 5 captions = 60 pairs in batches of 8 -> 8 optimizer steps per epoch
STEPS_PER_EPOCH = 8


def train(workdir: Path, tiny_training: dict, *options: str) -> dict:
    settings = [arg for key, value in {**tiny_training, "epochs": 2}.items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(main, ["--workdir", str(workdir), "train", *settings, "--json", *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def texts(folder: Path) -> dict[str, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]}


def test_tensorboard_step_records_average_the_batches_since_the_last_one(tmp_path, tiny_training):
    summary = train(tmp_path, tiny_training, "--log", "tensorboard", "--set", f"log_every={STEPS_PER_EPOCH}")
    run = Registry(tmp_path).run(summary["run"])
    logged = scalars(tmp_path / "runs" / run.id / "tensorboard")
    # one step record per epoch here, so it averages exactly the batches of that epoch
    assert [step for step, _ in logged["step/train_loss"]] == [8, 16]
    assert [value for _, value in logged["step/train_loss"]] == pytest.approx(
        [epoch["train_loss"] for epoch in run.epochs], rel=1e-6)
    assert [value for _, value in logged["step/train_contrastive"]] == pytest.approx(
        [epoch["train_contrastive"] for epoch in run.epochs], rel=1e-6)
    assert [value for _, value in logged["step/lr"]] == pytest.approx([epoch["lr"] for epoch in run.epochs])
    assert [value for _, value in logged["step/epoch"]] == [1.0, 2.0]
    assert all(0.0 <= value <= 1.0 for _, value in logged["step/data_wait_fraction"])
    # epoch records keep their names, one point per epoch
    assert [value for _, value in logged["mAP@10"]] == pytest.approx([epoch["mAP@10"] for epoch in run.epochs])
    written = texts(tmp_path / "runs" / run.id / "tensorboard")
    assert run.id in written["run/text_summary"]
    assert str((tmp_path / "registry.sqlite").resolve()) in written["run/text_summary"]
    assert str((tmp_path / "runs" / run.id / "run.json").resolve()) in written["run/text_summary"]
    assert json.loads(written["config/text_summary"].strip("`\n")) == run.config


def test_step_records_come_every_log_every_optimizer_steps(tmp_path, tiny_training):
    summary = train(tmp_path, tiny_training, "--set", "log_every=3")  # tensorboard is the default logger
    logged = scalars(tmp_path / "runs" / summary["run"] / "tensorboard")
    assert [step for step, _ in logged["step/train_loss"]] == [3, 6, 9, 12, 15]
    assert [round(value, 3) for _, value in logged["step/epoch"]] == [0.375, 0.75, 1.125, 1.5, 1.875]


def test_log_none_writes_no_event_files(tmp_path, tiny_training):
    summary = train(tmp_path, tiny_training, "--log", "none")
    folder = tmp_path / "runs" / summary["run"]
    assert not (folder / "tensorboard").exists() and not (folder / "wandb").exists()
    assert len(Registry(tmp_path).run(summary["run"]).epochs) == 2  # the registry always gets the epochs


def wandb_records(run_folder: Path) -> tuple[list[dict], dict]:
    """The history records and the summary of the offline W&B run under ``run_folder/wandb``, read with wandb's
    own reader of its transaction log (``wandb leet inspect``)."""
    [log] = sorted((run_folder / "wandb").glob("offline-run-*/run-*.wandb"))
    wandb = [sys.executable, "-c", "import sys; from wandb.cli.cli import cli; sys.exit(cli())", "leet", "inspect"]
    records = subprocess.run([*wandb, "--json", str(log)], capture_output=True, text=True, check=True,
                             stdin=subprocess.DEVNULL, timeout=120).stdout
    summary = subprocess.run([*wandb, "--summary", "--json", str(log)], capture_output=True, text=True, check=True,
                             stdin=subprocess.DEVNULL, timeout=120).stdout
    history = [json.loads(line)["history"] for line in records.splitlines()
               if line.startswith("{") and json.loads(line).get("type") == "history"]
    return history, json.loads(summary)


def test_wandb_offline_run_has_the_config_registry_link_steps_and_epochs(tmp_path, tiny_training, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "dcase-t6-tests")
    for variable, folder in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / folder))  # nothing written outside tmp_path
    summary = train(tmp_path, tiny_training, "--log", "wandb", "--set", "log_every=4")
    run = Registry(tmp_path).run(summary["run"])
    history, state = wandb_records(tmp_path / "runs" / run.id)
    assert state["run_id"] == run.id and state["project"] == "dcase-t6-tests" and state["state"] == "finished"
    config = state["config"]
    assert config["registry"]["run"] == run.id
    assert config["registry"]["record"] == str((tmp_path / "runs" / run.id / "run.json").resolve())
    assert config["lr"] == run.config["lr"] and config["log"] == "wandb" and config["model"]["backbone"] == "tiny-cnn"
    rows = [{**record["item"], "_step": record["step"]["num"]} for record in history]
    assert [row["_step"] for row in rows if "step/train_loss" in row] == [4, 8, 12, 16]
    assert [row["epoch"] for row in rows if "epoch/mAP@10" in row] == [1, 2]
    assert [row["epoch/mAP@10"] for row in rows if "epoch/mAP@10" in row] == pytest.approx(
        [epoch["mAP@10"] for epoch in run.epochs])
    assert [row["epoch/train_loss"] for row in rows if "epoch/train_loss" in row] == pytest.approx(
        [epoch["train_loss"] for epoch in run.epochs])
    best = max(run.epochs, key=lambda epoch: epoch["mAP@10"])
    assert state["summary"]["best/epoch"] == best["epoch"] + 1
    assert state["summary"]["best/mAP@10"] == pytest.approx(best["mAP@10"])


def test_a_missing_logger_package_is_one_line_before_anything_is_registered(tmp_path, tiny_training, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python itself reports a module as not importable
    settings = [arg for key, value in tiny_training.items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(main, ["--workdir", str(tmp_path), "train", *settings, "--log", "wandb"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: config key 'log' = 'wandb' needs the wandb package, which is not installed; install it with "
        "`pip install wandb`, or train with --log none"]
    assert Registry(tmp_path).runs() == []


@pytest.mark.parametrize(("setting", "message"), [
    ("log=mlflow", "config key 'log' = 'mlflow' must be one of tensorboard, wandb, none"),
    ("log_every=0", "config key 'log_every' = 0 must be >= 1"),
])
def test_log_keys_are_checked_before_training(tmp_path, tiny_training, setting, message):
    settings = [arg for key, value in tiny_training.items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(main, ["--workdir", str(tmp_path), "train", *settings, "--set", setting])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "registry.sqlite").exists() or Registry(tmp_path).runs() == []
