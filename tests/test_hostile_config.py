"""Hostile configuration: out-of-range config values, YAML alias bombs and deep nesting, JSON nested 100k deep,
and tampered exported model folders. Each case is a real command on real files; each ends in one `error:` line
naming the file and the key (and the bound), exit 2, before any run is registered or any output is written."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dcase_t6.cli import main  # noqa: F401  (imported first: registers every command)
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_csv
from dcase_t6.runs.config import build_config, dotted_to_nested
from dcase_t6.runs.layout import DATABASE_NAME
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from helpers.cli import cli_error

DEEP = 100_000  # nesting levels of the hostile JSON and YAML documents
BOMB_SECONDS = 3.0  # an alias bomb is refused within this (it hung for more than 60 s)


def _bomb(key: str, indent: str = "") -> str:
    """``key``: a list whose 9 levels of aliases expand to 9**9 (387 million) strings, in 9 lines."""
    lines = [f"{indent}{key}:", f"{indent}  - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{indent}  - &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]" for level in range(1, 9)]
    return "\n".join(lines) + "\n"


def _nothing_registered(workdir: Path) -> None:
    assert not (workdir / DATABASE_NAME).exists() or Registry(workdir).runs() == []


def _train_refused(tmp_path: Path, tiny_training: dict, config_text: str, *extra) -> str:
    """``train --config FILE`` on the tiny data; it must be refused before anything is registered."""
    config = tmp_path / "train.yaml"
    config.write_text(config_text, encoding="utf-8")
    settings = [part for key, value in tiny_training.items() for part in ("--set", f"{key}={value}")]
    started = time.monotonic()
    line = cli_error(tmp_path / "work", "train", "--config", config, *settings, *extra)
    assert time.monotonic() - started < BOMB_SECONDS, line
    _nothing_registered(tmp_path / "work")
    return line


# --- config values and YAML ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("audio_seconds: 1e308\n", "config key 'audio_seconds' = 1e+308 must be between 1 and 600"),
    ("audio_seconds: 1e-6\n", "config key 'audio_seconds' = 1e-06 must be between 1 and 600"),
    ("audio_seconds: " + "9" * 400 + "\n", "config key 'audio_seconds' = inf must be between 1 and 600"),
    ("model: {embed_dim: 1e9}\n", "config key 'model.embed_dim' = 1000000000 must be between 1 and 8192"),
    (f"seed: {2**70}\n", f"config key 'seed' = {2**70} must be between 0 and 4294967295"),
    ("warmup_epochs: 1e308\n", "config key 'warmup_epochs' = 1e+308 must be between 0 and 10000"),
    ("dataset_weights: {synthetic: 1e300}\n", "config key 'dataset_weights' = {'synthetic': 1e+300} must be a "
                                              "mapping of dataset names to weights between 0 and 1000"),
    ("workers: 100000\n", "config key 'workers' = 100000 must be between 0 and 256"),
    ("model: {text_max_length: 100000}\n", "config key 'model.text_max_length' = 100000 must be between 1 and 512"),
])
def test_out_of_range_config_values_are_refused_with_the_bound_before_a_run_is_registered(
        tmp_path, tiny_training, text, expected):
    settings = {key: value for key, value in tiny_training.items() if f"{key.partition('.')[2] or key}:" not in text}
    line = _train_refused(tmp_path, settings, text)
    assert f"{tmp_path / 'train.yaml'}: {expected}" in line


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--batch-size", "100000", "config key 'batch_size' = 100000 must be between 2 and 65536"),
    ("--seed", "-1", "config key 'seed' = -1 must be between 0 and 4294967295"),
    ("--embed-dim", "1000000000", "config key 'model.embed_dim' = 1000000000 must be between 1 and 8192"),
])
def test_out_of_range_options_are_refused_with_the_bound(tmp_path, tiny_training, option, value, expected):
    line = cli_error(tmp_path / "work", "train", "--data-root", tiny_training["data_root"], "--set",
                     "datasets=synthetic", option, value)
    assert f"command line: {expected}" in line
    _nothing_registered(tmp_path / "work")


def test_mixed_type_unknown_keys_name_one_of_them(tmp_path, tiny_training):
    line = _train_refused(tmp_path, tiny_training, "1: one\na: two\ntrue: three\n")
    assert f"{tmp_path / 'train.yaml'}: unknown config key 'a'; known keys: " in line


def test_mixed_type_unknown_keys_of_a_section_name_one_of_them(tmp_path, tiny_training):
    line = _train_refused(tmp_path, tiny_training, "model:\n  1: one\n  b: two\n")
    assert "unknown config key 'model.b'" in line


def test_an_alias_bomb_inside_a_known_key_is_refused_in_milliseconds(tmp_path, tiny_training):
    line = _train_refused(tmp_path, tiny_training, _bomb("datasets"))
    assert f"{tmp_path / 'train.yaml'}: line 7: expands to more than 100,000 values with its aliases expanded" \
        in line


def test_an_alias_bomb_in_a_set_value_is_refused(tmp_path, tiny_training):
    levels = ["&a0 [x, x, x, x, x, x, x, x, x]"] + [f"&a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 9)]
    started = time.monotonic()
    line = cli_error(tmp_path / "work", "train", "--data-root", tiny_training["data_root"], "--set",
                     f"datasets=[{', '.join(levels)}]")
    assert time.monotonic() - started < BOMB_SECONDS
    assert "--set datasets: line 1: expands to more than 100,000 values" in line
    _nothing_registered(tmp_path / "work")


def test_an_alias_bomb_in_a_pipeline_file_is_refused(tmp_path, tiny_training):
    pipeline = tmp_path / "bomb.yaml"
    pipeline.write_text(_bomb("defaults", indent="") + "systems: []\n", encoding="utf-8")
    started = time.monotonic()
    line = cli_error(tmp_path / "work", "train", "--pipeline", pipeline)
    assert time.monotonic() - started < BOMB_SECONDS
    assert f"{pipeline}: line 7: expands to more than 100,000 values" in line
    _nothing_registered(tmp_path / "work")


def test_an_alias_inside_the_value_it_names_is_refused(tmp_path, tiny_training):
    line = _train_refused(tmp_path, tiny_training, "datasets: &loop [synthetic, *loop]\n")
    assert f"{tmp_path / 'train.yaml'}: line 1: an alias inside the value it names" in line


def test_yaml_nested_100k_deep_is_refused(tmp_path, tiny_training):
    line = _train_refused(tmp_path, tiny_training, "datasets: " + "[" * DEEP + "]" * DEEP + "\n")
    assert f"{tmp_path / 'train.yaml'}: line 1: nested more than 64 levels deep" in line


@pytest.mark.parametrize(("content", "expected"), [
    (b"lr: \xff\xfe\n", "not UTF-8 text"),
    (b"seed: " + b"7" * 5000 + b"\n", "not valid YAML (Exceeds the limit (4300 digits)"),
])
def test_undecodable_config_files_are_one_line(tmp_path, tiny_training, content, expected):
    config = tmp_path / "train.yaml"
    config.write_bytes(content)
    line = cli_error(tmp_path / "work", "train", "--config", config, "--data-root", tiny_training["data_root"])
    assert f"{config}: {expected}" in line
    _nothing_registered(tmp_path / "work")


def test_a_pipeline_with_mixed_type_unknown_keys_names_one(tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("1: one\nb: two\nsystems: []\n", encoding="utf-8")
    assert f"{pipeline}: unknown key 'b'; allowed: " in cli_error(tmp_path / "work", "train", "--pipeline", pipeline)


def test_a_pipeline_ensemble_batch_size_beyond_the_bound_is_refused(tmp_path, tiny_training):
    defaults = yaml.safe_dump({"defaults": dotted_to_nested(tiny_training)})
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"{defaults}systems:\n  - name: a\n    stages: [{{name: s1}}, {{name: s2}}]\n"
                        "ensembles:\n  - {name: e, stages: [a/s1, a/s2], batch_size: 1000000}\n", encoding="utf-8")
    line = cli_error(tmp_path / "work", "train", "--pipeline", pipeline)
    assert f"{pipeline}: ensembles[0].batch_size 1000000: the batch size must be a whole number between 1 and " \
           "65536" in line
    _nothing_registered(tmp_path / "work")


# --- exported models and embed ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tiny_training, tmp_path_factory) -> dict:
    """A tiny run (1 epoch, no validation) and its `dcase-t6 export` folder."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("hostile-config")
    workdir = root / "work"
    run = training.train_new(workdir, build_config(None, {**tiny_training, "name": "tiny",
                                                          "validation_split": "null"})).run
    result = CliRunner().invoke(main, ["--workdir", str(workdir), "export", run, "--out", str(root / "exported")])
    assert result.exit_code == 0, result.output
    return {"workdir": workdir, "run": run, "folder": root / "exported", "data_root": tiny_training["data_root"]}


