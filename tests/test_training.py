"""Training, resuming, embedding and evaluating by run reference on a tiny synthetic dataset."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.data.layout import Layout
from dcase_t6.embedding.checkpoints import SplitRequest, embed_run
from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from dcase_t6.training.builder import autocast_dtype

SMALL = {"datasets": "synthetic", "model.backbone": "tiny-cnn", "model.text_model": "tiny-random",
         "model.embed_dim": 16, "batch_size": 8, "epochs": 2, "lr": 1e-3, "audio_seconds": 3.0,
         "warmup_epochs": 0.5, "decay_epochs": 2.0}


@pytest.fixture(scope="module")
def data_root(tiny_data_root) -> Path:
    return tiny_data_root


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    summary = training.train_new(workdir, build_config(None, {**SMALL, "data_root": str(data_root), "name": "full"}))
    return workdir, summary


def test_a_run_is_registered_with_epochs_and_hashed_checkpoints(finished_run):
    workdir, summary = finished_run
    assert summary.status == "finished" and summary.epoch == 2
    run = Registry(workdir).run(summary.run)
    assert run.status == "finished" and run.seed == 0 and len(run.data_fingerprint) == 64
    assert [epoch["epoch"] for epoch in run.epochs] == [0, 1]
    assert all(0.0 <= epoch["mAP@10"] <= 1.0 and epoch["train_loss"] > 0 for epoch in run.epochs)
    assert {(f.kind, f.tag) for f in run.files} == {("checkpoint", "best"), ("checkpoint", "last")}
    log = (workdir / "runs" / summary.run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [0, 1]


def test_resume_after_a_stop_continues_bit_for_bit(finished_run, data_root, tmp_path):
    workdir, summary = finished_run
    config = build_config(None, {**SMALL, "data_root": str(data_root), "name": "stopped", "max_steps": 3})
    stopped = training.train_new(tmp_path, config)
    assert stopped.status == "stopped" and stopped.step == 3
    resumed = training.resume(tmp_path, stopped.run)
    assert resumed.status == "finished" and resumed.step == summary.step
    expected = torch.load(Registry(workdir).file(summary.run, "checkpoint", "last").path, weights_only=True)
    actual = torch.load(Registry(tmp_path).file(stopped.run, "checkpoint", "last").path, weights_only=True)
    assert expected["model"].keys() == actual["model"].keys()
    assert all(torch.equal(expected["model"][key], actual["model"][key]) for key in expected["model"])
    assert expected["position"] == actual["position"]


def test_embed_registers_outputs_usable_as_run_references(finished_run, data_root):
    workdir, summary = finished_run
    written = embed_run(workdir, summary.run,
                        SplitRequest(data_root, "synthetic", "development-testing", batch_size=4))
    assert (written.queries, written.files) == (20, 4)
    relevance = Layout.at(data_root).relevance_file("synthetic")
    reference = f"{summary.run}:synthetic/development-testing"
    result = CliRunner().invoke(main, ["--workdir", str(workdir), "evaluate", "-p", reference, "-r", str(relevance),
                                       "--json", "--direction", "t2a"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)) == {"R@1", "R@5", "R@10", "mAP@10", "mAP@16", "n_queries"}
    missing = CliRunner().invoke(main, ["--workdir", str(workdir), "evaluate", "-p", f"{summary.run}:x/y",
                                        "-r", str(relevance)])
    assert missing.exit_code == 2 and "has no similarity 'x/y'" in missing.output


def test_unknown_config_key_is_named():
    from dcase_t6.common.errors import UserError

    with pytest.raises(UserError, match="unknown config key 'model.colour'"):
        build_config(None, {"model.colour": "red"})


def test_epoch_metrics_also_go_to_tensorboard(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir, summary = finished_run
    events = EventAccumulator(str(workdir / "runs" / summary.run / "tensorboard"))
    events.Reload()
    assert {"train_loss", "mAP@10", "R@1"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("train_loss")] == [0, 1]


def test_a_checkpoint_that_does_not_fit_its_config_is_a_clear_error(finished_run, tmp_path):
    from dcase_t6.common.errors import UserError
    from dcase_t6.runs.model import load_model

    workdir, summary = finished_run
    registry = Registry(workdir)
    state = torch.load(registry.file(summary.run, "checkpoint", "best").path, weights_only=True)
    state["config"]["model"]["embed_dim"] = 24  # the saved weights project to 16 dimensions
    edited = tmp_path / "edited.pt"
    torch.save(state, edited)
    registry.add_file(summary.run, "checkpoint", "edited", edited)
    with pytest.raises(UserError, match="do not fit the model its config describes .*size mismatch"):
        load_model(registry, summary.run, "edited")


def test_gradient_accumulation_takes_one_optimizer_step_per_group_of_batches(data_root, tmp_path):
    config = build_config(None, {**SMALL, "data_root": str(data_root), "epochs": 1, "grad_accumulation": 3,
                                 "grad_clip": 1.0})
    # 12 clips x 5 captions = 60 pairs in batches of 8: 8 batches -> optimizer steps after batches 3, 6 and 8
    assert training.train_new(tmp_path, config).step == 3


def test_init_meta_takes_the_parameter_count_from_the_registry(finished_run, tmp_path):
    import yaml

    from dcase_t6.runs.model import load_model

    workdir, summary = finished_run
    out = tmp_path / "meta.yaml"
    result = CliRunner().invoke(main, ["--workdir", str(workdir), "package", "--init-meta", "--label",
                                       "Doe_LAB_task6_1", "--runs", summary.run, "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = load_model(Registry(workdir), summary.run).model
    meta = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert meta["system"]["complexity"]["total_parameters"] == model.parameter_count() > 0


@pytest.fixture(scope="module")
def long_clip_root(tmp_path_factory) -> Path:
    """Clips of 6-9 s, longer than the 5 s the next run is configured to see."""
    from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic

    root = tmp_path_factory.mktemp("long-clips")
    prepare_synthetic(Layout.at(root), SyntheticConfig(development=8, validation=6, evaluation=4, min_duration=6.0,
                                                       max_duration=9.0))
    return root


def test_embed_uses_the_runs_own_audio_seconds_as_its_validation_did(long_clip_root, tmp_path):
    import numpy as np

    from dcase_t6.data.audio_cache import AudioCache
    from dcase_t6.data.split_index import load_split
    from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio
    from dcase_t6.runs.model import load_model

    settings = {**SMALL, "data_root": str(long_clip_root), "audio_seconds": 5.0, "epochs": 1, "name": "five"}
    summary = training.train_new(tmp_path, build_config(None, settings))
    written = embed_run(tmp_path, summary.run, SplitRequest(long_clip_root, "synthetic", "development-validation"))
    assert written.audio_seconds == 5.0 and written.checkpoint == "best"

    split = load_split(long_clip_root, "synthetic", "development-validation")
    model = load_model(Registry(tmp_path), summary.run).model
    store = AudioCache(long_clip_root, model.sample_rate)
    with np.load(written.embeddings) as data:
        stored = data["audio"]
    settings = EncodeSettings(4, torch.device("cpu"))
    five_seconds = embed_audio(model, Clips(split.paths, store.clip, 5 * model.sample_rate), settings)
    whole = embed_audio(model, Clips(split.paths, store.clip, 30 * model.sample_rate), settings)
    assert np.allclose(stored, five_seconds, atol=1e-6) and not np.allclose(stored, whole, atol=1e-3)
    # and the registered matrix scores exactly what validation recorded for the best epoch
    result = CliRunner().invoke(main, ["--workdir", str(tmp_path), "evaluate", "-p",
                                       f"{summary.run}:synthetic/development-validation", "-c",
                                       str(Layout.at(long_clip_root).captions_csv("synthetic",
                                                                                  "validation")),
                                       "--json"])
    assert result.exit_code == 0, result.output
    scores, best = json.loads(result.stdout), Registry(tmp_path).run(summary.run).epochs[0]
    assert all(scores[key] == pytest.approx(best[key], abs=1e-12) for key in ("R@1", "R@5", "R@10", "mAP@10"))


def test_embed_checkpoint_last_is_said_in_the_output(finished_run, data_root):
    workdir, summary = finished_run
    result = CliRunner().invoke(main, ["--workdir", str(workdir), "embed", summary.run, "--data-root",
                                       str(data_root), "--dataset", "synthetic", "--checkpoint", "last", "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written["checkpoint"] == "last" and written["checkpoint_epoch"] == 2


def test_bf16_autocast_trains_on_cpu(data_root, tmp_path):
    config = build_config(None, {**SMALL, "data_root": str(data_root), "epochs": 1, "precision": "bf16"})
    summary = training.train_new(tmp_path, config)
    run = Registry(tmp_path).run(summary.run)
    assert summary.status == "finished" and run.config["precision"] == "bf16"
    assert 0 < run.epochs[0]["train_loss"] < 10
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cpu")) is None  # no fp16 training kernels on CPU
    assert autocast_dtype("fp16", torch.device("cuda")) is torch.float16


def test_a_scaler_state_moves_between_a_cpu_run_and_a_gpu_run(tmp_path):
    """fp16 on a CPU trains in fp32 with a disabled scaler, which saves {}; on a GPU the scaler is enabled and
    refuses {}. torch.amp.GradScaler("cpu", enabled=True) stands in for the GPU's: same state, same checks."""
    from dcase_t6.models import DualEncoder, ModelConfig
    from dcase_t6.runs.config import TrainConfig
    from dcase_t6.training.checkpointing import Checkpointer, Position

    config = TrainConfig(model=ModelConfig(backbone="tiny-cnn", text_model="tiny-random", embed_dim=8))
    registry = Registry(tmp_path)
    run_id = registry.create_run("scaler", config.to_dict(), data_fingerprint=None, seed=0)
    checkpointer = Checkpointer(registry, run_id, tmp_path / "runs" / run_id, config, is_main=True)
    model = DualEncoder(config.model, audio_weights=None)
    optimizer = torch.optim.AdamW(model.parameters())
    last = lambda: registry.file(run_id, "checkpoint", "last").path  # noqa: E731

    def resumed(enabled: bool) -> torch.amp.GradScaler:
        scaler = torch.amp.GradScaler("cpu", enabled=enabled)
        position = checkpointer.restore(last(), model, optimizer, scaler, torch.device("cpu"))
        assert position.step == 7
        return scaler

    cpu_scaler = torch.amp.GradScaler("cpu", enabled=False)
    checkpointer.save_last(model, optimizer, cpu_scaler, Position(step=7))
    assert torch.load(last(), weights_only=True)["scaler"] == {}
    gpu_scaler = resumed(enabled=True)  # CPU-started run resumed on a GPU: starts scaling as a new fp16 run
    assert gpu_scaler.is_enabled() and gpu_scaler.state_dict() == torch.amp.GradScaler("cpu").state_dict()

    gpu_scaler.scale(torch.tensor(1.0))
    gpu_scaler.update(1024.0)  # as after overflows: the state a GPU run checkpoints
    checkpointer.save_last(model, optimizer, gpu_scaler, Position(step=7))
    assert resumed(enabled=True).state_dict() == gpu_scaler.state_dict() and gpu_scaler.get_scale() == 1024.0
    assert resumed(enabled=False).state_dict() == {}  # GPU run resumed on a CPU: fp32, no scaler


