"""Config keys ``model.pooling`` and ``model.projection``: the token pooling (default / mean / attention), the
projection heads (linear / mlp), their config keys, and a model with attention pooling and MLP heads trained, saved,
reloaded and embedding. The real backbones (random weights) are compared with their pre-pooling-key code path in
the slow tests at the end."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.embedding.checkpoints import SplitRequest, embed_exported, embed_run
from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio
from dcase_t6.models import DualEncoder, ModelConfig
from dcase_t6.models import audio as audio_backbones
from dcase_t6.models.audio import beats, eat, passt, segments
from dcase_t6.models.audio.pooling import TokenPool, time_padding
from dcase_t6.models.checkpoint import WeightSource, load_weights
from dcase_t6.pipeline.run import config_digest
from dcase_t6.runs.config import TrainConfig, build_config, from_dict
from dcase_t6.runs.model import load_model
from dcase_t6.runs.registry import Registry
from dcase_t6.sharing.compare import differing_keys
from dcase_t6.sharing.export import ExportRequest, export_run
from dcase_t6.training import trainer as training

TINY = {"backbone": "tiny-cnn", "text_model": "tiny-random", "embed_dim": 8}


def _batch():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(3, 16000, generator=generator), torch.tensor([16000, 9000, 3000])


# ------------------------------------------------------------------------------------------------ config keys


def test_the_keys_are_off_by_default_checked_and_digested_as_they_should():
    default = build_config(None, {})
    assert (default.model.pooling, default.model.projection, default.gradient_checkpointing) == \
        ("default", "linear", False)
    chosen = build_config(None, {"model.pooling": "attention", "model.projection": "mlp",
                                 "gradient_checkpointing": "true"})
    assert (chosen.model.pooling, chosen.model.projection, chosen.gradient_checkpointing) == ("attention", "mlp", True)
    for key, value, expected in (("model.pooling", "max", "one of default, mean, attention"),
                                 ("model.projection", "deep", "one of linear, mlp")):
        with pytest.raises(UserError) as caught:
            build_config(None, {key: value})
        assert str(caught.value) == f"command line: config key '{key}' = {value!r} must be {expected}"
    # runs compare shows them (runs show prints the whole stored config)
    assert differing_keys([default.to_dict(), chosen.to_dict()]) == {
        "model.pooling": ["default", "attention"], "model.projection": ["linear", "mlp"],
        "gradient_checkpointing": [False, True]}
    # pipelines: the architecture keys change a stage's digest, checkpointing (same gradients) does not
    assert config_digest(build_config(None, {"gradient_checkpointing": "true"})) == config_digest(default)
    assert config_digest(build_config(None, {"model.pooling": "mean"})) != config_digest(default)
    assert config_digest(build_config(None, {"model.projection": "mlp"})) != config_digest(default)


def test_a_config_stored_before_the_keys_existed_gets_the_old_architecture():
    stored = TrainConfig().to_dict()
    for key in ("pooling", "projection"):
        del stored["model"][key]
    del stored["gradient_checkpointing"]
    config = from_dict(stored)
    assert (config.model.pooling, config.model.projection, config.gradient_checkpointing) == \
        ("default", "linear", False)


# ------------------------------------------------------------------------------------------------ pooling


def test_mean_pooling_leaves_padding_out_and_attention_starts_as_the_mean():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 5, 4, generator=generator)
    padding = torch.tensor([[False] * 5, [False, False, True, True, True], [True] * 5])
    mean = TokenPool("mean", 4, "test")(tokens, padding)
    assert mean.shape == (3, 4)
    assert torch.allclose(mean[0], tokens[0].mean(0)) and torch.allclose(mean[1], tokens[1, :2].mean(0))
    assert torch.allclose(mean[2], tokens[2].mean(0))  # every token padding: pooled over all of them
    attention = TokenPool("attention", 4, "test")
    assert [name for name, _ in attention.named_parameters()] == ["query"] and not attention.query.any()
    assert torch.allclose(attention(tokens, padding), mean, atol=1e-6)  # query zero: uniform weights
    with torch.no_grad():
        attention.query.copy_(torch.tensor([50.0, 0.0, 0.0, 0.0]))
    pooled = attention(tokens, padding)
    weights = torch.softmax(tokens[1, :2, 0] * 50 / 2, dim=0)  # q . x / sqrt(4) over the two audio tokens only
    assert torch.allclose(pooled[1], weights @ tokens[1, :2], atol=1e-6)
    assert not torch.allclose(pooled[0], mean[0], atol=1e-3)
    assert list(TokenPool("mean", 4, "test").parameters()) == []  # mean and default add no state-dict keys
    with pytest.raises(UserError, match="model.pooling 'max' is not a pooling of the eat backbone"):
        TokenPool("max", 4, "eat")


def test_padding_masks_of_time_major_and_frequency_major_patch_grids():
    valid, columns = torch.tensor([1, 3]), torch.tensor([0, 2, 5])  # three kept time columns, two frequency rows
    assert time_padding(valid, columns, 2, time_major=True).tolist() == [
        [False, False, True, True, True, True], [False, False, False, False, True, True]]
    assert time_padding(valid, columns, 2, time_major=False).tolist() == [
        [False, True, True, False, True, True], [False, False, True, False, False, True]]


@pytest.mark.parametrize(("pooling", "width"), [("default", 128), ("mean", 64), ("attention", 64)])
def test_every_pooling_of_tiny_cnn_gives_the_documented_shape(pooling, width):
    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(**TINY, pooling=pooling)).eval()
    waveforms, lengths = _batch()
    assert model.audio.output_dim == width and model.audio(waveforms, lengths).shape == (3, width)
    embedded = model.encode_audio(waveforms, lengths)
    assert embedded.shape == (3, 8) and torch.allclose(embedded.norm(dim=1), torch.ones(3))


def test_attention_pooling_query_gets_a_gradient():
    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(**TINY, pooling="attention")).train()
    audio, text = model(*_batch(), ["a dog", "rain falls", "a bell"])
    (audio @ text.T).diagonal().sum().backward()
    assert model.audio.pool.query.grad is not None and model.audio.pool.query.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ projection heads


def test_projection_parameter_names_and_a_linear_checkpoint_from_before_loads():
    torch.manual_seed(0)
    linear = DualEncoder(ModelConfig(**TINY))
    mlp = DualEncoder(ModelConfig(**TINY, projection="mlp"))
    heads = [key for key in mlp.state_dict() if "_projection." in key]
    assert heads == [f"{side}_projection.{layer}.{kind}" for side in ("audio", "text") for layer in (0, 2)
                     for kind in ("weight", "bias")]
    assert mlp.audio_projection[0].out_features == mlp.audio_projection[2].in_features == 8  # WavCaps's widths
    assert isinstance(mlp.audio_projection[1], torch.nn.ReLU)
    assert [key for key in linear.state_dict() if "_projection." in key] == [
        "audio_projection.weight", "audio_projection.bias", "text_projection.weight", "text_projection.bias"]
    # a checkpoint of the linear heads (the names every earlier version wrote) loads into the default model ...
    state = {key: value.clone() for key, value in linear.state_dict().items()}
    again = DualEncoder(ModelConfig(**TINY))
    load_weights(again, state, WeightSource("before", "before.pt", fix="-"))
    assert all(torch.equal(value, again.state_dict()[key]) for key, value in state.items())
    # ... and not into MLP heads: one line naming the first head parameter the file lacks
    with pytest.raises(UserError, match=r"parameter audio_projection\.0\.weight: missing from the file"):
        load_weights(mlp, state, WeightSource("before", "before.pt", fix="-"))


def test_attention_query_and_mlp_heads_survive_a_save_and_load(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(**TINY, pooling="attention", projection="mlp")
    model = DualEncoder(config).eval()
    with torch.no_grad():
        model.audio.pool.query.normal_()
    torch.save({"model": model.state_dict()}, tmp_path / "best.pt")
    again = DualEncoder(config).eval()  # a fresh query (zero) and fresh heads until loaded
    waveforms, lengths = _batch()
    assert not torch.allclose(again.encode_audio(waveforms, lengths), model.encode_audio(waveforms, lengths))
    load_weights(again, torch.load(tmp_path / "best.pt", weights_only=True)["model"],
                 WeightSource("saved", tmp_path / "best.pt", fix="-"))
    assert torch.equal(again.audio.pool.query, model.audio.pool.query)
    assert torch.equal(again.encode_audio(waveforms, lengths), model.encode_audio(waveforms, lengths))


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow  # training, then embedding a split: about 15 s on two loaded cores
def test_attention_pooling_and_mlp_heads_train_save_reload_and_embed(tiny_training, tmp_path):
    config = build_config(None, {**tiny_training, "model.pooling": "attention", "model.projection": "mlp",
                                 "lr": 1e-2, "log": "none"})
    run = training.train_new(tmp_path, config).run
    registry = Registry(tmp_path)
    state = torch.load(registry.file(run, "checkpoint", "best").path, weights_only=True)["model"]
    assert state["audio.pool.query"].abs().max() > 1e-2  # trained from zero
    assert "audio_projection.2.weight" in state and "text_projection.2.bias" in state
    loaded = load_model(registry, run)
    assert torch.equal(loaded.model.audio.pool.query, state["audio.pool.query"])
    shown = CliRunner().invoke(main, ["--workdir", str(tmp_path), "runs", "show", run, "--json"])
    assert shown.exit_code == 0, shown.output
    assert {key: json.loads(shown.output)["config"]["model"][key] for key in ("pooling", "projection")} == \
        {"pooling": "attention", "projection": "mlp"}

    outcome = embed_run(tmp_path, run, SplitRequest(tiny_training["data_root"], "synthetic", "development-testing",
                                                    batch_size=4))
    with np.load(outcome.embeddings) as written:
        paths, audio = [str(path) for path in written["paths"]], written["audio"]
    store = AudioCache(tiny_training["data_root"], loaded.model.sample_rate)
    clips = Clips(paths, store.clip, loaded.config.clip_samples(loaded.model.sample_rate))
    settings = EncodeSettings(4, torch.device("cpu"))
    assert np.allclose(embed_audio(loaded.model, clips, settings), audio, atol=1e-6)
    with torch.no_grad():
        loaded.model.audio.pool.query.zero_()  # the embeddings came from the trained query, not a fresh one
    assert np.abs(embed_audio(loaded.model, clips, settings) - audio).max() > 1e-3
    # exported (safetensors, config.json with both keys) it embeds as the run does
    folder = export_run(tmp_path, ExportRequest(run, tmp_path / "exported")).folder
    assert json.loads((folder / "config.json").read_text())["model"]["pooling"] == "attention"
    exported = embed_exported(folder, SplitRequest(tiny_training["data_root"], "synthetic", "development-testing",
                                                   batch_size=4), tmp_path / "from-folder")
    with np.load(exported.embeddings) as written:
        assert np.array_equal(written["audio"], audio)


# ------------------------------------------------------------------------------------------------ real backbones


def _passt_features_as_before(backbone, waveforms, lengths):
    """PaSST as it embedded before the pooling key: hear21passt's own ``forward_features``, then the mean of the CLS
    and distillation tokens, then of the segments."""
    cut, owners, counts = passt.segment_clips(waveforms, lengths)
    with torch.no_grad():
        mel = backbone.mel(cut.float())
    cls_token, distillation_token = backbone.net.forward_features(mel.unsqueeze(1))
    return segments.mean_of_segments((cls_token + distillation_token) / 2, owners, counts)


def _eat_features_as_before(backbone, waveforms, lengths):
    """EAT as it embedded before the pooling key: the blocks one after the other, the final CLS token."""
    cut, owners, counts = segments.segment_clips(waveforms, lengths, eat.SEGMENT_SAMPLES, eat.SEGMENTS)
    spectrograms = eat.fbank_input(cut, segments.segment_lengths(lengths, eat.SEGMENT_SAMPLES, eat.SEGMENTS))
    patches = backbone.patch_embed(spectrograms).flatten(2).transpose(1, 2)
    tokens = torch.cat([backbone.cls_token.expand(len(patches), -1, -1), patches + backbone.positions], dim=1)
    tokens = backbone.input_norm(tokens)
    for block in backbone.blocks:
        tokens = block(tokens)
    return segments.mean_of_segments(tokens[:, 0], owners, counts)


def _beats_features_as_before(backbone, waveforms, lengths):
    """BEATs as it embedded before the pooling key: the mean of the non-padding tokens of ``extract_features``."""
    cut, owners, counts = segments.segment_clips(waveforms, lengths, beats.SEGMENT_SAMPLES, beats.SEGMENTS)
    true = segments.segment_lengths(lengths, beats.SEGMENT_SAMPLES, beats.SEGMENTS)
    fbank = backbone.net.preprocess(cut[:, :int(true.max())])
    padding = beats.token_padding_mask(true, fbank.shape[1] // 16, 8)
    valid = (~padding).unsqueeze(-1)
    features = (backbone.net.extract_features(fbank, padding).float() * valid).sum(1) / valid.sum(1)
    return segments.mean_of_segments(features, owners, counts)


BEFORE = {"passt": _passt_features_as_before, "eat": _eat_features_as_before, "beats": _beats_features_as_before}


@pytest.mark.slow  # a backbone of 86-94 M parameters built and run on 1-3 s clips: 1-2 minutes on two loaded cores
@pytest.mark.parametrize("name", ["passt", "beats", "eat"])
def test_default_pooling_is_the_code_path_before_bit_for_bit_and_the_others_give_the_shape(name):
    torch.manual_seed(0)
    backbone = audio_backbones.build(name, weights="random").eval()
    rate = backbone.sample_rate
    generator = torch.Generator().manual_seed(1)
    waveforms, lengths = 0.1 * torch.randn(2, 3 * rate, generator=generator), torch.tensor([3 * rate, rate])
    with torch.no_grad():
        default = backbone(waveforms, lengths)
        assert default.shape == (2, 768) and torch.equal(default, BEFORE[name](backbone, waveforms, lengths))
        if name == "passt":  # in training too: the same patchout and mel-shift draws, the same numbers
            backbone.train()
            torch.manual_seed(5)
            before = BEFORE[name](backbone, waveforms, lengths)
            torch.manual_seed(5)
            assert torch.equal(backbone(waveforms, lengths), before)
            backbone.eval()
        pooled = {}
        for kind in ("mean", "attention"):
            backbone.pool = TokenPool(kind, 768, name)
            pooled[kind] = backbone(waveforms, lengths)
            assert pooled[kind].shape == (2, 768)
            assert name == "beats" or not torch.allclose(pooled[kind], default, atol=1e-3)  # not CLS tokens
        assert torch.allclose(pooled["attention"], pooled["mean"], atol=1e-5)  # the query starts at zero
        if name == "beats":  # BEATs' own pooling is the mean without padding; padding never changes a clip's
            assert torch.allclose(pooled["mean"], default, atol=1e-5)
            alone = backbone(waveforms[1:, :rate], lengths[1:])
            assert torch.allclose(alone[0], pooled["mean"][1], atol=1e-4)
