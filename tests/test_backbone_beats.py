"""The ``beats`` backbone: published checkpoint layout, front end and position buckets against their formulas,
padding that never changes an embedding, the 10 s segments, and clear failures for wrong or missing weights."""

import math

import numpy as np
import pytest
import torch

from dcase_t6.common.errors import UserError
from dcase_t6.models import audio as audio_backbones
from dcase_t6.models.audio import beats

SECOND = beats.SAMPLE_RATE
# The cfg of the published checkpoint as saved: the architecture plus training-only entries.
PUBLISHED_CFG = dict(beats.PUBLISHED_CONFIG, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                     dropout_input=0.0, encoder_layerdrop=0.05, layer_wise_gradient_decay_ratio=0.6)


@pytest.fixture(scope="module")
def random_beats():
    torch.manual_seed(7)
    return audio_backbones.build("beats", weights="random").eval()


def embed(model, *clips: torch.Tensor) -> torch.Tensor:
    """Embeddings of clips of any lengths, zero-padded into one batch."""
    lengths = torch.tensor([len(clip) for clip in clips])
    batch = torch.zeros(len(clips), int(lengths.max()))
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = clip
    with torch.no_grad():
        return model(batch, lengths)


def test_beats_is_a_16_khz_768_d_backbone_of_90_m_parameters(random_beats):
    assert audio_backbones.sample_rate("beats") == 16000 and "beats" in audio_backbones.available()
    assert random_beats.output_dim == 768
    assert sum(p.numel() for p in random_beats.parameters()) == 90_311_792  # as the reference BEATs_iter3+ model
    assert not hasattr(random_beats.net, "predictor") or random_beats.net.predictor is None
    assert embed(random_beats, torch.randn(3 * SECOND), torch.randn(SECOND)).shape == (2, 768)


