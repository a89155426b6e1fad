"""`runs import --format baseline`: the DCASE 2025 baseline's Lightning checkpoint becomes a run.

The checkpoints here are written by this test in the baseline's layout (the key names of its
``AudioRetrievalModel``, Lightning's top-level entries, PaSST's AudioSet heads, ``tau`` of shape [1]) from a model of
ours with known tensors: the real PaSST architecture with random weights and a RoBERTa with the hub model's layout,
scaled down. The comparison with the baseline's own code on the same weights is in the README (it cannot ship here).
"""

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.sharing.baseline import DROPPED, map_key, read_baseline_checkpoint
from helpers.cli import cli_error

HEADS = {"audio_embedding_model.model.model.head.0.weight": (768,),
         "audio_embedding_model.model.model.head.0.bias": (768,),
         "audio_embedding_model.model.model.head.1.weight": (527, 768),
         "audio_embedding_model.model.model.head.1.bias": (527,),
         "audio_embedding_model.model.model.head_dist.weight": (527, 768),
         "audio_embedding_model.model.model.head_dist.bias": (527,)}
# The baseline's command-line arguments as its train.py saves them (the published run's command line).
HYPER_PARAMETERS = {"devices": "auto", "n_workers": 16, "compile": True, "logging": True, "resume_ckpt_path": None,
                    "load_ckpt_path": None, "seed": 967251, "batch_size": 64, "batch_size_eval": 64,
                    "max_epochs": 20, "warmup_epochs": 1, "rampdown_epochs": 15, "max_lr": 2e-5, "min_lr": 1e-7,
                    "initial_tau": 0.05, "tau_trainable": False, "s_patchout_t": 15, "s_patchout_f": 2,
                    "roberta_base": False, "wavcaps": True, "audiocaps": True, "ablate_clean_setup": True,
                    "data_path": "data", "checkpoints_path": "checkpoints", "train": True, "test": True}


def baseline_names(state: dict[str, torch.Tensor], compiled: bool = False) -> dict[str, torch.Tensor]:
    """Our DualEncoder's tensors under the baseline's names (``_orig_mod.`` where torch.compile puts it)."""
    audio, text = ("audio_embedding_model.model.model._orig_mod.", "text_embedding_model._orig_mod.") if compiled \
        else ("audio_embedding_model.model.model.", "text_embedding_model.")
    out = {"tau": state["log_temperature"].exp().reshape(1)}
    for key, value in state.items():
        if key.startswith("audio.net."):
            out[audio + key[len("audio.net."):]] = value
        elif key.startswith("text.model."):
            out[text + key[len("text.model."):]] = value
        elif key.startswith(("audio_projection.", "text_projection.")):
            out[key] = value
    return out


def lightning_checkpoint(state_dict: dict, hyper_parameters: dict | None = None, **extra) -> dict:
    """A checkpoint as Lightning 2.5 saves the baseline's model (the entries its ModelCheckpoint/Trainer write)."""
    first = next(iter(state_dict.values()))
    return {"epoch": 13, "global_step": 123456, "pytorch-lightning_version": "2.5.0.post0",
            "state_dict": state_dict, "hparams_name": None,
            "hyper_parameters": dict(HYPER_PARAMETERS if hyper_parameters is None else hyper_parameters),
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 14, "completed": 13}}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'val/mAP@10', 'mode': 'max', 'every_n_train_steps': 0, "
                          "'every_n_epochs': 1, 'train_time_interval': None}": {
                              "monitor": "val/mAP@10", "best_model_score": torch.tensor(0.3512),
                              "best_model_path": "checkpoints/x/epoch=13.ckpt", "best_k_models": {}}},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros_like(first),
                                                "exp_avg_sq": torch.zeros_like(first)}},
                                  "param_groups": [{"lr": 1e-7, "betas": (0.9, 0.999), "eps": 1e-8,
                                                    "weight_decay": 0.0, "amsgrad": False, "params": [0]}]}],
            "lr_schedulers": [], **extra}


