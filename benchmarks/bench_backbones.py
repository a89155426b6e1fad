"""Embedding speed of the three audio backbones, PaSST (32 kHz), BEATs and EAT (16 kHz), in one run, as ratios to PaSST.

Each backbone embeds a batch of clips (default 4) of 10 s (one 10 s segment each) and of 25 s (three segments,
averaged) in eval mode, under ``torch.inference_mode``, from its waveform input (front end included): what
``embed`` and validation do per batch. Random weights (the published files cannot be downloaded here; the
compute is the same). The backbones take turns within each round, so a machine that is busier in one moment
slows all of them alike; the best of ``--repeats`` rounds counts (the first round also pays the first-call
allocations).

Printed: per backbone its sample rate and parameter count, then per clip length the best seconds per batch,
clips/s and the ratio of its clips/s to PaSST's (above 1: faster than PaSST). ``--write-docs`` puts them into
this script's block of docs/speed.md.

    .venv/bin/python benchmarks/bench_backbones.py [--quick] [--batch N] [--repeats N] [--device cpu|cuda]
        [--write-docs]

About 2-3 minutes on a 2-core CPU with the defaults (3 rounds); ``--quick`` is one round.
"""

from __future__ import annotations

import argparse
import time

import torch

import _published
from dcase_t6.models import audio as audio_backbones

BACKBONES = ("passt", "beats", "eat")
REFERENCE = "passt"
LENGTHS = (10.0, 25.0)


def batch_seconds(backbone: torch.nn.Module, waveforms: torch.Tensor, lengths: torch.Tensor) -> float:
    """Wall time of one eval-mode forward pass of a batch."""
    _synchronise(waveforms.device.type)
    start = time.perf_counter()
    with torch.inference_mode():
        backbone(waveforms, lengths)
    _synchronise(waveforms.device.type)
    return time.perf_counter() - start


def _synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clips(sample_rate: int, seconds: float, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of noise clips of ``seconds`` at ``sample_rate`` (the same draw for every backbone of that rate)."""
    samples = int(seconds * sample_rate)
    generator = torch.Generator().manual_seed(0)
    waveforms = 0.1 * torch.randn(batch, samples, generator=generator)
    return waveforms.to(device), torch.full((batch,), samples, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One round instead of --repeats.")
    parser.add_argument("--batch", type=int, default=4, help="Clips per batch (4).")
    parser.add_argument("--repeats", type=int, default=3, help="Rounds; the best counts (3).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="Where to run (cpu).")
    _published.add_option(parser)
    arguments = parser.parse_args()
    device = torch.device(arguments.device)
    repeats = 1 if arguments.quick else max(1, arguments.repeats)

    models, parameters = {}, {}
    for name in BACKBONES:
        torch.manual_seed(0)
        models[name] = audio_backbones.build(name, weights="random").to(device).eval()
        parameters[name] = sum(p.numel() for p in models[name].parameters())
    inputs = {(name, seconds): clips(models[name].sample_rate, seconds, arguments.batch, device)
              for name in BACKBONES for seconds in LENGTHS}

    best: dict[tuple[str, float], float] = {}
    for _ in range(repeats):
        for seconds in LENGTHS:
            for name in BACKBONES:
                elapsed = batch_seconds(models[name], *inputs[name, seconds])
                best[name, seconds] = min(elapsed, best.get((name, seconds), float("inf")))

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"audio backbones, eval-mode embedding of batches of {arguments.batch} clips, random weights, {where}, "
          f"best of {repeats}:")
    header = f"  {'backbone':<8} {'rate':>6} {'parameters':>12}"
    for seconds in LENGTHS:
        header += f" | {seconds:g} s clips: {'s/batch':>7} {'clips/s':>7} {'vs PaSST':>8}"
    print(header)
    for name in BACKBONES:
        row = f"  {name:<8} {models[name].sample_rate:>6} {parameters[name]:>12,}"
        for seconds in LENGTHS:
            rate = arguments.batch / best[name, seconds]
            ratio = best[REFERENCE, seconds] / best[name, seconds]
            row += f" | {'':>{len(f'{seconds:g} s clips:')}} {best[name, seconds]:>7.2f} {rate:>7.2f} {ratio:>7.2f}x"
        print(row)
    _published.finish(__file__, [published_row(best, arguments.batch)], arguments.write_docs,
                      _published.device_note(device))


def published_row(best: dict[tuple[str, float], float], batch: int) -> _published.Row:
    """PaSST's clips/s at each length, the others as ratios to PaSST's."""
    lengths = " / ".join(f"{seconds:g} s" for seconds in LENGTHS)
    measured = ["PaSST " + " / ".join(f"{batch / best[REFERENCE, seconds]:.2f}" for seconds in LENGTHS) + " clips/s"]
    for name, label in (("beats", "BEATs"), ("eat", "EAT")):
        measured.append(label + " " + " / ".join(f"{best[REFERENCE, seconds] / best[name, seconds]:.2f}x"
                                                 for seconds in LENGTHS))
    return _published.Row(f"backbones, eval-mode embedding, {batch} clips of {lengths} (`bench_backbones.py`)",
                          "; ".join(measured) + " PaSST's")


if __name__ == "__main__":
    main()