def kaldi_fbank_from_its_definition(waveform: np.ndarray) -> np.ndarray:
    """128-bin Kaldi fbank of 16 kHz audio in [-1, 1] scaled to 16-bit range, written from Kaldi's recipe:
    25 ms frames every 10 ms (no edge padding), DC removal, pre-emphasis 0.97, Povey window, 512-point power
    spectrum, triangular filters equally spaced on 1127 ln(1 + f / 700) from 20 Hz to Nyquist, natural log."""
    signal = waveform.astype(np.float64) * 2 ** 15
    length, shift, fft = 400, 160, 512
    count = 1 + (len(signal) - length) // shift
    frames = np.stack([signal[i * shift: i * shift + length] for i in range(count)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / (length - 1))) ** 0.85
    power = np.abs(np.fft.rfft(frames, n=fft)) ** 2  # (frames, 257)

    def mel(frequency):
        return 1127.0 * np.log(1.0 + frequency / 700.0)

    low, high = mel(20.0), mel(8000.0)
    step = (high - low) / (128 + 1)
    bin_mel = mel(np.arange(fft // 2) * 16000 / fft)  # Kaldi leaves out the Nyquist bin
    filters = np.zeros((128, fft // 2 + 1))
    for band in range(128):
        left, centre, right = low + band * step, low + (band + 1) * step, low + (band + 2) * step
        rising, falling = (bin_mel - left) / (centre - left), (right - bin_mel) / (right - centre)
        filters[band, : fft // 2] = np.clip(np.minimum(rising, falling), 0.0, None)
    return np.log(np.maximum(power @ filters.T, np.finfo(np.float32).eps))


def test_front_end_is_the_normalised_kaldi_fbank_of_the_paper():
    torch.manual_seed(0)
    waveform = torch.randn(SECOND) * 0.1
    got = beats.BEATsModel.preprocess(waveform[None])[0]
    expected = (kaldi_fbank_from_its_definition(waveform.numpy()) - 15.41663) / (2 * 6.55582)
    assert got.shape == (98, 128) == expected.shape
    assert np.abs(got.numpy() - expected).max() < 1e-4  # float32 against float64


def bucket_from_the_formula(relative: int, buckets: int = 320, max_distance: int = 800) -> int:
    """T5 bidirectional bucketing: half the buckets per direction (keys after the query get the upper half);
    distances below a quarter of the buckets exactly, then logarithmic bins up to ``max_distance``."""
    half = buckets // 2
    exact = half // 2
    distance = abs(relative)
    if distance < exact:
        bucket = distance
    else:
        spread = math.log(distance / exact) / math.log(max_distance / exact) * (half - exact)
        bucket = min(half - 1, exact + int(spread))
    return bucket + (half if relative > 0 else 0)


def test_relative_position_buckets_follow_the_formula():
    relative = torch.arange(-2000, 2001)
    got = beats.relative_position_bucket(relative, 320, 800).tolist()
    assert got == [bucket_from_the_formula(r) for r in relative.tolist()]
    assert got[2000] == 0 and got[2000 + 79] == 160 + 79 and got[2000 - 800] == 159 and got[-1] == 319


@pytest.mark.parametrize("fine_tuned", [False, True])
def test_published_checkpoint_layout_loads_strictly_and_gives_the_same_numbers(random_beats, tmp_path, fine_tuned):
    state = dict(random_beats.net.state_dict())
    cfg = dict(PUBLISHED_CFG, finetuned_model=fine_tuned)
    if fine_tuned:  # an AudioSet fine-tuned checkpoint also has the classifier and its labels
        state.update({"predictor.weight": torch.randn(527, 768), "predictor.bias": torch.zeros(527)})
        cfg.update(predictor_class=527, predictor_dropout=0.0)
    for key in ("patch_embedding.weight", "post_extract_proj.weight", "layer_norm.weight", "encoder.layer_norm.bias",
                "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "encoder.layers.0.self_attn.grep_a",
                "encoder.layers.11.self_attn.relative_attention_bias.weight", "encoder.layers.5.fc1.weight"):
        assert key in state
    assert len(state) == (252 if fine_tuned else 250)  # the reference model's state dict
    path = tmp_path / "BEATs_iter3_plus_AS2M.pt"
    torch.save({"cfg": cfg, "model": state, **({"label_dict": {0: "Speech"}} if fine_tuned else {})}, path)

    loaded = audio_backbones.build("beats", weights=str(path)).eval()
    assert loaded.weights_source == str(path) and loaded.net.predictor is None
    assert not any(name.startswith("predictor.") for name in loaded.state_dict())
    assert all(torch.equal(value, state[key]) for key, value in loaded.net.state_dict().items())
    clip = torch.randn(2 * SECOND)
    assert torch.equal(embed(loaded, clip), embed(random_beats, clip))


def test_a_seven_second_clip_gives_the_same_embedding_alone_and_padded_in_a_batch(random_beats):
    torch.manual_seed(1)
    clip, longer = torch.randn(7 * SECOND) * 0.1, torch.randn(8 * SECOND) * 0.1
    alone = embed(random_beats, clip)
    batched = embed(random_beats, longer, clip)
    assert torch.allclose(alone[0], batched[1], atol=1e-5)
    with torch.no_grad():  # the mean over every token of the unpadded clip's last-layer features
        tokens = random_beats.net.extract_features(random_beats.net.preprocess(clip[None]))
    assert tokens.shape == (1, 43 * 8, 768)  # 698 frames: 43 whole time patches x 8 frequency patches
    assert torch.allclose(alone[0], tokens[0].mean(0), atol=1e-5)


def test_padding_mask_covers_the_frames_beyond_each_segment():
    lengths = torch.tensor([7 * SECOND, 10 * SECOND, 100])
    mask = beats.token_padding_mask(lengths, time_patches=62, frequency_patches=8)
    assert mask.shape == (3, 496)
    assert (~mask).sum(1).tolist() == [43 * 8, 62 * 8, 8]  # a segment too short for one patch keeps one
    assert not mask[0, : 43 * 8].any() and mask[0, 43 * 8:].all()


def test_a_25_second_clip_is_the_mean_of_its_three_segment_embeddings(random_beats):
    torch.manual_seed(2)
    clip = torch.randn(25 * SECOND) * 0.1
    whole = embed(random_beats, clip)
    parts = torch.cat([embed(random_beats, clip[start * SECOND: (start + 10) * SECOND]) for start in (0, 10, 20)])
    assert torch.allclose(whole[0], parts.mean(0), atol=1e-5)


def one_line_error(weights: str) -> str:
    with pytest.raises(UserError) as caught:
        audio_backbones.build("beats", weights=weights)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_file_of_another_model_is_refused_in_one_line(tmp_path):
    passt_like = tmp_path / "passt-s-f128-p16-s16-ap.468.pt"
    torch.save({"patch_embed.proj.weight": torch.zeros(768, 1, 16, 16), "head.1.bias": torch.zeros(527)}, passt_like)
    message = one_line_error(str(passt_like))
    assert str(passt_like) in message and "not a BEATs checkpoint" in message and beats.WEIGHTS_FILE in message

    wrong_state = tmp_path / "wrong-state.pt"
    torch.save({"cfg": PUBLISHED_CFG, "model": {"patch_embed.proj.weight": torch.zeros(1)}}, wrong_state)
    message = one_line_error(str(wrong_state))
    assert str(wrong_state) in message and "Missing key" in message and beats.WEIGHTS_FILE in message

    tokenizer_like = tmp_path / "Tokenizer_iter3_plus_AS2M.pt"
    torch.save({"cfg": {"quant_n": 1024, "quant_dim": 256}, "model": {}}, tokenizer_like)
    assert "not a BEATs model cfg" in one_line_error(str(tokenizer_like))

    html = tmp_path / "download.pt"
    html.write_text("<!DOCTYPE html><html>OneDrive</html>")
    assert "not a readable BEATs checkpoint" in one_line_error(str(html))
    assert "weights file not found" in one_line_error(str(tmp_path / "absent.pt"))


def test_failed_download_names_the_url_and_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DCASE_T6_CACHE", str(tmp_path))
    url = "http://127.0.0.1:9/share/BEATs/BEATs_iter3_plus_AS2M.pt?sv=2021&sig=abc%3D"
    monkeypatch.setattr(beats, "WEIGHTS_URL", url)
    message = one_line_error("download")
    assert url in message and "--audio-weights" in message
    assert str(tmp_path / "weights" / "BEATs_iter3_plus_AS2M.pt") in message
