"""Batches beyond memory: a training step of the whole batch in chunks (config key ``grad_cache_chunk``, the gradient
cache of ``dcase_t6.training.grad_cache``) against the batch in one piece: step time and peak memory, and their ratios.

Model: tiny-cnn and the tiny random RoBERTa (random weights), trained in fp32 with AdamW, the baseline's contrastive
loss; audio: random clips. Each mode runs in a fresh child process (the same script with ``--child MODE``): one
warm-up step, then the timed steps (median). On a CPU the child computes on one thread and a step's time is the CPU
time it took (the machine's load from other processes does not enter; the cores' parallelism within small chunks
neither); on a GPU it is the wall time. Memory: on a CPU the growth of the process's peak resident memory
(``ru_maxrss``) during the steps over its resident memory before them (the step's activations, gradients and
optimizer state; the model and libraries are left out); on a GPU the peak of ``torch.cuda.max_memory_allocated``
over the memory allocated before the steps. The same gradients in both modes are what ``tests/test_grad_cache.py``
checks; here only time and memory. ``--write-docs`` puts the figures into this script's block of docs/speed.md.

    .venv/bin/python benchmarks/bench_grad_cache.py [--batch 32] [--chunk 8] [--seconds 3] [--steps 3] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

import _published
from dcase_t6.models import DualEncoder, ModelConfig
from dcase_t6.runs.config import TrainConfig
from dcase_t6.training.data import TrainingBatch
from dcase_t6.training.distributed import World
from dcase_t6.training.grad_cache import BatchPlan, StepParts, backward_batch
from dcase_t6.training.objective import build_objective

WORDS = "a dog barks rain falls on the roof bell rings wind blows through trees people talk car passes".split()


def random_batch(size: int, samples: int) -> TrainingBatch:
    """``size`` random clips of up to ``samples`` samples and captions of 6-12 words; every pair its own clip."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(samples // 2, samples + 1, (size,), generator=generator)
    words = torch.randint(len(WORDS), (size, 12), generator=generator).tolist()
    counts = torch.randint(6, 13, (size,), generator=generator).tolist()
    captions = [" ".join(WORDS[index] for index in row[:count]) for row, count in zip(words, counts)]
    ids = torch.arange(size)
    return TrainingBatch(0.1 * torch.randn(size, samples, generator=generator), lengths, captions, ids, ids,
                         torch.full((size,), -1))


def resident_bytes() -> int:
    """The process's resident memory now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(arguments: argparse.Namespace) -> dict:
    """One mode's timed steps in this process: seconds per step (median), and the memory the steps took."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DualEncoder(ModelConfig(backbone="tiny-cnn", text_model="tiny-random", embed_dim=64),
                        audio_weights="random").to(device).train()
    world = World(device=device)
    parts = StepParts(model, model, build_objective(TrainConfig(), world),
                      torch.amp.GradScaler(device.type, enabled=False), None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = random_batch(arguments.batch, int(arguments.seconds * model.sample_rate))
    plan = BatchPlan(arguments.chunk if arguments.child == "chunked" else None)
    before, peak_before = resident_bytes(), peak_resident_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    times = []
    for step in range(arguments.steps + 1):  # the first step warms up
        synchronise(device)
        start = clock()
        torch.manual_seed(step)
        backward_batch(parts, batch, plan)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronise(device)
        if step:
            times.append(clock() - start)
    if device.type == "cuda":
        grown, measurable = torch.cuda.max_memory_allocated(device) - before, True
    else:
        peak = peak_resident_bytes()
        grown, measurable = peak - before, peak > peak_before  # the steps set the process's peak
    return {"seconds": statistics.median(times), "memory": grown, "measurable": measurable, "device": str(device)}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_child(mode: str, arguments: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--batch", str(arguments.batch), "--chunk",
               str(arguments.chunk), "--seconds", str(arguments.seconds), "--steps", str(arguments.steps)]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode:
        raise SystemExit(f"the {mode} child failed:\n{finished.stderr[-2000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="Pairs per batch (default 32).")
    parser.add_argument("--chunk", type=int, default=8, help="Pairs per chunk (default 8).")
    parser.add_argument("--seconds", type=float, default=3.0, help="Seconds of audio per clip (default 3).")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per mode (default 3).")
    parser.add_argument("--child", choices=("whole", "chunked"), help=argparse.SUPPRESS)
    _published.add_option(parser)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(child(arguments)))
        return
    whole, chunked = run_child("whole", arguments), run_child("chunked", arguments)
    time_ratio = chunked["seconds"] / whole["seconds"]
    print(f"training step, tiny-cnn + tiny-random, batch {arguments.batch} of {arguments.seconds:g} s clips, "
          f"{whole['device']}{' (one thread, CPU time)' if whole['device'] == 'cpu' else ''}:")
    for label, result in (("batch in one piece", whole), (f"chunks of {arguments.chunk}", chunked)):
        print(f"  {label:<20} {result['seconds']:7.3f} s/step, memory {result['memory'] / 2**20:7.1f} MiB")
    print(f"  ratio chunked / one piece: time {time_ratio:.2f}x", end="")
    measured = whole["measurable"] and chunked["measurable"] and whole["memory"] > 0
    memory = f"peak memory {chunked['memory'] / whole['memory']:.2f}x ({chunked['memory'] / 2**20:.0f} MiB vs " \
             f"{whole['memory'] / 2**20:.0f} MiB{' allocated' if whole['device'] != 'cpu' else ' resident'})" \
        if measured else "peak memory not measured (the steps did not set the process's peak)"
    print(f", {memory}")
    row = _published.Row(
        f"training step in chunks of {arguments.chunk} (`grad_cache_chunk`) vs the batch in one piece, tiny-cnn + "
        f"tiny-random, batch {arguments.batch} of {arguments.seconds:g} s clips (`bench_grad_cache.py`)",
        f"{time_ratio:.2f}x the step time ({chunked['seconds']:.2f} s vs {whole['seconds']:.2f} s"
        f"{' of CPU time on one thread' if whole['device'] == 'cpu' else ''}); {memory}",
        "the same gradients; memory < 0.5x, time < 2x (one more forward pass per chunk)")
    _published.finish(__file__, [row], arguments.write_docs, _published.device_note(whole["device"]))


if __name__ == "__main__":
    main()
