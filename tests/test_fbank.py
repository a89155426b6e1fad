"""The batched Kaldi fbank equals torchaudio's one-waveform ``kaldi.fbank`` row by row, and BEATs' and EAT's
front ends equal the per-segment loops they replaced."""

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from dcase_t6.models.audio import beats, eat
from dcase_t6.models.audio.fbank import frame_count, kaldi_fbank

SECOND = 16000


def clips(count: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Noise plus a tone and a DC offset, a different loudness per row (fbank's log range is exercised)."""
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(samples) / SECOND
    noise = torch.randn(count, samples, generator=generator)
    tone = torch.sin(2 * torch.pi * (200 + 300 * torch.arange(count)[:, None]) * time)
    return (0.1 * noise + 0.5 * tone + 0.05) * torch.logspace(-3, 0, count)[:, None]


@pytest.mark.parametrize("window", ["povey", "hanning"])
@pytest.mark.parametrize("samples", [400, 401, 560, 2 * SECOND + 123])
def test_each_row_equals_torchaudio_on_that_row_alone(window, samples):
    waveforms = clips(4, samples) * 2 ** 15
    got = kaldi_fbank(waveforms, 128, window)
    assert got.shape == (4, frame_count(samples), 128) and got.shape[1] == (samples - 400) // 160 + 1
    for row, waveform in enumerate(waveforms):
        expected = kaldi.fbank(waveform[None], num_mel_bins=128, window_type=window, dither=0.0)
        assert torch.allclose(got[row], expected, atol=2e-4, rtol=1e-5), (got[row] - expected).abs().max()


def test_silence_is_floored_at_epsilon_and_a_short_input_has_no_frame():
    assert torch.equal(kaldi_fbank(torch.zeros(1, 800)), torch.full((1, 3, 128), torch.finfo(torch.float32).eps).log())
    assert kaldi_fbank(torch.ones(3, 399)).shape == (3, 0, 128)
    assert frame_count(torch.tensor([0, 399, 400, 559, 560])).tolist() == [0, 0, 1, 1, 2]


def test_beats_front_end_equals_the_per_segment_loop():
    waveforms = clips(3, 10 * SECOND, seed=1)
    got = beats.BEATsModel.preprocess(waveforms)
    expected = torch.stack([kaldi.fbank(w[None] * 2 ** 15, num_mel_bins=128, sample_frequency=16000,
                                        frame_length=25, frame_shift=10) for w in waveforms])
    assert got.shape == (3, 998, 128)
    assert torch.allclose(got, (expected - 15.41663) / (2 * 6.55582), atol=2e-5)


def eat_input_per_segment(cut: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """EAT's input as it was computed before batching: torchaudio on each segment's true samples."""
    spectrograms = cut.new_zeros(len(cut), 1024, 128)
    for row, length in enumerate(lengths.tolist()):
        if length < 400:
            continue
        samples = cut[row, :length]
        fbank = kaldi.fbank((samples - samples.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                            window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)[:1024]
        spectrograms[row, : len(fbank)] = fbank
    return ((spectrograms + 4.268) / (2 * 4.569)).unsqueeze(1)


@pytest.mark.parametrize("width", [10 * SECOND, 300, 11 * SECOND])
def test_eat_front_end_equals_the_per_segment_loop_whatever_the_padding(width):
    lengths = torch.tensor([width, min(width, 7 * SECOND + 37), min(width, 399), min(width, 400), 0])
    cut = clips(5, width, seed=2) * (torch.arange(width) < lengths[:, None])
    got = eat.fbank_input(cut, lengths)
    assert got.shape == (5, 1, 1024, 128)
    assert torch.allclose(got, eat_input_per_segment(cut, lengths), atol=2e-5)
    # padding added by batching changes nothing
    wider = torch.nn.functional.pad(cut, (0, 5 * SECOND))
    assert torch.allclose(eat.fbank_input(wider, lengths), got, atol=1e-6)
