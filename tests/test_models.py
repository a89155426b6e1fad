"""Backbones and text encoders: shapes, the baseline's segmenting, weight files and clear failures."""

import pytest
import torch

from dcase_t6.common.errors import UserError
from dcase_t6.models import DualEncoder, ModelConfig
from dcase_t6.models import audio as audio_backbones
from dcase_t6.models.audio import passt
from dcase_t6.models.text import TextEncoder, TextSettings, normalise_caption

SECOND = passt.SAMPLE_RATE


def published_passt_layout() -> torch.nn.Module:
    """hear21passt's own passt_s_p16_s16_128_ap468 with random weights: the layout of the release checkpoint."""
    from hear21passt.models.passt import get_model

    torch.manual_seed(3)
    return get_model(arch=passt.ARCH, pretrained=False, fstride=16, tstride=16)


@pytest.mark.parametrize(("seconds", "segments"), [(3, 1), (10, 1), (10.5, 2), (20, 2), (25, 3), (45, 3)])
def test_passt_uses_one_two_or_three_ten_second_segments(seconds, segments):
    lengths = torch.tensor([int(seconds * SECOND)])
    waveforms = torch.arange(lengths.item(), dtype=torch.float32)[None, :]
    cut, owners, counts = passt.segment_clips(waveforms, lengths)
    assert counts.tolist() == [segments] and owners.tolist() == [0] * segments
    assert cut.shape == (segments, 10 * SECOND)
    assert cut[0, 0] == 0 and cut[-1, 0] == (segments - 1) * 10 * SECOND  # segments start at 0 s, 10 s, 20 s


def test_passt_batch_of_clips_with_different_lengths():
    lengths = torch.tensor([5 * SECOND, 15 * SECOND])
    _, owners, counts = passt.segment_clips(torch.zeros(2, 15 * SECOND), lengths)
    assert owners.tolist() == [0, 1, 1] and counts.tolist() == [1, 2]


@pytest.fixture(scope="module")
def random_passt():
    return audio_backbones.build("passt", weights="random").eval()


def test_passt_random_weights_give_768_d_mean_of_segments(random_passt):
    clip = torch.randn(1, 12 * SECOND)
    with torch.no_grad():
        both = random_passt(clip, torch.tensor([12 * SECOND]))
        first = random_passt(clip[:, : 10 * SECOND], torch.tensor([10 * SECOND]))
        second = random_passt(torch.nn.functional.pad(clip[:, 10 * SECOND:], (0, 8 * SECOND)),
                              torch.tensor([2 * SECOND]))
    assert both.shape == (1, 768)
    assert torch.allclose(both, (first + second) / 2, atol=1e-5)


def test_passt_loads_a_local_weights_file_and_rejects_a_wrong_one(tmp_path):
    path = tmp_path / "passt.pt"
    published = published_passt_layout()
    torch.save(published.state_dict(), path)  # the release file's layout: hear21passt's model, heads included
    loaded = audio_backbones.build("passt", weights=str(path))
    assert torch.equal(loaded.net.blocks[3].attn.qkv.weight, published.blocks[3].attn.qkv.weight)
    assert not any(name.startswith(("head.", "head_dist.")) for name, _ in loaded.net.named_parameters())
    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="not the passt_s_p16_s16_128_ap468 checkpoint"):
        audio_backbones.build("passt", weights=str(tmp_path / "wrong.pt"))
    with pytest.raises(UserError, match="weights file not found"):
        audio_backbones.build("passt", weights=str(tmp_path / "absent.pt"))


def test_failed_download_names_the_url_and_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DCASE_T6_CACHE", str(tmp_path))
    monkeypatch.setattr(passt, "WEIGHTS_URL", "http://127.0.0.1:9/passt-s-f128-p16-s16-ap.468.pt")
    with pytest.raises(UserError) as caught:
        audio_backbones.build("passt", weights="download")
    message = str(caught.value)
    assert "http://127.0.0.1:9/passt-s-f128-p16-s16-ap.468.pt" in message
    assert str(tmp_path / "weights" / "passt-s-f128-p16-s16-ap.468.pt") in message and "--audio-weights" in message


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(UserError, match="choose one of beats, eat, passt, tiny-cnn"):
        audio_backbones.build("wav2vec")


def test_caption_normalisation_like_the_baseline():
    assert normalise_caption("A dog barks, then   STOPS!") == "a dog barks then   stops"


def test_text_model_from_a_local_folder_works_offline(tmp_path):
    encoder = TextEncoder(TextSettings("tiny-random", max_length=16))
    encoder.tokenizer.save_pretrained(tmp_path)
    encoder.model.save_pretrained(tmp_path)
    again = TextEncoder(TextSettings(str(tmp_path), max_length=16, dropout=None)).eval()
    encoder.eval()
    with torch.no_grad():
        assert torch.allclose(encoder(["a dog barks"]), again(["a dog barks"]))
    with pytest.raises(UserError, match="cannot load text model .*--text-model /path/to/folder"):
        TextEncoder(TextSettings(str(tmp_path / "missing")))