def small_state() -> dict[str, torch.Tensor]:
    """A few tensors under the baseline's names (for reading tests that build no model)."""
    generator = torch.Generator().manual_seed(0)
    state = {"tau": torch.tensor([0.047]),
             "audio_embedding_model.model.model.cls_token": torch.randn(1, 1, 768, generator=generator),
             "audio_projection.weight": torch.randn(1024, 768, generator=generator),
             "text_embedding_model.encoder.layer.0.output.dense.bias": torch.randn(1024, generator=generator),
             "text_projection.bias": torch.randn(1024, generator=generator)}
    return {**state, **{key: torch.randn(shape, generator=generator) for key, shape in HEADS.items()}}


def _trip(path: str) -> None:
    Path(path).write_text("ran")


class Tripwire:
    """Pickles as a call of ``_trip`` (a function of this module): code a pickled object would run when loaded."""

    def __init__(self, marker: Path):
        self.path = str(marker)

    def __reduce__(self):
        return _trip, (self.path,)


class Blocked:
    """Pickles as a call of ``os.makedirs``, from a module torch never lets a checkpoint name."""

    def __init__(self, marker: Path):
        self.path = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.path,)


# ------------------------------------------------------------------------------------------------ reading


def test_every_key_is_mapped_or_dropped_by_name():
    assert map_key("audio_embedding_model.model.model.blocks.3.attn.qkv.weight") == "audio.net.blocks.3.attn.qkv.weight"
    assert map_key("audio_embedding_model.model.model._orig_mod.cls_token") == "audio.net.cls_token"
    assert map_key("text_embedding_model._orig_mod.embeddings.word_embeddings.weight") == \
        "text.model.embeddings.word_embeddings.weight"
    assert map_key("audio_projection.bias") == "audio_projection.bias"
    assert map_key("tau") == "log_temperature"
    for dropped in (*HEADS, "text_embedding_model.pooler.dense.weight", "text_embedding_model.embeddings.position_ids"):
        assert map_key(dropped) is None, dropped
    assert set(DROPPED) == {"audio_embedding_model.model.model.head.", "audio_embedding_model.model.model.head_dist.",
                            "text_embedding_model.pooler.", "text_embedding_model.embeddings.position_ids"}
    with pytest.raises(UserError, match="unexpected tensor 'audio_embedding_model.model.extra'"):
        map_key("audio_embedding_model.model.extra")