@pytest.mark.parametrize("size", ["0", "-3", "100000"])
def test_embed_batch_size_out_of_range_is_refused_before_anything_runs(exported, tmp_path, size):
    line = cli_error(exported["workdir"], "embed", exported["run"], "--data-root", exported["data_root"],
                     "--dataset", "synthetic", "--batch-size", size)
    assert f"--batch-size {size}: the batch size must be a whole number between 1 and 65536" in line
    assert [item.kind for item in Registry(exported["workdir"]).run(exported["run"]).files] == ["checkpoint"] * 2
    line = cli_error(tmp_path / "work", "embed", "--model", exported["folder"], "--data-root", exported["data_root"],
                     "--dataset", "synthetic", "--out", tmp_path / "emb", "--batch-size", size)
    assert "between 1 and 65536" in line and not (tmp_path / "emb").exists()


def _tampered(exported: dict, tmp_path: Path, edit, name: str = "config.json") -> Path:
    """A copy of the exported folder with ``edit`` applied to the JSON document ``name`` (relative)."""
    copy = tmp_path / "tampered"
    shutil.copytree(exported["folder"], copy)
    document = json.loads((copy / name).read_text(encoding="utf-8"))
    edit(document)
    (copy / name).write_text(json.dumps(document), encoding="utf-8")
    return copy


