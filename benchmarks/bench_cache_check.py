"""The freshness check before an audio-cache build: one metadata read per source, several threads at once.

Before every build (``prepare cache``, and at the start of training or embedding) the builder compares each
source's size and modification time with the cache index; WavCaps alone has about 400k sources. This script makes
``--files`` empty files in a temporary folder outside the repository and times, in one run:

* the plain reference: ``Path.exists`` and then ``Path.stat`` for each path, one after the other (the check before);
* ``data.parallel.stat_all`` as the build calls it (on a local disk: 1 thread, one ``stat`` per path);
* ``stat_all`` with the 16 threads it uses on a network file system, here on the local disk.

A local disk answers from the kernel's cache, so threads only add switching there; on a network file system each
call waits for a round trip to the server and the 16 slices' round trips overlap (not measurable on this
machine, which has no network file system).

Usage:

    .venv/bin/python benchmarks/bench_cache_check.py [--files 100000] [--repeats 3] [--write-docs]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import _published
from dcase_t6.data.parallel import NETWORK_THREADS, on_network_file_system, stat_all


def exists_then_stat(paths: list[Path]) -> list[tuple[int, int] | None]:
    """The check as it was: two calls per path."""
    facts = []
    for path in paths:
        stat = path.stat() if path.exists() else None
        facts.append(None if stat is None else (stat.st_size, stat.st_mtime_ns))
    return facts


def best_of(repeats: int, function, paths: list[Path]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(paths)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    _published.add_option(parser)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-cache-check-"))
    try:
        paths = [folder / f"{number // 1000:03d}" / f"{number:07d}.wav" for number in range(args.files)]
        for path in paths:
            path.parent.mkdir(exist_ok=True)
            path.touch()
        paths += [folder / "missing" / f"{number}.wav" for number in range(args.files // 100)]  # 1 % gone
        reference = exists_then_stat(paths)
        assert stat_all(paths) == reference and stat_all(paths, threads=NETWORK_THREADS) == reference
        plain = best_of(args.repeats, exists_then_stat, paths)
        assert not on_network_file_system(folder), f"{folder} is on a network file system: use a local --tmp"
        one = best_of(args.repeats, stat_all, paths)
        many = best_of(args.repeats, lambda items: stat_all(items, threads=NETWORK_THREADS), paths)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    count = f"{len(paths):,} sources (1 % missing), local disk"
    rows = [
        _published.Row(f"cache freshness check, {count}: exists + stat, one loop (before)",
                       f"{plain:.2f} s ({len(paths) / plain / 1e3:.0f}k sources/s)"),
        _published.Row(f"cache freshness check, {count}: stat_all (1 thread on a local disk)",
                       f"{one:.2f} s, {plain / one:.2f}x faster than before", "faster than before"),
        _published.Row(f"cache freshness check, {count}: stat_all with the {NETWORK_THREADS} threads of a network "
                       "file system", f"{many:.2f} s, {plain / many:.2f}x the speed of before",
                       "(for network file systems; threads only cost here)"),
    ]
    _published.finish(__file__, rows, _published.requested(argv))


if __name__ == "__main__":
    main()
