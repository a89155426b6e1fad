"""Benchmark the batched Kaldi fbank (``models/audio/fbank.py``) against torchaudio's one-waveform
``kaldi.fbank`` called per segment, as BEATs and EAT did before: a training batch of 12 clips of 30 s is
36 segments of 10 s. Prints seconds per batch for both front ends, the ratio, and the largest difference;
``--write-docs`` puts them into this script's block of docs/speed.md.

    .venv/bin/python benchmarks/bench_fbank.py [--device cuda] [--write-docs]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchaudio.compliance.kaldi as kaldi

import _published
from dcase_t6.models.audio import eat
from dcase_t6.models.audio.fbank import kaldi_fbank

SEGMENTS, SAMPLES = 36, 160000


def per_segment_beats(cut: torch.Tensor) -> torch.Tensor:
    return torch.stack([kaldi.fbank(w[None] * 2 ** 15, num_mel_bins=128, sample_frequency=16000) for w in cut])


def per_segment_eat(cut: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    out = cut.new_zeros(len(cut), 1024, 128)
    for row, length in enumerate(lengths.tolist()):
        samples = cut[row, :length]
        fbank = kaldi.fbank((samples - samples.mean())[None], htk_compat=True, use_energy=False,
                            window_type="hanning", num_mel_bins=128, dither=0.0)
        out[row, : len(fbank)] = fbank
    return out


def seconds(function, device: str, repeats: int = 3) -> float:
    function()  # warm-up (mel banks, kernels)
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    _published.add_option(parser)
    arguments = parser.parse_args()
    device = arguments.device
    cut = 0.3 * torch.randn(SEGMENTS, SAMPLES, generator=torch.Generator().manual_seed(0))
    cut = cut.to(device)
    lengths = torch.full((SEGMENTS,), SAMPLES, device=device)
    lengths[::3] = SAMPLES // 2  # every third segment half padding
    cut = cut * (torch.arange(SAMPLES, device=device) < lengths[:, None])
    print(f"{SEGMENTS} segments of 10 s on {device} (torch threads: {torch.get_num_threads()})")
    ratios = {}
    for name, loop, batched in [
        ("BEATs", lambda: per_segment_beats(cut), lambda: kaldi_fbank(cut * 2 ** 15, 128, "povey")),
        ("EAT", lambda: per_segment_eat(cut, lengths), lambda: eat.fbank_input(cut, lengths)),
    ]:
        old, new = seconds(loop, device), seconds(batched, device)
        ratios[name] = old / new
        print(f"{name:6s} per segment {old * 1000:8.1f} ms   batched {new * 1000:8.1f} ms   ratio {old / new:5.1f}x")
    reference = per_segment_beats(cut)
    difference = (kaldi_fbank(cut * 2 ** 15) - reference).abs().max().item()
    print(f"largest |difference| (BEATs log fbank): {difference:.2e}")
    where = "this CPU" if device == "cpu" else device
    faster = "faster" if min(ratios.values()) >= 1 else "the per-segment speed (below 1x: slower)"
    equal = f"0 (BEATs, bit-equal on {where})" if difference == 0 else f"{difference:.1e} (BEATs)"
    row = _published.Row(
        f"BEATs / EAT front end, {SEGMENTS} segments of 10 s (`bench_fbank.py`): one batched Kaldi fbank vs "
        "torchaudio's `kaldi.fbank` per segment",
        f"BEATs {ratios['BEATs']:.1f}x, EAT {ratios['EAT']:.1f}x {faster}; largest difference {equal}; "
        "`tests/test_fbank.py` holds each row to torchaudio's within 2e-4", "faster, equal values")
    _published.finish(__file__, [row], arguments.write_docs, _published.device_note(device))


if __name__ == "__main__":
    main()