def _refused_both_ways(exported: dict, tmp_path: Path, folder: Path) -> str:
    """`runs import FOLDER` and `embed --model FOLDER` give the same line; nothing registered or written."""
    line = cli_error(tmp_path / "work", "runs", "import", folder)
    _nothing_registered(tmp_path / "work")
    assert cli_error(tmp_path / "work", "embed", "--model", folder, "--data-root", exported["data_root"],
                     "--dataset", "synthetic", "--out", tmp_path / "emb") == line
    assert not (tmp_path / "emb").exists()
    return line


def _set(*path_and_value):
    *path, key, value = path_and_value

    def edit(document):
        for part in path:
            document = document[part]
        document[key] = value
    return edit


@pytest.mark.parametrize(("edit", "expected"), [
    (_set("model", "embed_dim", "sixteen"), "config key 'model.embed_dim' = 'sixteen' is not an integer"),
    (_set("model", "embed_dim", 10**9), "config key 'model.embed_dim' = 1000000000 must be between 1 and 8192"),
    (_set("model", "cluster_classes", 10**12), "config key 'model.cluster_classes' = 1000000000000 must be between "
                                               "0 and 100000"),
    (_set("audio_seconds", "ten"), "config key 'audio_seconds' = 'ten' is not a number"),
    (_set("audio_seconds", 1e308), "config key 'audio_seconds' = 1e+308 must be between 1 and 600"),
    (lambda document: document.pop("sha256"), "key 'sha256' must map model.safetensors to its SHA-256 (64 hex "
                                              "digits), missing"),
    (_set("sha256", 5), "key 'sha256' must map model.safetensors to its SHA-256 (64 hex digits), got 5"),
    (_set("sha256", "text/model.safetensors", 7), "key 'sha256' must map text/model.safetensors to its SHA-256 (64 "
                                                  "hex digits), got 7"),
])
def test_a_tampered_config_json_is_one_line_naming_the_file_and_key(exported, tmp_path, edit, expected):
    folder = _tampered(exported, tmp_path, edit)
    assert f"{folder / 'config.json'}: {expected}" in _refused_both_ways(exported, tmp_path, folder)