def test_bf16_on_a_gpu_without_native_bf16_is_one_line_before_training(monkeypatch):
    from dcase_t6.common.errors import UserError

    supported = {"value": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: supported["value"])
    with pytest.raises(UserError, match=r"^precision bf16: the GPU cuda:0 has no native bf16 support .*fp16"):
        autocast_dtype("bf16", torch.device("cuda:0"))
    supported["value"] = True
    assert autocast_dtype("bf16", torch.device("cuda:0")) is torch.bfloat16
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16  # CPUs are not asked


def test_deterministic_runs_with_deterministic_algorithms_only_and_restores_the_process(data_root, tmp_path,
                                                                                       monkeypatch):
    import os

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with training.deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    config = build_config(None, {**SMALL, "data_root": str(data_root), "max_steps": 1, "deterministic": True})
    summary = training.train_new(tmp_path, config)
    assert summary.status == "stopped" and Registry(tmp_path).run(summary.run).config["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()


def test_each_process_draws_its_own_dropout_and_the_main_process_draws_as_one_process_does():
    import numpy as np

    from dcase_t6.training.loop import step_seed

    alone = int(np.random.SeedSequence([0, 1, 2]).generate_state(2, np.uint64)[0] >> np.uint64(1))
    assert step_seed(0, 1, 2) == step_seed(0, 1, 2, rank=0) == alone  # single-process runs resume as before
    assert len({step_seed(0, 1, 2, rank=rank) for rank in range(4)}) == 4