def test_a_lightning_checkpoint_is_read_with_its_hyper_parameters_and_counters(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save(lightning_checkpoint(small_state()), path)
    checkpoint = read_baseline_checkpoint(path)
    assert sorted(checkpoint.dropped) == sorted(HEADS)
    assert dict(checkpoint.mapped)["tau"] == "log_temperature"
    assert math.isclose(checkpoint.temperature, 0.047, rel_tol=1e-6)
    assert checkpoint.state["log_temperature"].shape == ()
    assert torch.equal(checkpoint.state["audio_projection.weight"], small_state()["audio_projection.weight"])
    assert (checkpoint.epoch, checkpoint.global_step, checkpoint.lightning_version) == (13, 123456, "2.5.0.post0")
    assert checkpoint.hyper_parameters == HYPER_PARAMETERS and checkpoint.text_model == "roberta-large"


def test_pickled_objects_in_the_file_are_never_run(tmp_path):
    """argparse namespaces (what a LightningModule saved with ``save_hyperparameters(args)`` holds) and any other
    object become inert placeholders and are dropped; the plain values and every tensor are kept."""
    marker = tmp_path / "ran"
    hyper = {**HYPER_PARAMETERS, "args": argparse.Namespace(max_lr=2e-5), "trap": Tripwire(marker)}
    torch.save(lightning_checkpoint(small_state(), hyper), tmp_path / "objects.ckpt")
    checkpoint = read_baseline_checkpoint(tmp_path / "objects.ckpt")
    assert not marker.exists()
    assert checkpoint.hyper_parameters == HYPER_PARAMETERS  # the objects are gone, nothing else
    assert len(checkpoint.mapped) == len(small_state()) - len(HEADS)
    torch.save(lightning_checkpoint(small_state(), {**HYPER_PARAMETERS, "trap": Blocked(marker)}),
               tmp_path / "blocked.ckpt")
    line = cli_error(tmp_path / "work", "runs", "import", "--format", "baseline", tmp_path / "blocked.ckpt")
    assert "cannot be read safely, refused" in line and not marker.exists()


@pytest.mark.parametrize("damage, expected", [
    (lambda state: {**state, "audio_embedding_model.extra_token": torch.zeros(3)},
     "unexpected tensor 'audio_embedding_model.extra_token'"),
    (lambda state: {**state, "tau": torch.tensor([0.0])}, "'tau' must be one finite non-zero number"),
    (lambda state: {**state, "tau": torch.tensor([0.05, 0.05])}, "'tau' must be one finite non-zero number"),
    (lambda state: {**state, "text_projection.weight": "not a tensor"}, "entry 'text_projection.weight' is not a "
                                                                        "tensor"),
    (lambda state: {**state, "audio_embedding_model.model.model._orig_mod.cls_token": torch.zeros(1, 1, 768)},
     "appears twice"),
])
def test_a_file_that_is_not_the_baselines_is_one_line_naming_the_key(tmp_path, damage, expected):
    path = tmp_path / "damaged.ckpt"
    torch.save(lightning_checkpoint(damage(small_state())), path)
    line = cli_error(tmp_path / "work", "runs", "import", "--format", "baseline", path)
    assert expected in line and str(path) in line
    assert not (tmp_path / "work" / "runs").exists() or not any((tmp_path / "work" / "runs").iterdir())


def test_files_of_other_kinds_are_one_line(tmp_path):
    torch.save({"model": small_state()}, tmp_path / "plain.pt")
    assert "no 'state_dict' in this file" in cli_error(tmp_path, "runs", "import", "--format", "baseline",
                                                             tmp_path / "plain.pt")
    (tmp_path / "text.ckpt").write_text("hello")
    assert "cannot be read as a torch checkpoint" in cli_error(tmp_path, "runs", "import", "--format",
                                                                    "baseline", tmp_path / "text.ckpt")
    assert "checkpoint file not found" in cli_error(tmp_path, "runs", "import", "--format", "baseline",
                                                         tmp_path / "absent.ckpt")
    line = cli_error(tmp_path, "runs", "import", tmp_path / "plain.pt")
    assert "a file, not an exported folder" in line and "--format baseline" in line
    assert "--text-model only applies with --format baseline" in cli_error(
        tmp_path, "runs", "import", tmp_path, "--text-model", "roberta-large")


# --------------------------------------------------------------------- the real architecture, imported and used


def reference_model(text_folder: Path):
    """Our model with known random tensors: the real PaSST architecture and a RoBERTa in the hub's layout."""
    from dcase_t6.models import DualEncoder, ModelConfig

    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(backbone="passt", text_model=str(text_folder), temperature=0.047),
                        audio_weights="random")
    with torch.no_grad():  # no tensor left at an initial constant (LayerNorm 1/0), so a mix-up would show
        for name, parameter in model.named_parameters():
            if name != "log_temperature":  # the temperature stays the one the config names
                parameter.add_(0.02 * torch.randn_like(parameter))
    return model.eval()


@pytest.fixture(scope="module")
def imported(roberta_with_pooler, tmp_path_factory) -> dict:
    from dcase_t6.data.layout import Layout
    from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic

    root = tmp_path_factory.mktemp("baseline-import")
    data = root / "data"
    # clips of 4-36 s: one, two and three 10 s segments, and longer than the 30 s PaSST reads
    # seed 8 gives the dev-test clips 17.34, 31.31 and 8.62 s
    prepare_synthetic(Layout.at(data), SyntheticConfig(seed=8, development=3, validation=3, evaluation=3,
                                                       min_duration=4.0, max_duration=36.0))
    model = reference_model(roberta_with_pooler)
    state = model.state_dict()
    generator = torch.Generator().manual_seed(1)
    heads = {key: torch.randn(shape, generator=generator) for key, shape in HEADS.items()}
    checkpoint = root / "epoch=13.ckpt"
    torch.save(lightning_checkpoint({**baseline_names(state), **heads}), checkpoint)
    compiled = root / "compiled.ckpt"
    torch.save(lightning_checkpoint({**baseline_names(state, compiled=True), **heads}), compiled)
    workdir = root / "work"
    result = CliRunner().invoke(main, ["--workdir", str(workdir), "runs", "import", "--format", "baseline",
                                       str(checkpoint), "--text-model", str(roberta_with_pooler), "--json"])
    assert result.exit_code == 0, result.output
    return {"root": root, "data": data, "workdir": workdir, "model": model, "checkpoint": checkpoint,
            "compiled": compiled, "text": roberta_with_pooler, "result": json.loads(result.output)}


