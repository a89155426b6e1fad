"""The ``eat`` backbone: shapes, its front end and position table against the original's formulas, padding
invariance, segment averaging, and loading both published weight layouts strictly and safely."""

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchaudio
from safetensors.torch import save_file

from dcase_t6.common.errors import UserError
from dcase_t6.models import audio as audio_backbones
from dcase_t6.models import weights
from dcase_t6.models.audio import eat

SECOND = eat.SAMPLE_RATE
BLOCKS, DIM = 12, 768


def original_position_table() -> torch.Tensor:
    """The published (1, 768 * 8, 768) table, re-derived in float32 numpy as the original computes it: row
    t * 8 + f; the first 384 channels encode the frequency patch f, the last 384 the time patch t, each as
    [sin(p w), cos(p w)] with w_k = 10000 ** (-k / 192)."""
    omega = (1.0 / 10000 ** (np.arange(192, dtype=np.float32) / np.float32(192))).astype(np.float32)
    time, frequency = np.meshgrid(np.arange(768, dtype=np.float32), np.arange(8, dtype=np.float32), indexing="ij")

    def half(position):
        angles = np.outer(position.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return torch.from_numpy(np.concatenate([half(frequency), half(time)], axis=1)).float().unsqueeze(0)


def published_port_state(seed: int = 7) -> dict:
    """Random weights under the Hugging Face port's key names (``EATModel`` holding ``EAT`` as ``model``)."""
    generator = torch.Generator().manual_seed(seed)

    def random(*shape, scale=0.02, offset=0.0):
        return torch.randn(*shape, generator=generator) * scale + offset

    state = {
        "model.local_encoder.proj.weight": random(DIM, 1, 16, 16, scale=0.05),
        "model.local_encoder.proj.bias": random(DIM),
        "model.extra_tokens": random(1, 1, DIM, scale=1.0),
        "model.fixed_positional_encoder.positions": original_position_table(),
        "model.pre_norm.weight": random(DIM, scale=0.1, offset=1.0),
        "model.pre_norm.bias": random(DIM),
    }
    for index in range(BLOCKS):
        block = f"model.blocks.{index}."
        state.update({
            block + "norm1.weight": random(DIM, scale=0.1, offset=1.0), block + "norm1.bias": random(DIM),
            block + "attn.qkv.weight": random(3 * DIM, DIM), block + "attn.qkv.bias": random(3 * DIM),
            block + "attn.proj.weight": random(DIM, DIM), block + "attn.proj.bias": random(DIM),
            block + "norm2.weight": random(DIM, scale=0.1, offset=1.0), block + "norm2.bias": random(DIM),
            block + "mlp.fc1.weight": random(4 * DIM, DIM), block + "mlp.fc1.bias": random(4 * DIM),
            block + "mlp.fc2.weight": random(DIM, 4 * DIM), block + "mlp.fc2.bias": random(DIM),
        })
    return state


def port_config() -> dict:
    return {"architectures": ["EATModel"], "model_type": "eat", "embed_dim": 768, "depth": 12, "num_heads": 12,
            "patch_size": 16, "stride": 16, "in_chans": 1, "mel_bins": 128, "max_length": 768, "num_classes": 527,
            "model_variant": "pretrain", "mlp_ratio": 4.0, "qkv_bias": True, "layer_norm_first": False,
            "norm_eps": 1e-6, "norm_affine": True, "fixed_positions": True, "img_size": [1024, 128]}


def _trip(path):
    """Would prove that reading a checkpoint ran code from it."""
    Path(path).write_text("ran")


class Tripwire:
    """Pickles as a call of ``_trip``: a stand-in for code that a pickled object runs when it is loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return _trip, (self.path,)


class Blocked:
    """Pickles as a call of ``os.makedirs``, from a module torch never lets a checkpoint name."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.makedirs, (self.path,)


def fairseq_checkpoint(port_state: dict, marker: Path) -> dict:
    """The original pre-training checkpoint's layout: fairseq's ``model`` state dict (data2vec_multi names, with
    the CNN decoder and the EMA teacher), its ``cfg`` as plain dicts, training leftovers, and a pickled object
    (``Tripwire``) that must not run."""
    renames = {"model.local_encoder.proj.": "modality_encoders.IMAGE.local_encoder.proj.",
               "model.extra_tokens": "modality_encoders.IMAGE.extra_tokens",
               "model.fixed_positional_encoder.positions": "modality_encoders.IMAGE.fixed_positional_encoder.positions",
               "model.pre_norm.": "modality_encoders.IMAGE.context_encoder.norm.",
               "model.blocks.": "blocks."}

    def rename(key):
        old = next(prefix for prefix in renames if key.startswith(prefix))
        return renames[old] + key[len(old):]

    model = {rename(key): tensor for key, tensor in port_state.items()}
    for layer in range(6):  # Decoder2d: grouped 3 x 3 convs (16 groups), LayerNorm without parameters
        model[f"modality_encoders.IMAGE.decoder.blocks.{layer}.0.weight"] = torch.zeros(DIM, DIM // 16, 3, 3)
        model[f"modality_encoders.IMAGE.decoder.blocks.{layer}.0.bias"] = torch.zeros(DIM)
    model["modality_encoders.IMAGE.decoder.proj.weight"] = torch.zeros(DIM, DIM)
    model["modality_encoders.IMAGE.decoder.proj.bias"] = torch.zeros(DIM)
    model["_ema"] = {"blocks.0.attn.qkv.weight": torch.zeros(3 * DIM, DIM)}  # the teacher's fp32 parameters
    cfg = {"common": {"fp16": True, "seed": 1},
           "model": {"_name": "data2vec_multi", "depth": 12, "embed_dim": 768, "num_heads": 12, "norm_eps": 1e-6,
                     "layer_norm_first": False, "supported_modality": "IMAGE",
                     "modalities": {"image": {"in_chans": 1, "prenet_depth": 0, "num_extra_tokens": 1,
                                              "decoder": {"decoder_dim": 768, "decoder_layers": 6}}}},
           "task": {"_name": "mae_image_pretraining", "target_length": 1024},
           "not_allowed": Tripwire(marker)}
    return {"args": None, "cfg": cfg, "model": model, "criterion": None,
            "optimizer_history": [{"criterion_name": "ModelCriterion", "num_updates": 400000}], "task_state": {},
            "extra_state": {"previous_training_time": np.float64(12.5), "metrics": {}}}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """One random EAT-base in both published layouts: an HF-port folder and a fairseq-style .pt."""
    folder = tmp_path_factory.mktemp("eat-port")
    state = published_port_state()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(port_config()))
    marker = folder / "tripwire-ran"
    checkpoint = folder / "EAT-base_epoch30_pt.pt"
    torch.save(fairseq_checkpoint(state, marker), checkpoint)
    return SimpleNamespace(state=state, folder=folder, checkpoint=checkpoint, marker=marker)


@pytest.fixture(scope="module")
def random_eat():
    torch.manual_seed(0)
    return audio_backbones.build("eat", weights="random").eval()


def test_eat_is_registered_at_16_khz_with_768_d_output(random_eat):
    assert "eat" in audio_backbones.available() and audio_backbones.sample_rate("eat") == 16000
    assert random_eat.output_dim == 768 and random_eat.weights_source.startswith("random")
    trained = sum(p.numel() for p in random_eat.parameters())
    assert trained == 85_254_144  # 12 blocks of 7,087,872 + patch conv 197,376 + CLS 768 + input norm 1,536
    assert random_eat.positions.shape == (1, 64 * 8, 768) and not random_eat.positions.requires_grad


def test_position_table_is_the_sin_cos_formula():
    table = eat.sincos_positions(768, 8)
    omega = [10000 ** (-k / 192) for k in range(192)]
    for time, frequency, channel in [(0, 0, 0), (0, 7, 5), (3, 2, 191), (63, 7, 200), (5, 1, 383), (700, 4, 384),
                                     (63, 0, 500), (767, 7, 575), (10, 3, 576), (767, 6, 767)]:
        half, k = divmod(channel, 384)
        position = frequency if half == 0 else time
        wave = math.sin if k < 192 else math.cos
        expected = wave(position * omega[k % 192])
        assert table[time * 8 + frequency, channel].item() == pytest.approx(expected, abs=1e-6)
    assert (table - original_position_table()[0]).abs().max() < 1e-4  # the float32 original, same rows


def test_front_end_is_kaldi_fbank_padded_to_1024_frames_then_normalised():
    torch.manual_seed(1)
    clip = torch.randn(7 * SECOND) * 0.1 + 0.3  # an offset: the front end removes the clip's mean
    spectrogram = eat.fbank_input(torch.nn.functional.pad(clip, (0, 3 * SECOND))[None], torch.tensor([7 * SECOND]))
    fbank = torchaudio.compliance.kaldi.fbank((clip - clip.mean())[None], htk_compat=True, sample_frequency=16000,
                                              use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
                                              frame_shift=10)
    frames = 1 + (7 * SECOND - 400) // 160
    assert spectrogram.shape == (1, 1, 1024, 128) and fbank.shape == (frames, 128)
    assert torch.allclose(spectrogram[0, 0, :frames], (fbank + 4.268) / 9.138, atol=1e-6)
    assert torch.allclose(spectrogram[0, 0, frames:], torch.full((1024 - frames, 128), 4.268 / 9.138))
    short = eat.fbank_input(torch.zeros(1, 10 * SECOND), torch.tensor([300]))  # shorter than one 25 ms window
    assert torch.allclose(short, torch.full_like(short, 4.268 / 9.138))


def test_padding_in_a_batch_does_not_change_an_embedding(random_eat):
    torch.manual_seed(2)
    clip, other = torch.randn(7 * SECOND), torch.randn(12 * SECOND)
    with torch.no_grad():
        alone = random_eat(clip[None], torch.tensor([7 * SECOND]))
        batch = random_eat(torch.stack([torch.nn.functional.pad(clip, (0, 5 * SECOND)), other]),
                           torch.tensor([7 * SECOND, 12 * SECOND]))
    assert alone.shape == (1, 768) and batch.shape == (2, 768)
    assert torch.allclose(batch[0], alone[0], atol=1e-5)
    assert not torch.allclose(batch[1], alone[0], atol=1e-2)


def test_a_25_s_clip_is_the_mean_of_its_three_segments(random_eat):
    torch.manual_seed(3)
    clip = torch.randn(25 * SECOND)
    pieces = torch.nn.functional.pad(clip, (0, 5 * SECOND)).view(3, 10 * SECOND)  # 0-10 s, 10-20 s, 20-25 s
    with torch.no_grad():
        whole = random_eat(clip[None], torch.tensor([25 * SECOND]))
        parts = random_eat(pieces, torch.tensor([10 * SECOND, 10 * SECOND, 5 * SECOND]))
    assert torch.allclose(whole[0], parts.mean(dim=0), atol=1e-5)


def test_every_parameter_reaches_the_embedding(random_eat):
    random_eat.zero_grad()
    random_eat(torch.randn(1, SECOND), torch.tensor([SECOND])).square().sum().backward()
    untouched = [name for name, p in random_eat.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    random_eat.zero_grad()
    assert untouched == []


def test_both_published_layouts_load_strictly_and_give_the_same_numbers(published):
    port = audio_backbones.build("eat", weights=str(published.folder)).eval()
    original = audio_backbones.build("eat", weights=str(published.checkpoint)).eval()
    assert port.weights_source == str(published.folder / "model.safetensors")
    assert original.weights_source == str(published.checkpoint)
    assert not published.marker.exists()  # the pickled object in the original's cfg did not run
    state = published.state
    for model in (port, original):
        assert torch.equal(model.patch_embed.weight, state["model.local_encoder.proj.weight"])
        assert torch.equal(model.cls_token, state["model.extra_tokens"])
        assert torch.equal(model.input_norm.bias, state["model.pre_norm.bias"])
        assert torch.equal(model.blocks[3].qkv.weight, state["model.blocks.3.attn.qkv.weight"])
        assert torch.equal(model.blocks[11].attention_norm.weight, state["model.blocks.11.norm1.weight"])
        assert torch.equal(model.blocks[5].output.bias, state["model.blocks.5.mlp.fc2.bias"])
        assert torch.equal(model.positions, state["model.fixed_positional_encoder.positions"][:, :512])
    ours, theirs = port.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    spectrogram = torch.randn(1, 1, 1024, 128)
    with torch.no_grad():
        assert torch.equal(port.encode(spectrogram), original.encode(spectrogram))


def test_a_hub_id_loads_offline_from_the_hugging_face_cache(monkeypatch, tmp_path, published):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--dcase-t6-test--eat"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (snapshot / name).symlink_to(published.folder / name)
    model = audio_backbones.build("eat", weights="dcase-t6-test/eat")
    assert model.weights_source == str(snapshot / "model.safetensors")
    assert torch.equal(model.blocks[7].hidden.weight, published.state["model.blocks.7.mlp.fc1.weight"])


def test_download_uses_the_original_file_put_in_the_cache(monkeypatch, tmp_path, published):
    monkeypatch.setenv("DCASE_T6_CACHE", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "EAT-base_epoch30_pt.pt").symlink_to(published.checkpoint)
    model = audio_backbones.build("eat")  # weights="download": no network needed
    assert model.weights_source == str(tmp_path / "weights" / "EAT-base_epoch30_pt.pt")
    assert torch.equal(model.cls_token, published.state["model.extra_tokens"])


def test_failed_download_names_the_hub_id_the_url_and_where_to_put_the_file(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("DCASE_T6_CACHE", str(tmp_path))
    monkeypatch.setattr(eat, "HUB_ID", "dcase-t6-test/absent")
    with pytest.raises(UserError) as caught:
        audio_backbones.build("eat", weights="download")
    message = str(caught.value)
    assert "\n" not in message and "dcase-t6-test/absent" in message and eat.FAIRSEQ_URL in message
    assert str(tmp_path / "weights" / "EAT-base_epoch30_pt.pt") in message and "--audio-weights" in message


def one_line_refusal(weights, match):
    with pytest.raises(UserError, match=match) as caught:
        audio_backbones.build("eat", weights=str(weights))
    message = str(caught.value)
    assert "\n" not in message and str(weights) in message
    return message


def test_files_of_other_models_are_refused_in_one_line(tmp_path, published):
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pt")
    message = one_line_refusal(tmp_path / "other.pt", "not the EAT-base checkpoint")
    assert eat.HUB_ID in message and eat.FAIRSEQ_URL in message
    partial = tmp_path / "partial"
    partial.mkdir()
    save_file({"model.extra_tokens": torch.zeros(1, 1, 768)}, str(partial / "model.safetensors"))
    one_line_refusal(partial, "149 missing keys, e.g. model.blocks.0.attn.proj.bias")
    large = tmp_path / "large"
    large.mkdir()
    (large / "model.safetensors").symlink_to(published.folder / "model.safetensors")
    (large / "config.json").write_text(json.dumps(port_config() | {"embed_dim": 1024, "depth": 24}))
    one_line_refusal(large, "not EAT-base \\(embed_dim is 1024")
    learned = dict(published.state)
    learned["model.fixed_positional_encoder.positions"] = torch.randn(1, 6144, 768)
    torch.save(learned, tmp_path / "learned-positions.pt")
    one_line_refusal(tmp_path / "learned-positions.pt", "not EAT's fixed sin-cos table")
    extra = {"model.extra_tokens": torch.zeros(1, 1, 768), "model.decoder.proj.weight": torch.zeros(2)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    one_line_refusal(tmp_path / "extra.safetensors", "1 unexpected keys, e.g. model.decoder.proj.weight")
    (tmp_path / "empty").mkdir()
    one_line_refusal(tmp_path / "empty", "no model.safetensors in this folder")
    one_line_refusal(tmp_path / "absent.pt", "weights file not found")


def test_pickled_objects_are_never_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"cfg": {"x": Blocked(marker)}, "model": {}}, tmp_path / "blocked.pt")
    one_line_refusal(tmp_path / "blocked.pt", "cannot be read safely, refused")
    torch.save({"model": {"modality_encoders.IMAGE.extra_tokens": Tripwire(marker)}}, tmp_path / "object.pt")
    one_line_refusal(tmp_path / "object.pt", "not the EAT-base checkpoint")
    assert not marker.exists()
    content = weights.read_checkpoint(tmp_path / "object.pt", "get another file")
    assert content == {"model": {}} and not marker.exists()  # the object is dropped, its code never ran
