"""The AISTAT 2025 recipe as a pipeline: the real file parses and checks, the synthetic file has its structure and
runs end to end with both ensembles, and the ``ensembles`` section is searched once, skipped, refused when changed."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dcase_t6.common.errors import UserError
from dcase_t6.ensemble.groups import resolve_groups
from dcase_t6.ensemble.search import apply
from dcase_t6.ensemble.systems import System
from dcase_t6.ensemble.weights import read_weights
from dcase_t6.pipeline.file import load_pipeline
from dcase_t6.pipeline.run import PipelineRequest, run_pipeline
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import read_relevance_file
from dcase_t6.retrieval.matrices import read_matrix
from dcase_t6.runs.config import from_dict
from dcase_t6.runs.registry import Registry

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REAL, SYNTHETIC = EXAMPLES / "aistat2025.yaml", EXAMPLES / "aistat2025-synthetic.yaml"
MODELS, SIDS = ("passt", "eat", "beats"), ("sid1", "sid2", "sid3", "sid4", "sid5")
SYSTEMS_2_TO_5 = tuple(f"{model}/{sid}" for model in MODELS for sid in SIDS[1:])
TEACHERS = ("passt/sid1", "eat/sid1", "beats/sid1")


def structure(path: Path) -> tuple:
    """What the real and the synthetic file must share: stages with their references, and the ensembles."""
    pipeline = load_pipeline(path, {})
    stages = sorted((stage.key, stage.init_from, stage.distill_from) for stage in pipeline.stages)
    ensembles = [(ensemble.name, ensemble.stages, ensemble.options.strategy_name, dict(ensemble.options.groups),
                  ensemble.options.step, ensemble.options.normalize, ensemble.test_split)
                 for ensemble in pipeline.ensembles]
    return [stage.key for stage in pipeline.stages], stages, ensembles


def test_the_real_recipe_has_table_1_for_each_model_with_the_reports_settings():
    pipeline = load_pipeline(REAL, {})
    configs = {stage.key: from_dict(stage.config, source=stage.key) for stage in pipeline.stages}
    stages = {stage.key: stage for stage in pipeline.stages}
    assert sorted(configs) == sorted(f"{model}/{sid}" for model in MODELS for sid in SIDS)
    # Section 3.4: batch 64 / 24 / 16 and peak lr 2e-5 / 1e-5 / 1e-5 down to 1e-7, in every stage; 20 epochs each.
    expected = {"passt": (64, 2e-5), "eat": (24, 1e-5), "beats": (16, 1e-5)}
    for key, config in configs.items():
        model = key.split("/")[0]
        assert (config.model.backbone, config.batch_size, config.lr) == (model, *expected[model]), key
        assert (config.min_lr, config.epochs, config.model.text_model) == (1e-7, 20, "roberta-large"), key
    for model in MODELS:
        sid = {name: configs[f"{model}/{name}"] for name in SIDS}
        assert sid["sid1"].datasets == ["clotho", "audiocaps", "wavcaps"]
        assert all(sid[name].datasets == ["clotho"] for name in SIDS[1:])
        # Table 1: distillation from SID 2 on, augmentation from SID 3 on, cluster loss in SID 4 (finetuned model)
        # and SID 5 (e5-large-v2), BERTopic, weight 0.05.
        assert stages[f"{model}/sid1"].references == ()
        assert all(stages[f"{model}/{name}"].distill_from == TEACHERS for name in SIDS[1:])
        assert [stages[f"{model}/{name}"].init_from for name in SIDS[1:]] == [f"{model}/sid1", f"{model}/sid1",
                                                                             f"{model}/sid3", f"{model}/sid3"]
        assert (sid["sid2"].caption_augmentation.deletion_p, sid["sid2"].audio_mix.p) == (0.0, 0.0)
        assert all(sid[name].caption_augmentation.deletion_p == sid[name].caption_augmentation.synonym_p == 0.8
                   and sid[name].caption_augmentation.extra_captions_file and sid[name].audio_mix.merged_captions_file
                   for name in SIDS[2:])
        assert [sid[name].clusters.method for name in SIDS] == [None, None, None, "bertopic", "bertopic"]
        assert (sid["sid4"].clusters.source, sid["sid5"].clusters.source) == ("init", "e5")
        assert sid["sid4"].clusters.weight == sid["sid5"].clusters.weight == 0.05
        assert all(config.distill_weight == 1.0 and config.distill_temperature == 0.05 for config in sid.values())
    # Stage 1 of all three models trains before any finetuning: the teachers exist when distillation starts.
    assert [stage.key for stage in pipeline.stages][:3] == ["passt/sid1", "eat/sid1", "beats/sid1"]


def test_the_real_recipes_ensembles_are_the_reports_two_strategies_over_12_systems():
    ensembles = {ensemble.name: ensemble for ensemble in load_pipeline(REAL, {}).ensembles}
    assert sorted(ensembles) == ["model-first", "system-first"]
    for ensemble in ensembles.values():
        assert ensemble.stages == SYSTEMS_2_TO_5 and ensemble.options.step == 0.05
        assert (ensemble.dataset, ensemble.validation_split, ensemble.test_split) == (
            "clotho", "development-validation", "development-testing")
    by_model = resolve_groups(SYSTEMS_2_TO_5, {}, ensembles["system-first"].options.strategy)
    assert {group.name: [SYSTEMS_2_TO_5[i] for i in group.members] for group in by_model} == {
        model: [f"{model}/{sid}" for sid in SIDS[1:]] for model in MODELS}
    by_system = resolve_groups(SYSTEMS_2_TO_5, {}, ensembles["model-first"].options.strategy)
    assert {group.name: [SYSTEMS_2_TO_5[i] for i in group.members] for group in by_system} == {
        sid: [f"{model}/{sid}" for model in MODELS] for sid in SIDS[1:]}


def test_the_synthetic_file_has_the_structure_of_the_real_one():
    assert structure(SYNTHETIC) == structure(REAL)
    configs = [from_dict(stage.config) for stage in load_pipeline(SYNTHETIC, {}).stages]
    assert {(config.model.backbone, config.epochs, config.batch_size) for config in configs} == {("tiny-cnn", 1, 8)}
    assert len({config.seed for config in configs}) == 3  # the three stand-in models differ


def write(tmp_path: Path, pipeline: dict) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    return path


def two_systems(ensembles) -> dict:
    return {"defaults": {"model": {"backbone": "tiny-cnn", "text_model": "tiny-random"}},
            "systems": [{"name": "a", "stages": [{"name": "x"}, {"name": "y", "init_from": "x"}]},
                        {"name": "b", "stages": [{"name": "x"}]}],
            "ensembles": ensembles}


@pytest.mark.parametrize("ensembles, message", [
    ({"name": "e"}, r"'ensembles' must be a list of ensembles"),
    ([{"name": "e", "stages": ["a/x", "b/x"], "weights": 1}], r"ensembles\[0\]: unknown key 'weights'; allowed: "),
    ([{"name": "e", "stages": ["a/x", "b/z"]}], r"ensembles\[0\].stages: 'b/z' is not a stage of this pipeline; "
                                                r"name one of a/x, a/y, b/x"),
    ([{"name": "e", "stages": ["a/x"]}], r"ensembles\[0\].stages: expected a list of at least 2 stages"),
    ([{"name": "e", "stages": "a/x, b/x"}], r"ensembles\[0\].stages: expected a list of at least 2 stages"),
    ([{"name": "e", "stages": ["a/x", "a/x"]}], r"ensembles\[0\].stages: stage 'a/x' appears twice"),
    ([{"name": "e e", "stages": ["a/x", "b/x"]}], r"ensembles\[0\].name: expected a name"),
    ([{"name": "e", "stages": ["a/x", "b/x"]}, {"name": "e", "stages": ["a/y", "b/x"]}], "ensemble 'e' appears twice"),
    ([{"name": "e", "stages": ["a/x", "b/x"], "strategy": "best"}],
     r"ensembles\[0\].strategy: 'best' must be one of flat, system-first, model-first"),
    ([{"name": "e", "stages": ["a/x", "b/x"], "strategy": "flat", "groups": {"g": ["a/x"]}}],
     r"ensembles\[0\]: give 'strategy' or 'groups', not both"),
    ([{"name": "e", "stages": ["a/x", "b/x"], "groups": {"g": ["a/y"]}}],
     r"ensembles\[0\].groups.g: 'a/y' is not one of the ensemble's stages \(a/x, b/x\)"),
    ([{"name": "e", "stages": ["a/x", "a/y", "b/x"], "groups": {"g": ["a/x"], "h": ["a/x", "b/x"]}}],
     r"ensembles\[0\].groups: 'a/x' is in groups 'g' and 'h'"),
    ([{"name": "e", "stages": ["a/x", "b/x"], "step": 0.3}], r"ensembles\[0\].step: 0.3 must divide 1"),
    ([{"name": "e", "stages": ["a/x", "b/x"], "step": "fine"}], r"ensembles\[0\].step: expected a number"),
    ([{"name": "e", "stages": ["a/x", "b/x"], "normalize": "minmax"}],
     r"ensembles\[0\].normalize: 'minmax' must be one of none, zscore"),
    ([{"name": "e", "stages": ["a/x", "b/x"], "checkpoint": "first"}],
     r"ensembles\[0\].checkpoint: 'first' must be one of best, last"),
    ([{"name": "e", "stages": ["a/x", "b/x"], "top": 0}], r"ensembles\[0\].top: expected a whole number >= 1"),
    ([{"name": "e", "stages": ["a/x", "b/x"], "test_split": ""}], r"ensembles\[0\].test_split: expected a name"),
    ([{"name": "e", "stages": ["a/x", "a/y", "b/x"], "step": 0.0001}],
     r"ensembles\[0\]: the search would visit 50015001 weight points"),
])
def test_ensemble_mistakes_are_one_line_naming_where_they_are(tmp_path, ensembles, message):
    with pytest.raises(UserError, match=message) as raised:
        load_pipeline(write(tmp_path, two_systems(ensembles)), {})
    assert "\n" not in str(raised.value) and str(tmp_path / "pipeline.yaml") in str(raised.value)


def test_an_ensemble_defaults_to_the_validation_split_of_its_first_stage(tmp_path):
    pipeline = two_systems([{"name": "e", "stages": ["b/x", "a/y"]}])
    pipeline["systems"][1]["config"] = {"datasets": ["synthetic"], "validation_split": "development-testing"}
    ensemble = load_pipeline(write(tmp_path, pipeline), {"data_root": "somewhere"}).ensembles[0]
    assert (ensemble.data_root, ensemble.dataset, ensemble.validation_split, ensemble.test_split) == (
        "somewhere", "synthetic", "development-testing", None)
    assert (ensemble.options.strategy_name, ensemble.options.step, ensemble.checkpoint) == ("flat", 0.05, "best")


@pytest.fixture(scope="module")
def small_ensemble(tmp_path_factory, tiny_training):
    """Two one-stage systems and a flat ensemble with a test split, run once."""
    folder = tmp_path_factory.mktemp("small")
    pipeline = {"name": "small", "defaults": {"seed": 0},
                "systems": [{"name": "a", "stages": [{"name": "x"}]},
                            {"name": "b", "config": {"seed": 1}, "stages": [{"name": "x"}]}],
                "ensembles": [{"name": "ab", "stages": ["a/x", "b/x"], "step": 0.1,
                               "test_split": "development-testing"}]}
    path = write(folder, pipeline)
    workdir = folder / "work"
    return workdir, path, tiny_training, run_pipeline(workdir, PipelineRequest(path, tiny_training))


def test_an_ensemble_is_searched_on_validation_and_scored_on_the_test_split(small_ensemble, tiny_data_root):
    workdir, _, _, summaries = small_ensemble
    assert [(s.stage, s.status) for s in summaries] == [("a/x", "finished"), ("b/x", "finished"),
                                                               ("ensembles/ab", "finished")]
    state = json.loads((workdir / "pipelines" / "small.json").read_text())
    entry = state["ensembles"]["ab"]
    weights = read_weights(entry["weights"])
    assert summaries[-1].run == entry["weights"] == str(workdir / "pipelines" / "small" / "ab.weights.json")
    assert sum(weights.weights.values()) == pytest.approx(1.0) and set(weights.weights) == {"a/x", "b/x"}
    assert all(round(w * 10, 9).is_integer() for w in weights.weights.values())  # step 0.1
    # The recorded scores are what the weights file and the stages' registered matrices give.
    registry = Registry(workdir)
    runs = {key: state["stages"][key]["run"] for key in ("a/x", "b/x")}
    assert {key: member["run"] for key, member in entry["members"].items()} == runs
    test = [System(key, read_matrix(registry.file(run, "similarity", "synthetic/development-testing").path))
            for key, run in runs.items()]
    truth = read_relevance_file(tiny_data_root / "relevance" / "synthetic" / "development-testing.csv")
    combined = apply(weights, test)
    assert evaluate(combined, truth).scores == entry["test"]
    assert np.array_equal(read_matrix(entry["test_matrix"]).scores, combined.scores)
    assert summaries[-1].test == round(entry["test"]["mAP@16"], 4)
    assert entry["validation"]["mAP@16"] == weights.validation.scores["mAP@16"]
    assert weights.validation.n_queries == 20  # 4 validation clips x 5 captions, each its clip's query
    for key, system in zip(runs, test):
        assert entry["members"][key]["test"] == evaluate(system.matrix, truth).scores


def test_a_searched_ensemble_is_skipped_refused_when_changed_and_searched_anew_without_its_weights(small_ensemble):
    workdir, path, overrides, summaries = small_ensemble
    again = run_pipeline(workdir, PipelineRequest(path, overrides))
    assert [s.status for s in again] == ["skipped"] * 3
    assert again[-1] == dataclasses.replace(summaries[-1], status="skipped")
    changed = yaml.safe_load(path.read_text())
    changed["ensembles"][0]["normalize"] = "zscore"
    path.write_text(yaml.safe_dump(changed), encoding="utf-8")
    weights_file = Path(summaries[-1].run)
    with pytest.raises(UserError, match=f"ensemble ab \\(or the runs of its stages\\) changed since its weights were "
                                        f"searched; delete {weights_file} to search it anew"):
        run_pipeline(workdir, PipelineRequest(path, overrides))
    registry = Registry(workdir)
    matrices = [registry.file(s.run, "similarity", split).path for s in summaries[:2]
                for split in ("synthetic/development-validation", "synthetic/development-testing")]
    written = [(matrix.stat().st_ino, matrix.stat().st_mtime_ns) for matrix in matrices]
    weights_file.unlink()
    anew = run_pipeline(workdir, PipelineRequest(path, overrides))[-1]
    assert anew.status == "finished" and read_weights(weights_file).normalize == "zscore"
    # The stages' matrices were reused, not embedded and written again.
    assert [(matrix.stat().st_ino, matrix.stat().st_mtime_ns) for matrix in matrices] == written


@pytest.mark.slow
def test_the_synthetic_recipe_runs_every_system_and_both_ensembles_then_skips_everything(tmp_path, tiny_data_root):
    # The tiny random RoBERTa instead of MiniLM as text model (not frozen) and shorter clips: the same structure,
    # about half the time.
    overrides = {"data_root": str(tiny_data_root), "model.text_model": "tiny-random", "model.freeze_text": False,
                 "model.embed_dim": 16, "audio_seconds": 2.0}
    workdir = tmp_path / "work"
    summaries = run_pipeline(workdir, PipelineRequest(SYNTHETIC, overrides))
    stages = [stage.key for stage in load_pipeline(SYNTHETIC, {}).stages]
    assert [(s.stage, s.status) for s in summaries] == [(key, "finished") for key in stages] + [
        ("ensembles/system-first", "finished"), ("ensembles/model-first", "finished")]
    state = json.loads((workdir / "pipelines" / "aistat2025-synthetic.json").read_text())
    registry = Registry(workdir)
    sid4 = registry.run(state["stages"]["eat/sid4"]["run"])
    assert sid4.config["init_from"] == state["stages"]["eat/sid3"]["run"]
    assert sid4.config["distill_from"] == [state["stages"][key]["run"] for key in TEACHERS]
    assert any(record.kind == "clusters" for record in sid4.files)
    expected_groups = {"system-first": {model: {f"{model}/{sid}" for sid in SIDS[1:]} for model in MODELS},
                       "model-first": {sid: {f"{model}/{sid}" for model in MODELS} for sid in SIDS[1:]}}
    for name, groups in expected_groups.items():
        entry = state["ensembles"][name]
        weights = read_weights(entry["weights"])
        assert weights.strategy == name and set(weights.weights) == set(SYSTEMS_2_TO_5)
        assert {group.name: set(group.members) for group in weights.groups} == groups
        for group in weights.groups:  # two-stage: each flat weight is its inner weight times its group's weight
            for member, inner in group.members.items():
                assert weights.weights[member] == pytest.approx(inner * group.weight)
        assert set(entry["members"]) == set(SYSTEMS_2_TO_5) and 0 < entry["test"]["mAP@16"] <= 1
        assert Path(entry["test_matrix"]).is_file()
    again = run_pipeline(workdir, PipelineRequest(SYNTHETIC, overrides))
    assert [s.status for s in again] == ["skipped"] * (len(stages) + 2)
