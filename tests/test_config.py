"""Typed configuration: YAML and --set values become the TrainConfig field types and are range-checked
before anything is registered or loaded; bad values are one line naming the key, the value and the type."""

import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.runs.config import build_config, from_dict


def test_set_values_arrive_as_strings_and_become_the_field_types():
    config = build_config(None, {"lr": "1e-4", "epochs": "3", "grad_clip": "0.5", "max_steps": "null",
                                 "model.freeze_text": "true", "model.text_dropout": "none", "datasets": "a, b",
                                 "clusters.method": "kmeans", "clusters.count": "8", "name": 2025})
    assert config.lr == 1e-4 and isinstance(config.lr, float)
    assert config.epochs == 3 and isinstance(config.epochs, int)
    assert config.grad_clip == 0.5 and config.max_steps is None
    assert config.model.freeze_text is True and config.model.text_dropout is None
    assert config.datasets == ["a", "b"] and config.clusters.count == 8 and config.name == "2025"


def test_yaml_reads_1e_4_as_a_string_and_it_still_becomes_a_float(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("lr: 1e-4\nepochs: 2.0\nmodel: {embed_dim: 16}\n", encoding="utf-8")
    config = build_config(path, {})
    assert (config.lr, config.epochs, config.model.embed_dim) == (1e-4, 2, 16)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"epochs": "abc"}, "config key 'epochs' = 'abc' is not an integer"),
    ({"epochs": "2.5"}, "config key 'epochs' = '2.5' is not an integer"),
    ({"lr": "fast"}, "config key 'lr' = 'fast' is not a number"),
    ({"model.freeze_text": "maybe"}, "config key 'model.freeze_text' = 'maybe' is not true or false"),
    ({"datasets": 3}, "config key 'datasets' = 3 is not a list of names"),
    ({"lr": "0"}, "config key 'lr' = 0.0 must be > 0"),
    ({"lr": "nan"}, "config key 'lr' = nan must be > 0"),
    ({"epochs": "0"}, "config key 'epochs' = 0 must be between 1 and 10000"),
    ({"batch_size": "1"}, "config key 'batch_size' = 1 must be between 2 and 65536"),
    ({"audio_mix.p": "1.5"}, "config key 'audio_mix.p' = 1.5 must be a probability in \\[0, 1\\]"),
    ({"model.text_dropout": "1"}, "config key 'model.text_dropout' = 1.0 must be in \\[0, 1\\)"),
    ({"precision": "fp8"}, "config key 'precision' = 'fp8' must be one of fp16, bf16, fp32"),
    ({"monitor": "mAP@5"}, "config key 'monitor' = 'mAP@5' must be one of R@1, R@5, R@10, mAP@10, mAP@16"),
    ({"clusters.method": "dbscan"}, "config key 'clusters.method' = 'dbscan' must be one of None, kmeans, hdbscan"),
    ({"model.backbone": "w2v"}, "config key 'model.backbone' = 'w2v' must be one of beats, eat, passt, tiny-cnn"),
    ({"min_lr": "1e-3"}, "'min_lr' = 0.001 is above 'lr'"),
    ({"contrastive_weight": "0"}, "every loss term has weight 0"),
    ({"datasets": ""}, "config key 'datasets' is empty"),
    ({"dist_timeout_minutes": "0"}, "config key 'dist_timeout_minutes' = 0.0 must be in \\(0, 10080\\]"),
    ({"dist_timeout_minutes": "20000"}, "config key 'dist_timeout_minutes' = 20000.0 must be in \\(0, 10080\\]"),
    ({"deterministic": "sometimes"}, "config key 'deterministic' = 'sometimes' is not true or false"),
    ({"clusters.method": "kmeans", "clusters.weight": "0"},
     "config key 'clusters.weight' = 0 with clusters.method kmeans: the cluster heads would get no gradient"),
])
def test_bad_values_are_named_with_what_is_expected(overrides, message):
    with pytest.raises(UserError, match=message):
        build_config(None, overrides)


def test_timeout_and_deterministic_keys_are_typed_with_generous_defaults():
    assert (build_config(None, {}).dist_timeout_minutes, build_config(None, {}).deterministic) == (120.0, False)
    config = build_config(None, {"dist_timeout_minutes": "30", "deterministic": "true"})
    assert config.dist_timeout_minutes == 30.0 and isinstance(config.dist_timeout_minutes, float)
    assert config.deterministic is True


def test_distillation_alone_is_a_valid_config():
    config = build_config(None, {"contrastive_weight": "0", "distill_from": "teacher-abc123"})
    assert config.contrastive_weight == 0.0 and config.distill_from == ["teacher-abc123"]


def test_configs_stored_by_earlier_versions_still_load():
    assert from_dict({"mixed_precision": True}).precision == "fp16"
    assert from_dict({"mixed_precision": False}).precision == "fp32"


def test_set_epochs_abc_exits_2_with_one_line_before_a_run_is_registered(tmp_path):
    result = CliRunner().invoke(main, ["--workdir", str(tmp_path / "work"), "train", "--data-root", str(tmp_path),
                                       "--set", "epochs=abc"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "'epochs'" in lines[0] and "'abc'" in lines[0] and "an integer" in lines[0]
    assert not (tmp_path / "work" / "registry.sqlite").exists()


def test_numbers_in_exponent_form_become_whole_numbers_where_one_is_expected():
    config = build_config(None, {"epochs": "1e2", "seed": "4294967295", "model.embed_dim": "2e3"})
    assert (config.epochs, config.seed, config.model.embed_dim) == (100, 2**32 - 1, 2000)


def test_the_example_pipelines_repeat_their_recipes_with_yaml_aliases_and_still_load():
    from pathlib import Path

    from dcase_t6.pipeline.file import load_pipeline

    examples = Path(__file__).resolve().parent.parent / "examples"
    for name in ("aistat2025.yaml", "aistat2025-synthetic.yaml"):
        assert "*recipe" in (examples / name).read_text(encoding="utf-8")
        assert len(load_pipeline(examples / name, {}).stages) >= 8