def test_a_config_json_that_is_a_folder_is_one_line(exported, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(exported["folder"], folder)
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    assert f"{folder / 'config.json'}: a folder, not a file" in _refused_both_ways(exported, tmp_path, folder)


def test_a_config_json_nested_100k_deep_is_one_line(exported, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(exported["folder"], folder)
    (folder / "config.json").write_text("[" * DEEP + "]" * DEEP, encoding="utf-8")
    line = _refused_both_ways(exported, tmp_path, folder)
    assert f"{folder / 'config.json'}: JSON nested too deeply to read" in line


def test_a_text_config_of_another_architecture_is_refused_by_its_model_type(exported, tmp_path):
    folder = _tampered(exported, tmp_path, _set("model_type", "bert"), "text/config.json")
    line = _refused_both_ways(exported, tmp_path, folder)
    assert f"{folder / 'text' / 'config.json'}: key 'model_type' is 'bert', but {folder / 'config.json'} records " \
           "'roberta'" in line


def test_a_gpt2_text_config_is_refused_by_its_model_type(exported, tmp_path):
    from transformers import GPT2Config

    folder = tmp_path / "tampered"
    shutil.copytree(exported["folder"], folder)
    (folder / "text" / "config.json").write_text(GPT2Config(n_layer=1, n_embd=32, n_head=2).to_json_string())
    assert "key 'model_type' is 'gpt2'" in _refused_both_ways(exported, tmp_path, folder)


def test_an_older_export_with_a_text_config_transformers_cannot_build_is_one_line(exported, tmp_path):
    folder = _tampered(exported, tmp_path, lambda document: document.pop("text_model_type"))
    text = json.loads((folder / "text" / "config.json").read_text())
    (folder / "text" / "config.json").write_text(json.dumps({**text, "model_type": "t5"}))
    line = _refused_both_ways(exported, tmp_path, folder)
    assert f"{folder / 'text' / 'config.json'}: cannot build the text transformer it describes" in line


def test_a_seed_beyond_64_bits_in_training_json_is_refused_before_registering(exported, tmp_path):
    folder = _tampered(exported, tmp_path, _set("run", "seed", 2**70), "training.json")
    line = cli_error(tmp_path / "work", "runs", "import", folder)
    assert f"{folder / 'training.json'}: key 'run.seed' = {2**70} must be a whole number between 0 and 4294967295" \
        in line
    _nothing_registered(tmp_path / "work")


# --- JSON nested 100k deep ----------------------------------------------------------------------------------------
def test_a_weights_file_nested_100k_deep_is_one_line(tmp_path):
    queries, files = ["a dog barks", "rain falls"], ["a.wav", "b.wav"]
    systems = []
    for name in ("x", "y"):
        write_csv(SimilarityMatrix(queries, files, np.eye(2)), tmp_path / f"{name}.csv")
        systems += ["-s", f"{name}={tmp_path / f'{name}.csv'}"]
    weights = tmp_path / "w.json"
    weights.write_text('{"weights": ' + "[" * DEEP + "]" * DEEP + "}", encoding="utf-8")
    line = cli_error(tmp_path, "ensemble", "--apply", "-w", weights, *systems, "--out", tmp_path / "ens.csv")
    assert f"{weights}: JSON nested too deeply to read" in line and not (tmp_path / "ens.csv").exists()


def test_a_results_file_nested_100k_deep_is_one_line(tmp_path):
    results = tmp_path / "eval.json"
    results.write_text("{" + '"a": {' * DEEP + "}" * DEEP + "}", encoding="utf-8")
    line = cli_error(tmp_path, "package", "--init-meta", "--label", "Primus_CP-JKU_task6_1", "--results", results,
                     "--out", tmp_path / "meta.yaml")
    assert f"{results}: JSON nested too deeply to read" in line and not (tmp_path / "meta.yaml").exists()
