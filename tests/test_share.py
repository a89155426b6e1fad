"""Export and import: a self-contained model folder (safetensors, config, tokenizer, model card) that loads
strictly and embeds exactly as the run it came from, with `embed --model` and after `runs import`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dcase_t6.common.outputs import MARKER
from dcase_t6.embedding.checkpoints import SplitRequest, embed_run
from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from helpers.cli import cli, cli_error

FOLDER_FILES = {"README.md", "config.json", "model.safetensors", "text/config.json", "text/model.safetensors",
                "text/tokenizer.json", "text/tokenizer_config.json", "training.json"}
DEV_TEST, VALIDATION = "development-testing", "development-validation"


@pytest.fixture(scope="module")
def trained(tiny_training, tmp_path_factory) -> dict:
    """A tiny run (2 epochs) that embedded dev-test and validation, and its export."""
    root = tmp_path_factory.mktemp("share")
    workdir = root / "work"
    config = build_config(None, {**tiny_training, "epochs": 2, "name": "tiny"})
    run = training.train_new(workdir, config).run
    for split in (DEV_TEST, VALIDATION):
        embed_run(workdir, run, SplitRequest(tiny_training["data_root"], "synthetic", split, batch_size=4))
    exported = cli(workdir, "export", run, "--out", root / "exported", "--json")
    return {"root": root, "workdir": workdir, "run": run, "folder": root / "exported", "exported": exported,
            "data_root": tiny_training["data_root"]}


def npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def test_the_folder_holds_safetensors_config_tokenizer_card_and_no_pickle(trained):
    from safetensors import safe_open

    folder, exported = trained["folder"], trained["exported"]
    assert {item["path"] for item in exported["files"]} == FOLDER_FILES
    assert {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()} == {*FOLDER_FILES,
                                                                                                     MARKER}
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.read_bytes()[:2] not in (b"\x80\x02", b"\x80\x04", b"PK")  # no pickle, no torch zip
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "dcase-t6-model" and config["format_version"] == 1
    assert config["model"]["text_model"] == "text" and config["text_model_origin"] == "tiny-random"
    assert (config["sample_rate"], config["audio_seconds"], config["max_samples"]) == (16000, 2.0, 32000)
    from dcase_t6.runs.records import sha256_of

    assert config["sha256"] == {name: sha256_of(folder / name) for name in ("model.safetensors",
                                                                           "text/model.safetensors")}
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert not any(key.startswith("text.") for key in weights.keys())
        assert "audio_projection.weight" in weights.keys()
    registry = Registry(trained["workdir"])
    run = registry.run(trained["run"])
    best = registry.file(run.id, "checkpoint", "best")
    assert config["parameters"] == best.info["parameters"] and config["checkpoint_epoch"] == best.info["epoch"]
    recorded = json.loads((folder / "training.json").read_text())
    assert recorded["run"]["id"] == run.id and recorded["run"]["data_fingerprint"] == run.data_fingerprint
    assert recorded["epochs"] == run.epochs and recorded["config"]["lr"] == run.config["lr"]
    assert recorded["checkpoint"]["sha256"] == best.sha256


def test_the_model_card_has_architecture_data_recipe_metrics_and_loading(trained):
    card = (trained["folder"] / "README.md").read_text()
    run = Registry(trained["workdir"]).run(trained["run"])
    comparison = cli(trained["workdir"], "runs", "compare", run.id, "--json")["runs"][0]
    assert card.startswith("---\ntags:\n") and f"# {run.id}: tiny-cnn + tiny-random dual encoder" in card
    for section in ("## Architecture", "## Training data", "## Training recipe", "## Results", "## How to use"):
        assert section in card
    parameters = Registry(trained["workdir"]).file(run.id, "checkpoint", "best").info["parameters"]
    assert f"| parameters | {parameters:,} |" in card and "| embedding | 16-d," in card
    assert f"data fingerprint: `{run.data_fingerprint}`" in card
    assert f"best epoch {comparison['best_epoch']} by mAP@10" in card
    for epoch in run.epochs:
        assert f"{epoch['mAP@10']:.4f}" in card
    dev_test = comparison["dev_test"]["scores"]
    assert "| " + " | ".join(f"{dev_test[key]:.4f}" for key in ("R@1", "R@5", "R@10", "mAP@10", "mAP@16")) + " |" \
        in card
    assert "dcase-t6 embed --model" in card and "load_exported(" in card and "dcase-t6 runs import" in card


def test_export_embed_model_and_import_give_identical_vectors(trained, tmp_path):
    workdir, run, folder, data_root = trained["workdir"], trained["run"], trained["folder"], trained["data_root"]
    registered = npz(workdir / "runs" / run / "outputs" / f"synthetic.{DEV_TEST}.embeddings.npz")
    matrix = npz(workdir / "runs" / run / "outputs" / f"synthetic.{DEV_TEST}.similarity.npz")
    # embed --model DIR: no registry at all
    written = cli(tmp_path / "unused", "embed", "--model", folder, "--data-root", data_root, "--dataset", "synthetic",
                  "--split", DEV_TEST, "--out", tmp_path / "emb", "--csv", tmp_path / "emb.csv", "--batch-size", 4,
                  "--json")
    assert not (tmp_path / "unused").exists()
    exported = npz(written["embeddings"])
    for key in ("audio", "text"):
        assert np.array_equal(exported[key], registered[key])
    for key in ("files", "paths", "queries"):
        assert exported[key].tolist() == registered[key].tolist()
    assert np.array_equal(npz(written["similarity"])["scores"], matrix["scores"])
    assert (tmp_path / "emb.csv").is_file()
    # runs import DIR into another work directory, then embed the imported run
    other = tmp_path / "other-work"
    imported = cli(other, "runs", "import", folder, "--json")
    assert imported["run"] == run and imported["epochs"] == 2
    registry = Registry(other)
    record = registry.run(run)
    assert record.status == "imported" and record.epochs == Registry(workdir).run(run).epochs
    assert record.config == Registry(workdir).run(run).config
    embed_run(other, run, SplitRequest(data_root, "synthetic", DEV_TEST, batch_size=4))
    again = npz(other / "runs" / run / "outputs" / f"synthetic.{DEV_TEST}.embeddings.npz")
    assert np.array_equal(again["audio"], registered["audio"]) and np.array_equal(again["text"], registered["text"])
    # a second import of the same folder is a new run, and the original id stays with the first
    second = cli(other, "runs", "import", folder, "--json")["run"]
    assert second != run and second.startswith("tiny-")


def test_an_imported_run_is_a_teacher_and_an_ensemble_member(trained, tmp_path, tiny_training):
    other = tmp_path / "work"
    teacher = cli(other, "runs", "import", trained["folder"], "--json")["run"]
    config = build_config(None, {**tiny_training, "name": "student", "distill_from": teacher, "max_steps": 2})
    student = training.train_new(other, config)
    assert student.status == "stopped" and student.step == 2
    registry = Registry(other)
    assert registry.has_file(teacher, "embeddings", "synthetic/development-training")
    for split in (VALIDATION, DEV_TEST):
        embed_run(other, teacher, SplitRequest(tiny_training["data_root"], "synthetic", split, batch_size=4))
    captions = Path(tiny_training["data_root"]) / "synthetic" / "clotho_captions_validation.csv"
    weights = tmp_path / "weights.json"
    cli(other, "ensemble", "--search", "-s", f"a={teacher}:synthetic/{VALIDATION}",
        "-s", f"b={trained['workdir'] / 'runs' / teacher / 'outputs' / f'synthetic.{VALIDATION}.similarity.npz'}",
        "-c", captions, "--out", weights)
    assert set(json.loads(weights.read_text())["weights"]) == {"a", "b"}


def test_a_frozen_minilm_run_exports_its_tokenizer_and_embeds_identically(tmp_path, tiny_training):
    config = build_config(None, {**tiny_training, "name": "minilm", "model.text_model": "minilm",
                                 "model.freeze_text": True, "model.text_dropout": None})
    run = training.train_new(tmp_path / "work", config).run
    embed_run(tmp_path / "work", run, SplitRequest(tiny_training["data_root"], "synthetic", VALIDATION, batch_size=4))
    folder = tmp_path / "minilm-export"
    cli(tmp_path / "work", "export", run, "--out", folder)
    tokenizer = json.loads((folder / "text" / "tokenizer.json").read_text())
    assert len(tokenizer["model"]["vocab"]) == 30522  # MiniLM's WordPiece vocabulary, in the folder
    assert json.loads((folder / "config.json").read_text())["model"]["freeze_text"] is True
    written = cli(tmp_path, "embed", "--model", folder, "--data-root", tiny_training["data_root"], "--dataset",
                  "synthetic", "--split", VALIDATION, "--out", tmp_path / "emb", "--batch-size", 4, "--json")
    registered = npz(tmp_path / "work" / "runs" / run / "outputs" / f"synthetic.{VALIDATION}.embeddings.npz")
    assert np.array_equal(npz(written["embeddings"])["text"], registered["text"])
    assert np.array_equal(npz(written["embeddings"])["audio"], registered["audio"])


def test_weights_load_strictly_into_the_model_the_config_describes(trained):
    from dcase_t6.models import DualEncoder
    from dcase_t6.runs.folder import load_exported, model_config, read_folder_config, read_weights

    folder = trained["folder"]
    config, _ = read_folder_config(folder)
    state = read_weights(folder, config)
    fresh = DualEncoder(model_config(config, folder), audio_weights="random")
    assert set(state) == set(fresh.state_dict())
    loaded = load_exported(folder).model
    checkpoint = torch.load(Registry(trained["workdir"]).file(trained["run"], "checkpoint", "best").path,
                            weights_only=True)["model"]
    assert set(loaded.state_dict()) == set(checkpoint)
    assert all(torch.equal(loaded.state_dict()[key], checkpoint[key]) for key in checkpoint)
    assert not loaded.training


def damaged_copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def test_a_changed_weight_file_is_refused_by_its_hash(trained, tmp_path):
    copy = damaged_copy(trained["folder"], tmp_path)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    line = cli_error(tmp_path, "embed", "--model", copy, "--data-root", trained["data_root"], "--dataset", "synthetic",
                 "--out", tmp_path / "emb")
    assert f"{copy / 'model.safetensors'}: SHA-256 differs from the one {copy / 'config.json'} records" in line
    assert not (tmp_path / "emb").exists()


def test_weights_that_do_not_fit_the_config_are_refused_by_name(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    from dcase_t6.runs.records import sha256_of

    copy = damaged_copy(trained["folder"], tmp_path)
    state = load_file(copy / "model.safetensors")
    state["extra.weight"] = torch.zeros(2)
    save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((copy / "config.json").read_text())
    config["sha256"]["model.safetensors"] = sha256_of(copy / "model.safetensors")
    (copy / "config.json").write_text(json.dumps(config))
    line = cli_error(tmp_path, "runs", "import", copy)
    assert "its weights do not fit the model its config.json describes (parameter extra.weight: not in the model" \
        in line
    assert Registry(tmp_path).runs() == []


@pytest.mark.parametrize(("damage", "expected"), [
    ("text/model.safetensors", "text/model.safetensors: missing"),
    ("config.json", "config.json: file not found"),
])
def test_an_incomplete_folder_is_one_line(trained, tmp_path, damage, expected):
    copy = damaged_copy(trained["folder"], tmp_path)
    (copy / damage).unlink()
    line = cli_error(tmp_path, "runs", "import", copy)
    assert expected in line and "dcase-t6 export" in line


def test_not_a_folder_nor_a_repo_id(tmp_path, trained):
    line = cli_error(tmp_path, "embed", "--model", tmp_path / "nowhere", "--data-root", trained["data_root"],
                 "--out", tmp_path / "emb")
    assert "no such folder, and not a hub repo id" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["embed", "--data-root", "d"], "give either RUN"),
    (["embed", "RUN", "--model", "m", "--data-root", "d"], "give either RUN"),
    (["embed", "--model", "m", "--data-root", "d"], "give --out FOLDER"),
    (["embed", "--model", "m", "--data-root", "d", "--out", "o", "--checkpoint", "last"], "--checkpoint does not"),
])
def test_embed_options_are_checked(tmp_path, args, expected):
    assert expected in cli_error(tmp_path, *args)


def test_export_never_overwrites_without_force(trained, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    for force in ((), ("--force",)):  # a folder dcase-t6 did not write is never replaced, --force or not
        line = cli_error(trained["workdir"], "export", trained["run"], "--out", taken, *force)
        assert "is not a model folder written by dcase-t6" in line
    assert [path.name for path in taken.iterdir()] == ["notes.txt"]
    out = tmp_path / "out"
    cli(trained["workdir"], "export", trained["run"], "--out", out)
    line = cli_error(trained["workdir"], "export", trained["run"], "--out", out)
    assert "already exists; choose another --out, or replace it with --force" in line
    cli(trained["workdir"], "export", trained["run"], "--out", out, "--force", "--checkpoint", "last")
    assert {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()} == {*FOLDER_FILES, MARKER}
    assert json.loads((out / "config.json").read_text())["checkpoint"] == "last"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging folder left


def test_an_imported_run_still_loads_after_its_work_directory_moved(trained, tmp_path):
    first = tmp_path / "first"
    run = cli(first, "runs", "import", trained["folder"], "--json")["run"]
    moved = tmp_path / "moved"
    first.rename(moved)
    cli(moved, "runs", "rebuild", "--force")
    embed_run(moved, run, SplitRequest(trained["data_root"], "synthetic", DEV_TEST, batch_size=4))
    again = npz(moved / "runs" / run / "outputs" / f"synthetic.{DEV_TEST}.embeddings.npz")
    registered = npz(trained["workdir"] / "runs" / run / "outputs" / f"synthetic.{DEV_TEST}.embeddings.npz")
    assert np.array_equal(again["text"], registered["text"]) and np.array_equal(again["audio"], registered["audio"])


def test_an_imported_run_cannot_be_resumed_but_can_be_trained_from(trained, tmp_path):
    run = cli(tmp_path, "runs", "import", trained["folder"], "--json")["run"]
    line = cli_error(tmp_path, "train", "--resume", run)
    assert f"run {run} was imported" in line and f"train --init-from {run}" in line
