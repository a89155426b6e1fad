"""Pipelines: parsing and checking the YAML, run order, and the shipped example end to end (resumable)."""

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.pipeline.file import load_pipeline
from dcase_t6.pipeline.run import PipelineRequest, run_pipeline
from dcase_t6.runs.registry import Registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pipeline-synthetic.yaml"


def write(tmp_path: Path, pipeline: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    return path


def test_the_example_runs_each_stage_after_the_stages_it_references():
    pipeline = load_pipeline(EXAMPLE, {})
    assert pipeline.name == "synthetic-demo"
    assert [stage.key for stage in pipeline.stages] == ["a/pretrain", "b/pretrain", "a/finetune", "a/refinetune",
                                                        "b/finetune", "b/refinetune"]
    finetune = pipeline.stages[2]
    assert finetune.init_from == "a/pretrain" and finetune.distill_from == ("a/pretrain", "b/pretrain")
    assert finetune.config["name"] == "a-finetune" and finetune.config["seed"] == 1
    assert finetune.config["model"]["backbone"] == "tiny-cnn" and finetune.config["lr"] == 0.0005


def test_config_layers_merge_key_by_key_with_command_line_overrides_on_top(tmp_path):
    path = write(tmp_path, {"defaults": {"model": {"backbone": "tiny-cnn", "embed_dim": 8}, "epochs": 5},
                            "systems": [{"name": "s", "config": {"model": {"embed_dim": 16}},
                                         "stages": [{"name": "only", "config": {"epochs": 2}}]}]})
    stage = load_pipeline(path, {"model.text_model": "tiny-random", "lr": 0.1}).stages[0]
    assert stage.config["model"] == {"backbone": "tiny-cnn", "embed_dim": 16, "text_model": "tiny-random"}
    assert (stage.config["epochs"], stage.config["lr"]) == (2, 0.1)


@pytest.mark.parametrize("pipeline, message", [
    ({"systems": [{"name": "s", "stages": [{"name": "a", "colour": 1}]}]}, r"stages\[0\]: unknown key 'colour'"),
    ({"systems": [{"name": "s", "stages": [{"name": "a", "config": {"colour": 1}}]}]}, "unknown config key 'colour'"),
    ({"systems": [{"name": "s", "stages": [{"name": "a", "config": {"init_from": "x"}}]}]},
     "'init_from' belongs beside 'config'"),
    ({"systems": [{"name": "s", "stages": [{"name": "a", "init_from": "b"}, {"name": "b", "init_from": "a"}]}]},
     "stages s/a, s/b reference each other in a cycle"),
    ({"systems": [{"name": "s", "stages": [{"name": "a"}]}, {"name": "s", "stages": [{"name": "b"}]}]},
     "system 's' appears twice"),
    ({"systems": [{"name": "s t", "stages": [{"name": "a"}]}]}, r"systems\[0\].name: expected a name"),
    ({"systems": []}, "'systems' must be a non-empty list"),
])
def test_mistakes_are_reported_by_where_they_are(tmp_path, pipeline, message):
    with pytest.raises(UserError, match=message):
        load_pipeline(write(tmp_path, pipeline), {})


def test_a_reference_to_nothing_is_refused_before_anything_trains(tmp_path):
    path = write(tmp_path, {"systems": [{"name": "s", "stages": [{"name": "a", "distill_from": ["ghost"]}]}]})
    with pytest.raises(UserError, match="references 'ghost', neither a stage of this pipeline nor a registered run"):
        run_pipeline(tmp_path / "work", PipelineRequest(path))
    assert Registry(tmp_path / "work").runs() == []


@pytest.fixture(scope="module")
def example_run(tmp_path_factory, tiny_training):
    """The example pipeline on the tiny data with tiny models: stopped in its first stage, then run to the end."""
    workdir = tmp_path_factory.mktemp("work")
    overrides = {**tiny_training, "model.text_model": "tiny-random", "model.freeze_text": False}
    stopped = run_pipeline(workdir, PipelineRequest(EXAMPLE, overrides, max_steps=2))
    options = [f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]
    result = CliRunner().invoke(main, ["--workdir", str(workdir), "train", "--pipeline", str(EXAMPLE), *options,
                                       "--json"])
    assert result.exit_code == 0, result.output
    return workdir, overrides, stopped, json.loads(result.stdout)


def test_a_stopped_stage_ends_the_pipeline_and_continues_in_the_same_run(example_run):
    _, _, stopped, finished = example_run
    assert [(s.stage, s.status, s.training.step) for s in stopped] == [("a/pretrain", "stopped", 2)]
    assert finished[0]["stage"] == "a/pretrain" and finished[0]["run"] == stopped[0].run
    assert [s["status"] for s in finished] == ["finished"] * 6


def test_every_stage_is_a_registered_run_wired_to_its_references(example_run):
    workdir, _, _, finished = example_run
    registry = Registry(workdir)
    runs = {summary["stage"]: registry.run(summary["run"]) for summary in finished}
    assert {stage: run.name for stage, run in runs.items()}["b/refinetune"] == "b-refinetune"
    teachers = [runs["a/pretrain"].id, runs["b/pretrain"].id]
    assert runs["b/finetune"].config["init_from"] == runs["b/pretrain"].id
    assert runs["b/finetune"].config["distill_from"] == teachers
    assert runs["a/refinetune"].config["init_from"] == runs["a/finetune"].id
    assert runs["a/finetune"].config["caption_augmentation"]["synonym_p"] == 0.4
    assert {(f.kind, f.tag) for f in runs["a/refinetune"].files} >= {("clusters", "synthetic/development-training")}
    assert all(any(f.kind == "embeddings" for f in runs[stage].files) for stage in ("a/pretrain", "b/pretrain"))
    state = json.loads((workdir / "pipelines" / "synthetic-demo.json").read_text())
    assert {key: entry["run"] for key, entry in state["stages"].items()} == {s: r.id for s, r in runs.items()}


def test_running_again_skips_finished_stages_and_refuses_changed_ones(example_run):
    workdir, overrides, _, finished = example_run
    again = run_pipeline(workdir, PipelineRequest(EXAMPLE, overrides))
    assert [(s.run, s.status) for s in again] == [(s["run"], "skipped") for s in finished]
    with pytest.raises(UserError, match=r"stage a/pretrain changed since its run a-pretrain-\w+ started"):
        run_pipeline(workdir, PipelineRequest(EXAMPLE, {**overrides, "lr": 0.5}))


def test_a_stage_digest_covers_only_the_keys_that_differ_from_the_defaults():
    """A later version adding a config key (at a default that keeps the old behaviour) leaves finished stages
    matching their file: keys at their default are not part of the digest."""
    import dataclasses
    import hashlib
    import json

    from dcase_t6.pipeline.run import config_digest
    from dcase_t6.runs.config import TrainConfig

    def sha(values):
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()

    assert config_digest(TrainConfig()) == sha({})
    changed = TrainConfig(epochs=3)
    changed = dataclasses.replace(changed, model=dataclasses.replace(changed.model, embed_dim=64))
    assert config_digest(changed) == sha({"epochs": 3, "model.embed_dim": 64})
