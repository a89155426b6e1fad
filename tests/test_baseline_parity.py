"""Parity with the DCASE 2025 baseline (CPJKU/dcase2025_task6_baseline): its loss formula, its PaSST built the
way it builds it with the same weights, its caption normalisation on the real dev-test queries, its text
encoder settings; and the real architectures train with every parameter reaching the loss (DDP's condition)."""

import string

import numpy as np
import pandas
import pytest
import torch

from dcase_t6.models import DualEncoder, ModelConfig
from dcase_t6.models import audio as audio_backbones
from dcase_t6.models.audio import passt
from dcase_t6.models.text import TextEncoder, TextSettings, normalise_caption
from dcase_t6.training.losses import multi_positive_infonce
from helpers.data import DEVTEST_RELEVANCE

SECOND = passt.SAMPLE_RATE


def baseline_loss(audio, text, tau, datasets, subsets, file_names):
    """The baseline's training_step, formula for formula."""
    similarity = torch.matmul(audio, text.T) / abs(tau)
    over_audios, over_captions = torch.log_softmax(similarity, dim=0), torch.log_softmax(similarity, dim=1)
    paths = np.array([hash(d + s + p) for d, s, p in zip(datasets, subsets, file_names)])
    positives = torch.tensor(paths[None, :] == paths[:, None])
    return -0.5 * (over_audios[torch.where(positives)].mean() + over_captions[torch.where(positives)].mean())


def test_contrastive_loss_equals_the_baselines_formula():
    generator = torch.Generator().manual_seed(0)
    audio = torch.nn.functional.normalize(torch.randn(8, 16, generator=generator), dim=1)
    text = torch.nn.functional.normalize(torch.randn(8, 16, generator=generator), dim=1)
    files = ["a.wav", "b.wav", "a.wav", "c.wav", "d.wav", "b.wav", "e.wav", "a.wav"]  # repeated clips: multi-positive
    ids = torch.tensor([sorted(set(files)).index(name) for name in files])
    expected = baseline_loss(audio, text, 0.05, ["clotho"] * 8, ["train"] * 8, files)
    assert multi_positive_infonce(audio, text, ids, ids, 0.05).item() == pytest.approx(expected.item(), abs=1e-6)


def baseline_passt(patchout_t: int = 15, patchout_f: int = 2):
    """hear21passt's model and mel front end, constructed with the baseline's arguments (but pretrained=False:
    the weights are copied in from our model instead of downloaded)."""
    from hear21passt.base import AugmentMelSTFT, get_model_passt

    net = get_model_passt("passt_s_p16_s16_128_ap468", pretrained=False, input_tdim=1000, fstride=16, tstride=16,
                          s_patchout_t=patchout_t, s_patchout_f=patchout_f)
    mel = AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024, freqm=0, timem=0, htk=False,
                         fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000)
    return net, mel


def baseline_audio_embeddings(net, mel, audio: torch.Tensor, durations: list[float]) -> torch.Tensor:
    """The baseline's forward_audio before the projection: 30 s padded audio cut into 10 s segments, each through
    mel + PaSST (the mean of CLS and distillation tokens), then 1, 2 or 3 segments averaged by duration."""
    segment = 10 * SECOND
    segments = torch.stack([audio[:, start:start + segment]
                            for start in range(0, audio.shape[1] - segment + 1, segment)])
    with torch.no_grad():
        features = net(mel(segments.reshape(-1, segment))[:, None])[-1]
    features = features.view(len(segments), len(audio), -1).permute(1, 0, 2)
    return torch.stack([features[i, 0] if d <= 10 else features[i, :2].mean(-2) if d <= 20 else features[i].mean(-2)
                        for i, d in enumerate(durations)])


@pytest.mark.slow
def test_passt_eval_embeddings_equal_the_baselines_passt_with_the_same_weights():
    torch.manual_seed(0)
    ours = audio_backbones.build("passt", weights="random").eval()
    net, mel = baseline_passt()
    missing, unexpected = net.load_state_dict(ours.net.state_dict(), strict=False)
    assert not unexpected and sorted({key.split(".")[0] for key in missing}) == ["head", "head_dist"]
    net.eval(), mel.eval()
    durations = [5.0, 15.0, 25.0]  # one, two and three segments
    generator = torch.Generator().manual_seed(1)
    clips = [0.1 * torch.randn(int(d * SECOND), generator=generator) for d in durations]
    padded = torch.zeros(len(clips), 30 * SECOND)
    for row, clip in enumerate(clips):
        padded[row, :len(clip)] = clip
    expected = baseline_audio_embeddings(net, mel, padded, durations)
    with torch.no_grad():
        actual = ours(padded[:, :25 * SECOND], torch.tensor([len(clip) for clip in clips]))
    assert torch.allclose(actual, expected, atol=2e-5), (actual - expected).abs().max()


def test_structured_patchout_drops_patches_in_training_only():
    backbone = audio_backbones.build("passt", weights="random")
    seen = []
    backbone.net.blocks[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[1]))
    clip, length = torch.zeros(1, 10 * SECOND), torch.tensor([10 * SECOND])
    with torch.no_grad():
        backbone.train()(clip, length)
        backbone.eval()(clip, length)
    assert seen == [2 + (8 - 2) * (62 - 15), 2 + 8 * 62]  # CLS + distillation token + 282 or 496 patches


def test_caption_normalisation_is_the_baselines_on_every_dev_test_query():
    queries = pandas.read_csv(DEVTEST_RELEVANCE)["query"].tolist()
    assert len(queries) == 1037
    baseline = [query.lower().translate(str.maketrans("", "", string.punctuation)) for query in queries]
    assert [normalise_caption(query) for query in queries] == baseline
    # white space is kept as the baseline keeps it: these queries would tokenise differently if collapsed
    assert sum(" ".join(text.split()) != text for text in baseline) == 5


def test_text_encoder_has_no_pooler_and_the_baselines_dropout(roberta_with_pooler):
    encoder = TextEncoder(TextSettings(str(roberta_with_pooler), dropout=0.2))
    assert encoder.model.pooler is None
    assert not [name for name, _ in encoder.named_parameters() if "pooler" in name]
    config = encoder.model.config
    assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == (0.2, 0.2)  # saved as 0.1
    assert {module.p for module in encoder.modules() if isinstance(module, torch.nn.Dropout)} == {0.2}


def test_dynamic_padding_gives_the_first_token_of_padding_to_max_length(roberta_with_pooler):
    """The baseline pads every caption to 32 tokens; we pad to the longest of the batch: same vectors."""
    encoder = TextEncoder(TextSettings(str(roberta_with_pooler))).eval()
    captions = ["a dog barks in the distance", "rain", "a bell rings twice while wind blows through the trees"]
    tokens = encoder.tokenizer([normalise_caption(c) for c in captions], padding="max_length", max_length=32,
                               truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = encoder.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])[0][:, 0]
        assert torch.allclose(encoder(captions), expected, atol=1e-5)


def test_every_trainable_parameter_of_passt_and_roberta_reaches_the_loss(roberta_with_pooler):
    """What DDP requires: no PaSST classifier heads, no text pooler among the trained parameters."""
    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(backbone="passt", text_model=str(roberta_with_pooler), embed_dim=16),
                        audio_weights="random").train()
    audio, text = model(0.1 * torch.randn(2, 4 * SECOND), torch.tensor([4 * SECOND, 3 * SECOND]),
                        ["a dog barks", "rain falls"])
    multi_positive_infonce(audio, text, torch.arange(2), torch.arange(2), model.temperature).backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