def test_frozen_text_encoder_remembers_captions_and_trains_nothing():
    encoder = TextEncoder(TextSettings("tiny-random", frozen=True))
    first = encoder(["A bell rings.", "a bell rings"])
    assert torch.equal(first[0], first[1]) and not first.requires_grad
    assert list(encoder.remembered) == ["a bell rings"]
    assert not any(p.requires_grad for p in encoder.parameters())


def test_dual_encoder_outputs_unit_vectors_in_a_shared_space():
    model = DualEncoder(ModelConfig(backbone="tiny-cnn", text_model="tiny-random", embed_dim=24), audio_weights=None)
    audio, text = model(torch.randn(3, 16000), torch.tensor([16000, 8000, 4000]), ["a", "b", "c"])
    assert audio.shape == text.shape == (3, 24)
    assert torch.allclose(audio.norm(dim=1), torch.ones(3)) and torch.allclose(text.norm(dim=1), torch.ones(3))
    assert model.temperature.item() == pytest.approx(0.05) and not model.log_temperature.requires_grad


def test_frozen_text_cache_is_bounded_and_gives_the_same_vectors():
    """Caption augmentation makes new captions every epoch: the cache keeps only the most recent ones."""
    encoder = TextEncoder(TextSettings("tiny-random", frozen=True), cache_size=8)
    fresh = TextEncoder(TextSettings("tiny-random", frozen=True), cache_size=1000)
    fresh.load_state_dict(encoder.state_dict())
    for epoch in range(5):
        captions = [f"caption {epoch} {index}" for index in range(6)] + ["a bell rings"]
        assert torch.allclose(encoder(captions), fresh(captions), atol=1e-6)
        assert len(encoder.remembered) <= 8
    assert len(fresh.remembered) == 31 and "a bell rings" in encoder.remembered  # recently used stays


def test_a_remembered_caption_holds_its_own_row_not_the_batch():
    """A cached row that were a view of last_hidden_state[:, 0] would keep the batch's (batch, tokens, hidden)
    states alive as long as any of its captions is remembered."""
    encoder = TextEncoder(TextSettings("tiny-random", frozen=True))
    captions = [f"a long caption number {index} about rain on a roof" for index in range(16)]
    vectors = encoder(captions)
    row = encoder.remembered[normalise_caption(captions[3])]
    assert row.shape == (encoder.output_dim,) and torch.equal(row, vectors[3])
    assert row.untyped_storage().nbytes() == encoder.output_dim * row.element_size()  # 32 floats: 128 bytes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tiny_cnn_front_end_is_finite_under_autocast_for_a_full_scale_tone(dtype):
    """A 1 kHz tone at amplitude 1.0 has a power spectrum peak of ~6.6e4, above fp16's largest value (65504):
    the mel front end runs in float32 with autocast off, as PaSST's does."""
    from dcase_t6.models.audio.tiny_cnn import TinyCNN

    backbone = TinyCNN()
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(16000) / 16000).unsqueeze(0)
    plain = backbone.logmel(tone)
    with torch.autocast("cpu", dtype=dtype):
        features = backbone.logmel(tone)
        embedding = backbone(tone, torch.tensor([16000]))
    assert features.dtype == torch.float32 and bool(torch.isfinite(features).all())
    assert torch.equal(features, plain) and bool(torch.isfinite(embedding).all())


def test_mean_of_segments_places_and_sums_each_clips_segments():
    """The deterministic formulation (no atomic index_add_ on CUDA) gives each clip the mean of its segments,
    and each segment the gradient 1 / its clip's segment count."""
    from dcase_t6.models.audio.segments import mean_of_segments, segment_clips

    _, owners, counts = segment_clips(torch.zeros(4, 30), torch.tensor([5, 25, 12, 30]), 10, 3)
    assert owners.tolist() == [0, 1, 1, 1, 2, 2, 3, 3, 3] and counts.tolist() == [1, 3, 2, 3]
    features = torch.arange(18, dtype=torch.float64).view(9, 2).requires_grad_()
    means = mean_of_segments(features, owners, counts)
    expected = torch.tensor([[0.0, 1.0], [4.0, 5.0], [9.0, 10.0], [14.0, 15.0]], dtype=torch.float64)
    assert torch.equal(means, expected)
    means.sum().backward()
    assert torch.allclose(features.grad[:, 0], torch.tensor([1, 1 / 3, 1 / 3, 1 / 3, 0.5, 0.5, 1 / 3, 1 / 3, 1 / 3],
                                                            dtype=torch.float64))
