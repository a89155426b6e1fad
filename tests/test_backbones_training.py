"""EAT and BEATs trained end to end on CPU with random weights and the real code paths: torchrun with two gloo
processes, the 16 kHz audio cache beside PaSST's 32 kHz one, and distillation from a PaSST teacher (32 kHz) into
an EAT student (16 kHz); then embed and evaluate."""

import json

import pytest
import torch

from dcase_t6.data.layout import Layout
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.runs.model import load_model
from dcase_t6.runs.registry import Registry
from helpers.cli import run_dcase_process


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory):
    """Two training clips (ten pairs), one validation and one test clip, of 3-5 s."""
    root = tmp_path_factory.mktemp("backbones") / "data"
    prepare_synthetic(Layout.at(root), SyntheticConfig(development=2, validation=1, evaluation=1, min_duration=3.0,
                                                       max_duration=5.0))
    return root


def _train(workdir, root, roberta, backbone, *extra, processes=0):
    result = run_dcase_process(workdir, "train", "--data-root", str(root), "--datasets", "synthetic", "--backbone",
                               backbone, "--audio-weights", "random", "--text-model", str(roberta), "--epochs", "1",
                               "--batch-size", "4", "--json", *extra, processes=processes)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "finished" and summary["step"] == 3  # 10 pairs: global batches of 4, 4 and 2
    return summary


@pytest.mark.slow
def test_passt_teacher_distils_into_an_eat_student_trained_by_torchrun(short_clips, roberta_with_pooler, tmp_path):
    workdir, root = tmp_path / "work", short_clips
    teacher = _train(workdir, root, roberta_with_pooler, "passt")
    student = _train(workdir, root, roberta_with_pooler, "eat", "--distill-from", teacher["run"], processes=2)
    layout = Layout.at(root)
    assert (layout.cache_dir(32000) / "index.csv").is_file() and (layout.cache_dir(16000) / "index.csv").is_file()
    registry = Registry(workdir)
    embedded = registry.file(teacher["run"], "embeddings", "synthetic/development-training")
    assert embedded.info["files"] == 2  # the teacher embedded the training split itself, from its 32 kHz cache
    epoch = registry.run(student["run"]).epochs[0]
    assert epoch["train_distillation"] > 0 and epoch["train_contrastive"] > 0
    loaded = load_model(registry, student["run"])
    assert loaded.model.sample_rate == 16000 and loaded.config.distill_from == [teacher["run"]]
    state = torch.load(registry.file(student["run"], "checkpoint", "best").path, weights_only=True)["model"]
    assert any(key.startswith("audio.") for key in state)
    _embed_and_evaluate(workdir, root, student["run"])
    _export_embeds_like_the_run(workdir, root, teacher["run"], tmp_path)


def _export_embeds_like_the_run(workdir, root, run, tmp_path):
    """The real configuration shared: PaSST + a RoBERTa saved with the hub's pooler, exported to safetensors, embeds
    without any registry exactly as the registered run does."""
    import numpy as np

    registered = run_dcase_process(workdir, "embed", run, "--data-root", str(root), "--dataset", "synthetic", "--json")
    assert registered.returncode == 0, registered.stderr[-3000:]
    folder = tmp_path / "exported"
    exported = run_dcase_process(workdir, "export", run, "--out", str(folder), "--json")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert not [path for path in folder.rglob("*") if path.suffix in (".pt", ".bin", ".pkl")]
    embedded = run_dcase_process(tmp_path / "no-registry", "embed", "--model", str(folder), "--data-root", str(root),
                                 "--dataset", "synthetic", "--out", str(tmp_path / "embedded"), "--json")
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    with np.load(json.loads(registered.stdout)["embeddings"]) as expected, \
            np.load(json.loads(embedded.stdout)["embeddings"]) as actual:
        for key in ("audio", "text"):
            assert np.array_equal(actual[key], expected[key])


@pytest.mark.slow
def test_torchrun_trains_beats_then_embeds_and_evaluates(short_clips, roberta_with_pooler, tmp_path):
    workdir = tmp_path / "work"
    summary = _train(workdir, short_clips, roberta_with_pooler, "beats", processes=2)
    registry = Registry(workdir)
    assert registry.run(summary["run"]).config["model"]["backbone"] == "beats"
    assert load_model(registry, summary["run"]).model.sample_rate == 16000
    _embed_and_evaluate(workdir, short_clips, summary["run"])


def _embed_and_evaluate(workdir, root, run):
    embedded = run_dcase_process(workdir, "embed", run, "--data-root", str(root), "--dataset", "synthetic", "--json")
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    relevance = Layout.at(root).relevance_file("synthetic")
    evaluated = run_dcase_process(workdir, "evaluate", "-p", f"{run}:synthetic/development-testing", "-r",
                                  str(relevance), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert 0.0 < json.loads(evaluated.stdout)["mAP@16"] <= 1.0