def run_cli(workdir: Path, *args) -> dict:
    result = CliRunner().invoke(main, ["--workdir", str(workdir), *[str(arg) for arg in args]])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result.output


def npz(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


DEV_TEST, VALIDATION = "development-testing", "development-validation"


@pytest.mark.slow
def test_the_run_is_registered_with_the_baselines_settings(imported):
    from dcase_t6.runs.records import sha256_of
    from dcase_t6.runs.registry import Registry

    result = imported["result"]
    assert result["format"] == "baseline" and result["text_model"] == "roberta-large"
    assert sorted(result["dropped"]) == sorted(HEADS)
    state = imported["model"].state_dict()
    assert result["mapped"] == len(state)  # every tensor of our model came from the file
    registry = Registry(imported["workdir"])
    run = registry.run(result["run"])
    assert run.status == "imported" and run.name == "dcase2025-baseline" and run.seed == 967251
    config = run.config
    assert config["datasets"] == ["clotho", "audiocaps", "wavcaps"] and config["audio_seconds"] == 30.0
    assert (config["lr"], config["min_lr"], config["epochs"], config["batch_size"]) == (2e-5, 1e-7, 20, 64)
    assert config["model"]["text_model"] == "roberta-large" and config["model"]["backbone"] == "passt"
    assert (config["model"]["patchout_t"], config["model"]["patchout_f"]) == (15, 2)
    assert math.isclose(config["model"]["temperature"], 0.047, rel_tol=1e-6)
    best = torch.load(registry.file(run.id, "checkpoint", "best").path, weights_only=True)["model"]
    assert best.keys() == state.keys()
    assert all(torch.equal(best[key], state[key]) for key in state)
    provenance = registry.file(run.id, "import", "model").info
    assert provenance["format"] == "baseline" and provenance["epoch"] == 13 and provenance["global_step"] == 123456
    assert provenance["lightning_version"] == "2.5.0.post0"
    assert provenance["checkpoint_sha256"] == sha256_of(imported["checkpoint"])
    assert provenance["file"] == str(imported["checkpoint"])


@pytest.mark.slow
def test_the_compiled_layout_imports_the_same_tensors(imported, tmp_path):
    from dcase_t6.runs.registry import Registry

    other = tmp_path / "work"
    run = run_cli(other, "runs", "import", "--format", "baseline", imported["compiled"], "--text-model",
                  imported["text"], "--name", "compiled", "--json")["run"]
    ours = torch.load(Registry(other).file(run, "checkpoint", "best").path, weights_only=True)["model"]
    state = imported["model"].state_dict()
    assert all(torch.equal(ours[key], state[key]) for key in state) and ours.keys() == state.keys()


@pytest.mark.slow
def test_embed_gives_the_vectors_of_our_model_built_from_the_same_tensors(imported):
    from dcase_t6.data.audio_cache import AudioCache
    from dcase_t6.data.layout import Layout
    from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio, embed_text

    run, workdir, data = imported["result"]["run"], imported["workdir"], imported["data"]
    written = run_cli(workdir, "embed", run, "--data-root", data, "--dataset", "synthetic", "--split", DEV_TEST,
                      "--batch-size", 2, "--json")
    embedded = npz(written["embeddings"])
    cache = AudioCache(data, 32000)
    paths = [Path(path) for path in embedded["paths"]]
    durations = [len(cache.clip(path)) / 32000 for path in paths]
    assert min(durations) < 10 < max(durations) and max(durations) > 30  # 1, 2 and 3 segments, and a crop
    model = imported["model"]
    audio = embed_audio(model, Clips(paths, cache.clip, 30 * 32000), EncodeSettings(2, torch.device("cpu")))
    text = embed_text(model, list(embedded["queries"]), EncodeSettings(4, torch.device("cpu")))
    assert np.abs(embedded["audio"] - audio).max() < 1e-5
    assert np.abs(embedded["text"] - text).max() < 1e-5
    scores = npz(written["similarity"])["scores"]
    assert np.abs(scores - text.astype(np.float64) @ audio.astype(np.float64).T).max() < 1e-5
    relevance = Layout.at(data).relevance_file("synthetic")
    evaluated = run_cli(workdir, "evaluate", "-p", f"{run}:synthetic/{DEV_TEST}", "-r", relevance, "--json")
    assert evaluated["n_queries"] > 0 and 0.0 <= evaluated["mAP@16"] <= 1.0


@pytest.mark.slow
def test_the_imported_run_is_an_ensemble_member_a_teacher_a_start_and_exports_and_explores(imported, tmp_path):
    from dcase_t6.runs.registry import Registry

    run, workdir, data = imported["result"]["run"], imported["workdir"], imported["data"]
    run_cli(workdir, "embed", run, "--data-root", data, "--dataset", "synthetic", "--split", VALIDATION,
            "--batch-size", 2, "--json")
    captions = Path(data) / "synthetic" / "clotho_captions_validation.csv"
    weights = tmp_path / "weights.json"
    matrix = workdir / "runs" / run / "outputs" / f"synthetic.{VALIDATION}.similarity.npz"
    run_cli(workdir, "ensemble", "--search", "-s", f"baseline={run}:synthetic/{VALIDATION}", "-s", f"copy={matrix}",
            "-c", captions, "--out", weights)
    assert set(json.loads(weights.read_text())["weights"]) == {"baseline", "copy"}
    # a distillation teacher and the start of a fine-tuning run (one step on the synthetic clips)
    student = run_cli(workdir, "train", "--data-root", data, "--datasets", "synthetic", "--backbone", "passt",
                      "--audio-weights", "random", "--text-model", imported["text"], "--init-from", run,
                      "--distill-from", run, "--batch-size", 2, "--max-steps", 1, "--name", "student",
                      "--set", "model.temperature=0.047", "--json")
    assert student["step"] == 1
    registry = Registry(workdir)
    assert registry.has_file(run, "embeddings", "synthetic/development-training")
    # export: a folder that embeds exactly as the registered run, without the registry
    folder = tmp_path / "exported"
    run_cli(workdir, "export", run, "--out", folder, "--json")
    written = run_cli(tmp_path / "unused", "embed", "--model", folder, "--data-root", data, "--dataset", "synthetic",
                      "--split", VALIDATION, "--out", tmp_path / "emb", "--batch-size", 2, "--json")
    registered = npz(workdir / "runs" / run / "outputs" / f"synthetic.{VALIDATION}.embeddings.npz")
    exported = npz(written["embeddings"])
    assert np.array_equal(exported["audio"], registered["audio"]) and np.array_equal(exported["text"],
                                                                                     registered["text"])
    # explore: the static site of the run's validation matrix
    site = tmp_path / "site"
    run_cli(workdir, "explore", "-p", f"{run}:synthetic/{VALIDATION}", "-c", captions, "--audio",
            Path(data) / "synthetic" / "audio" / "validation", "--html", site)
    assert (site / "index.html").is_file() and any((site / "query").glob("*.html"))


def test_a_url_is_downloaded_once_into_the_weights_cache_also_as_a_zipped_share(tmp_path, monkeypatch):
    """The published checkpoint is a share link: the file is fetched once into the cache (a local server on
    127.0.0.1 stands in for cloud.cp.jku.at); a share that comes as a zip of a folder gives its one .ckpt."""
    import functools
    import http.server
    import threading
    import zipfile

    from dcase_t6.sharing.baseline import checkpoint_file

    served = tmp_path / "served"
    served.mkdir()
    torch.save(lightning_checkpoint(small_state()), served / "last.ckpt")
    with zipfile.ZipFile(served / "share.zip", "w") as archive:
        archive.write(served / "last.ckpt", "baseline/epoch=13.ckpt")
        archive.writestr("baseline/README.txt", "a shared folder")
    monkeypatch.setenv("DCASE_T6_CACHE", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        path = checkpoint_file(f"{base}/last.ckpt")
        assert path.parent == tmp_path / "cache" / "weights"
        assert path.read_bytes() == (served / "last.ckpt").read_bytes()
        inner = checkpoint_file(f"{base}/share.zip")
        assert inner.read_bytes() == (served / "last.ckpt").read_bytes()
        assert len(read_baseline_checkpoint(inner).mapped) == len(small_state()) - len(HEADS)
        (served / "last.ckpt").unlink()
        assert checkpoint_file(f"{base}/last.ckpt") == path  # cached: not fetched again
        with pytest.raises(UserError, match="cannot download the DCASE 2025 baseline checkpoint"):
            checkpoint_file(f"{base}/absent.ckpt")
    finally:
        server.shutdown()
