"""Benchmark `prepare cache` against the floor: a plain decode + resample loop over the same files.

Data: synthetic Clotho-layout clips of 15-30 s at 44.1 kHz (the real Clotho length range), resampled
to 32 kHz (PaSST). Prints clips/s of the cache build with 1 worker against the sequential floor, and
with N workers against a process-pool floor, then how much faster reading a clip back from the
cache is than decoding it. Goals: build within 1.3x of the floor; reads >= 50x faster than decoding.
Each time is the best of several runs (the machine may be shared). Usage:

    .venv/bin/python benchmarks/bench_prepare.py [--clips 60] [--workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from dcase_t6.data.audio_cache import AudioCache, build_cache
from dcase_t6.data.audio_io import load_audio
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
    with ProcessPoolExecutor(workers) as pool:
        for _ in pool.map(load_audio, paths, [RATE] * len(paths), chunksize=2):
            pass


def cache_build(layout: Layout, workers: int) -> None:
    """A full build from scratch (the previous cache is removed first, outside the timing)."""
    build_cache(layout, RATE, workers=workers)


def best_of(repeat: int, function, before=None) -> float:
    """Best wall time of ``repeat`` runs; ``before`` runs untimed before each."""
    best = float("inf")
    for _ in range(repeat):
        if before:
            before()
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60, help="Number of clips (default 60).")
    parser.add_argument("--workers", type=int, default=2, help="Workers for the parallel comparison (default 2).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per measurement (default 3).")
    args = parser.parse_args()
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
            floor_s = best_of(args.repeat, lambda: floor(paths, workers))
            build_s = best_of(args.repeat, lambda: cache_build(layout, workers), before=clear)
            ratio = build_s / floor_s
            print(f"workers={workers}: floor {len(paths) / floor_s:7.1f} clips/s   prepare cache {len(paths) / build_s:7.1f} "
                  f"clips/s   ratio {ratio:.2f}x  (goal <= 1.3x: {'met' if ratio <= 1.3 else 'NOT met'})")
        cache = AudioCache(root, RATE)
        order = np.random.default_rng(0).permutation(len(paths))
        read_s = best_of(args.repeat, lambda: [cache.read(paths[i]) for i in order])
        decode_s = best_of(1, lambda: floor(paths, 1))
        speedup = decode_s / read_s
        print(f"training reads: cache {len(paths) / read_s:9.0f} clips/s   decode+resample {len(paths) / decode_s:7.1f} "
              f"clips/s   {speedup:.0f}x faster  (goal >= 50x: {'met' if speedup >= 50 else 'NOT met'})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
