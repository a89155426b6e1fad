"""Gradient checkpointing (config key ``gradient_checkpointing``): peak memory and time of one PaSST training step
(forward + backward + AdamW; random weights, structured patchout 15/2 as the baseline trains) without and with it,
and their ratios.

Each variant runs in a fresh subprocess, so that neither sees the other's memory. There the model, its gradients
and AdamW's state are allocated first (one step on zero gradients), then the peak resident memory is reset (Linux:
``/proc/self/clear_refs``), one step is run and the step's memory is its peak resident memory (``VmHWM``) less the
resident memory just before it: what the step itself needed (activations kept for the backward pass, temporaries).
glibc is told to return every freed block of 64 KiB or more to the system at once (``MALLOC_MMAP_THRESHOLD_``), so
that resident memory follows torch's CPU allocations. Where the peak cannot be reset, ``ru_maxrss`` (the process's
peak) less the memory before the step is used instead, and the output says so. Then more steps are timed (median):
on a CPU by the process's CPU time (``time.process_time``) with one thread (no threads spinning while they wait),
which a loaded machine does not inflate as it does wall time (shown too). On CUDA the step runs under fp16
autocast, is timed by wall time, and memory is ``torch.cuda.max_memory_allocated`` above the allocation before it.

    .venv/bin/python benchmarks/bench_checkpointing.py [--clips N] [--seconds S] [--steps N] [--write-docs]
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
from pathlib import Path

import torch

import _published
from dcase_t6.models.audio import passt, recompute

HERE = Path(__file__).resolve().parent
LABELS = {False: "without", True: "with gradient checkpointing"}


def _resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the process's peak resident memory (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset: bool) -> int:
    if reset:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(checkpointed: bool, clips: int, seconds: float, steps: int) -> dict:
    """One variant, in this process: the step's memory (bytes) and the median step time (seconds)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = passt.PaSST(weights="random").to(device).train()
    if checkpointed:
        recompute.enable(backbone)
    head = torch.nn.Linear(backbone.output_dim, 8).to(device)
    parameters = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    for parameter in parameters:  # gradients and AdamW's state exist before the measured step
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    generator = torch.Generator().manual_seed(0)
    samples = int(seconds * passt.SAMPLE_RATE)
    waveforms = (0.1 * torch.randn(clips, samples, generator=generator)).to(device)
    lengths = torch.full((clips,), samples, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            loss = head(backbone(waveforms, lengths)).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    if device.type == "cuda":
        torch.cuda.synchronize()
        before, reset = torch.cuda.memory_allocated(), True
        torch.cuda.reset_peak_memory_stats()
    else:
        before, reset = _resident_bytes(), _reset_peak()
    step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_bytes(reset)
    wall, cpu = [], []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    seconds = statistics.median(wall if device.type == "cuda" else cpu)
    return {"memory": peak - before, "seconds": seconds, "wall": statistics.median(wall), "peak_reset": reset,
            "device": str(device)}


def _run_variant(checkpointed: bool, arguments: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--variant", "on" if checkpointed else "off",
               "--clips", str(arguments.clips), "--seconds", str(arguments.seconds), "--steps", str(arguments.steps)]
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed blocks of >= 64 KiB go back at once
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    if finished.returncode != 0:
        raise SystemExit(f"the {LABELS[checkpointed]} variant failed:\n{finished.stderr[-2000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2, help="Clips per step (default 2).")
    parser.add_argument("--seconds", type=float, default=10.0, help="Seconds per clip (default 10: one segment).")
    parser.add_argument("--steps", type=int, default=2, help="Timed steps after the measured one (default 2).")
    parser.add_argument("--variant", choices=("on", "off"), help=argparse.SUPPRESS)  # a subprocess's own run
    _published.add_option(parser)
    arguments = parser.parse_args()
    if arguments.variant:
        print(json.dumps(measure(arguments.variant == "on", arguments.clips, arguments.seconds, arguments.steps)))
        return
    results = {checkpointed: _run_variant(checkpointed, arguments) for checkpointed in (False, True)}
    plain, checkpointed = results[False], results[True]
    on_gpu = plain["device"] != "cpu"
    method = ("torch.cuda.max_memory_allocated above the allocation before the step" if on_gpu else
              "peak resident memory of a fresh process during the step (reset before it; VmHWM) less the resident "
              "memory before it" if plain["peak_reset"] and checkpointed["peak_reset"] else
              "ru_maxrss of a fresh process after the step less the resident memory before it")
    clock = "wall time" if on_gpu else "CPU time of the process, one thread"
    print(f"PaSST training step (random weights, patchout 15/2), {arguments.clips} clips of {arguments.seconds:g} s, "
          f"{plain['device']}; memory: {method}; time: {clock}")
    for flag, result in results.items():
        print(f"  {LABELS[flag]:<28} step memory {result['memory'] / 2**20:8.0f} MiB, "
              f"{result['seconds']:6.2f} s/step (median of {arguments.steps}; wall {result['wall']:.2f} s)")
    memory_ratio = checkpointed["memory"] / plain["memory"]
    time_ratio = checkpointed["seconds"] / plain["seconds"]
    print(f"  ratios with / without: memory {memory_ratio:.2f}x, time {time_ratio:.2f}x")
    row = _published.Row(
        f"PaSST training step, {arguments.clips} clips of {arguments.seconds:g} s, gradient checkpointing vs none "
        "(`bench_checkpointing.py`; memory the step adds: "
        + ("CUDA peak allocation)" if on_gpu else "peak RSS of a fresh process, reset before the step)"),
        f"{checkpointed['memory'] / 2**20:.0f} MiB vs {plain['memory'] / 2**20:.0f} MiB ({memory_ratio:.2f}x), "
        f"{checkpointed['seconds']:.1f} s vs {plain['seconds']:.1f} s per step ({time_ratio:.2f}x; "
        + ("wall time)" if on_gpu else "CPU time, one thread)"),
        "less memory, the same gradients")
    _published.finish(__file__, [row], arguments.write_docs,
                      _published.device_note(plain["device"]))


if __name__ == "__main__":
    main()
