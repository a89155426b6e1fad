"""Benchmark `prepare cache` against the floor: a plain decode + resample loop over the same files.

Data: synthetic Clotho-layout clips of 15-30 s at 44.1 kHz (the real Clotho length range), resampled
to 32 kHz (PaSST). Prints clips/s of the cache build with 1 worker against the sequential floor, and
with N workers against a process-pool floor, then how much faster reading a clip back from the
cache is than decoding it. Goals: build within 1.3x of the floor; reads >= 50x faster than decoding.
Each time is the best of several runs; for 1 worker the CPU-time ratio is printed too, as it is
steadier than wall time on a shared machine. The parallel floor uses the same worker start method
(fork server) as the cache. ``--write-docs`` puts the figures into this script's block of docs/speed.md.
Usage:

    .venv/bin/python benchmarks/bench_prepare.py [--clips 100] [--workers 2] [--write-docs]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import _published
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.data.audio_io import load_audio
from dcase_t6.data.cache_build import CacheRequest, build_cache, worker_context
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import read_index
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic

RATE = 32000


def floor(paths: list[Path], workers: int) -> None:
    """The floor: decode + mono + resample every file, keep nothing."""
    if workers == 1:
        for path in paths:
            load_audio(path, RATE)
        return
    with ProcessPoolExecutor(workers, worker_context()) as pool:  # the same process start as the cache
        for _ in pool.map(load_audio, paths, [RATE] * len(paths), chunksize=2):
            pass


def cache_build(layout: Layout, workers: int) -> None:
    """A full build from scratch (the previous cache is removed first, outside the timing)."""
    build_cache(layout, CacheRequest(RATE, workers=workers))


def cpu_seconds() -> float:
    """CPU time of this process (steadier than wall time on a busy machine; pool workers are not counted)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def best_of(repeat: int, function, before=None) -> tuple[float, float]:
    """Best wall time and best CPU time of ``repeat`` runs; ``before`` runs untimed before each."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeat):
        if before:
            before()
        start, start_cpu = time.perf_counter(), cpu_seconds()
        function()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, cpu_seconds() - start_cpu)
    return wall, cpu


def verdict(ok: bool) -> str:
    """'met' or 'NOT met'."""
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100, help="Number of clips (default 100).")
    parser.add_argument("--workers", type=int, default=2, help="Workers for the parallel comparison (default 2).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per measurement (default 3).")
    _published.add_option(parser)
    args = parser.parse_args()
    ratios: dict[int, float] = {}
    root = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        layout = Layout.at(root)
        config = SyntheticConfig(seed=0, development=args.clips - 2 * (args.clips // 4), validation=args.clips // 4,
                                 evaluation=args.clips // 4, min_duration=15.0, max_duration=30.0)
        prepare_synthetic(layout, config, workers=args.workers)
        paths = [Path(p) for p in read_index(root, "synthetic")["path"].unique()]
        hours = sum(len(load_audio(p, RATE)) for p in paths) / RATE / 3600  # also warms the page cache
        print(f"{len(paths)} clips, {hours * 60:.1f} min of 44.1 kHz audio -> {RATE} Hz mono float32")
        clear = lambda: shutil.rmtree(layout.cache_dir(RATE), ignore_errors=True)  # noqa: E731
        for workers in sorted({1, args.workers}):
            floor_s, floor_cpu = best_of(args.repeat, lambda: floor(paths, workers))
            build_s, build_cpu = best_of(args.repeat, lambda: cache_build(layout, workers), before=clear)
            ratio = ratios[workers] = build_s / floor_s
            cpu = f"   CPU-time ratio {build_cpu / floor_cpu:.2f}x" if workers == 1 else ""
            print(f"workers={workers}: floor {len(paths) / floor_s:7.1f} clips/s   "
                  f"prepare cache {len(paths) / build_s:7.1f} clips/s   ratio {ratio:.2f}x  "
                  f"(goal <= 1.3x: {verdict(ratio <= 1.3)}){cpu}")
        cache = AudioCache(root, RATE)
        order = np.random.default_rng(0).permutation(len(paths))
        read_s, _ = best_of(args.repeat, lambda: [cache.read(paths[i]).size for i in order])  # a copy, then freed
        decode_s, _ = best_of(1, lambda: floor(paths, 1))
        speedup = decode_s / read_s
        print(f"training reads: cache {len(paths) / read_s:9.0f} clips/s   "
              f"decode+resample {len(paths) / decode_s:7.1f} clips/s   {speedup:.0f}x faster  "
              f"(goal >= 50x: {verdict(speedup >= 50)})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    parallel = f"; {ratios[args.workers]:.2f}x with {args.workers} workers" if args.workers != 1 else ""
    rows = [_published.Row("audio cache build vs plain decode + resample loop",
                           f"about {ratios[1]:.2f}x the loop (1 worker{parallel})", "within 1.3x"),
            _published.Row("reading a cached clip vs decoding it", f"{speedup:.0f}x faster", ">= 50x")]
    _published.finish(__file__, rows, args.write_docs)


if __name__ == "__main__":
    main()
