"""Structured patchout: one PaSST training step (forward + backward + AdamW) with the baseline's patchout
(15 time columns, 2 frequency rows dropped: 282 of 496 patches per 10 s segment) and without it, in one
run, with the ratio; and the parameter count of the default model (PaSST + roberta-large architecture,
projections to 1024-d) with and without the parameters that never reach the loss (PaSST's two AudioSet
classifier heads, RoBERTa's pooler).

Random weights (the compute is the same as with the published ones); audio: Clotho-like clips of 20-30 s
(three 10 s segments each). On CUDA the step runs under fp16 autocast as the baseline trains. ``--write-docs``
puts the step times into this script's block of docs/speed.md.

    .venv/bin/python benchmarks/bench_patchout.py [--quick] [--batch N] [--write-docs]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import _published
from dcase_t6.models.audio import passt

SECOND = passt.SAMPLE_RATE


def step_seconds(backbone: torch.nn.Module, waveforms: torch.Tensor, lengths: torch.Tensor, repeats: int) -> float:
    """Median wall time of one training step of the backbone alone (a linear head stands in for the rest)."""
    head = torch.nn.Linear(backbone.output_dim, 8).to(waveforms.device)
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=1e-5)
    backbone.train()
    device = waveforms.device.type
    times = []
    for repeat in range(repeats + 1):  # the first step warms up (allocations, kernel choice)
        _synchronise(device)
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
            loss = head(backbone(waveforms, lengths)).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronise(device)
        if repeat:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronise(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def parameter_counts() -> tuple[int, int, int, int]:
    """(PaSST with heads, PaSST as trained, roberta-large with pooler, roberta-large as trained); RoBERTa on the
    meta device (no memory)."""
    import contextlib
    import io

    from hear21passt.models.passt import get_model
    from transformers import RobertaConfig, RobertaModel

    from dcase_t6.models.text import ROBERTA_LARGE_SIZES

    large = RobertaConfig(**ROBERTA_LARGE_SIZES, pad_token_id=1)
    with contextlib.redirect_stdout(io.StringIO()):  # hear21passt prints the whole model
        published = get_model(arch=passt.ARCH, pretrained=False, fstride=16, tstride=16, input_tdim=1000)
    with_heads = sum(p.numel() for p in published.parameters())
    heads = sum(p.numel() for p in [*published.head.parameters(), *published.head_dist.parameters()])
    with torch.device("meta"):
        with_pooler = sum(p.numel() for p in RobertaModel(large, add_pooling_layer=True).parameters())
        without_pooler = sum(p.numel() for p in RobertaModel(large, add_pooling_layer=False).parameters())
    return with_heads, with_heads - heads, with_pooler, without_pooler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer timed steps.")
    parser.add_argument("--batch", type=int, default=None, help="Clips per step (default 2 on CPU, 64 on CUDA).")
    _published.add_option(parser)
    arguments = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = arguments.batch or (64 if device.type == "cuda" else 2)
    repeats = 2 if arguments.quick else 4
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(20 * SECOND, 30 * SECOND + 1, (batch,), generator=generator)
    waveforms = 0.1 * torch.randn(batch, 30 * SECOND, generator=generator)
    waveforms, lengths = waveforms.to(device), lengths.to(device)

    timings = {}
    for label, (t, f) in {"patchout 15/2 (baseline)": (15, 2), "no patchout": (0, 0)}.items():
        torch.manual_seed(0)
        backbone = passt.PaSST(weights="random", patchout_t=t, patchout_f=f).to(device)
        timings[label] = step_seconds(backbone, waveforms, lengths, repeats)
        del backbone
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"PaSST training step, {batch} clips of 20-30 s (3 segments each), {name}:")
    for label, seconds in timings.items():
        print(f"  {label:<26} {seconds:8.3f} s/step")
    ratio = timings["no patchout"] / timings["patchout 15/2 (baseline)"]
    print(f"  ratio no patchout / patchout: {ratio:.2f}x  (tokens per segment: 498 / 284 = {498 / 284:.2f}x)")

    passt_full, passt_trained, roberta_full, roberta_trained = parameter_counts()
    projections = (768 * 1024 + 1024) + (1024 * 1024 + 1024) + 1  # audio, text projection; log temperature
    before, after = passt_full + roberta_full + projections, passt_trained + roberta_trained + projections
    print("default model parameters (PaSST + roberta-large + projections):")
    print(f"  before (PaSST heads + RoBERTa pooler): {before:,}")
    print(f"  after  (as trained and registered):    {after:,}  (-{before - after:,}: heads "
          f"{passt_full - passt_trained:,}, pooler {roberta_full - roberta_trained:,})")
    patchout, plain = timings["patchout 15/2 (baseline)"], timings["no patchout"]
    row = _published.Row(
        f"PaSST training step, {batch} clips of 20-30 s, structured patchout 15/2 vs none (`bench_patchout.py`)",
        f"{patchout:.{1 if patchout >= 1 else 3}f} s vs {plain:.{1 if plain >= 1 else 3}f} s per step: patchout "
        f"{ratio:.2f}x faster ({498 / 284:.2f}x fewer tokens; attention is quadratic in them)",
        "the baseline's regulariser, and faster")
    _published.finish(__file__, [row], arguments.write_docs, _published.device_note(device))


if __name__ == "__main__":
    main()
