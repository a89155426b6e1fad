"""Peak memory of `dcase-t6 prepare cache` on one very long evaluation clip, with and without --max-seconds.

Writes a long mono WAV (default 10 hours at 44.1 kHz, 16-bit: 1.6 GB) into a temporary folder outside the
repository, indexes it with `prepare eval`, then runs `prepare cache` in a child process per case and reads the
child's peak resident memory (``ru_maxrss``) and wall time. With ``--before SRC`` every case also runs with
``PYTHONPATH=SRC`` (another version's ``src`` folder, e.g. ``git archive HEAD src | tar -x -C /tmp/old``) and
the ratio is printed. The temporary folder is deleted at the end. ``--write-docs`` puts the peaks and times into
this script's block of docs/speed.md.

Usage:

    .venv/bin/python benchmarks/bench_cache_memory.py [--hours 10] [--rate 16000] [--max-seconds 30]
        [--before /tmp/old/src] [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import _published

SOURCE_RATE = 44100
BLOCK_SECONDS = 60


def write_long_wav(path: Path, hours: float, rate: int) -> None:
    """A chirping tone with noise, written a minute at a time (constant memory)."""
    rng = np.random.default_rng(0)
    total = int(hours * 3600 * rate)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        for start in range(0, total, BLOCK_SECONDS * rate):
            t = np.arange(start, min(start + BLOCK_SECONDS * rate, total)) / rate
            block = 0.3 * np.sin(2 * np.pi * (300 + 50 * np.sin(t / 30)) * t) + 0.02 * rng.standard_normal(len(t))
            out.write(block.astype(np.float32))


def run_cli(args: list[str], python_path: str | None) -> tuple[float, float]:
    """Run ``python -m dcase_t6 ARGS``; return (peak RSS in GB, wall seconds)."""
    env = dict(os.environ)
    if python_path:
        env["PYTHONPATH"] = python_path
    began = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "dcase_t6", *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - began
    error = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dcase-t6 {' '.join(args)} failed:\n{error}")
    return usage.ru_maxrss / 1e6, seconds  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=16000, help="cache rate (prepare cache --rate)")
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--before", help="src folder of the version to compare with")
    _published.add_option(parser)
    options = parser.parse_args()
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-cache-memory-"))
    try:
        audio = scratch / "audio"
        audio.mkdir()
        began = time.perf_counter()
        write_long_wav(audio / "long.wav", options.hours, SOURCE_RATE)
        size = (audio / "long.wav").stat().st_size
        print(f"{options.hours:g} h at {SOURCE_RATE} Hz mono: {size / 1e9:.2f} GB WAV, written in "
              f"{time.perf_counter() - began:.0f} s")
        (scratch / "queries.csv").write_text("caption\na long recording\n", encoding="utf-8")
        root = scratch / "data"
        run_cli(["prepare", "eval", "--root", str(root), "--captions", str(scratch / "queries.csv"),
                 "--audio", str(audio), "--workers", "1"], None)
        output = options.hours * 3600 * options.rate * 4
        cases = [("whole clip", []), (f"--max-seconds {options.max_seconds:g}",
                                      ["--max-seconds", str(options.max_seconds)])]
        versions = [("before", options.before), ("after", None)] if options.before else [("after", None)]
        print(f"cache at {options.rate} Hz, float32: the whole clip is {output / 1e9:.2f} GB of samples")
        for name, extra in cases:
            peaks, times = {}, {}
            for version, python_path in versions:
                shutil.rmtree(root / "cache", ignore_errors=True)
                peak, seconds = run_cli(["prepare", "cache", "--root", str(root), "--rate", str(options.rate),
                                         "--workers", "1", "--force", *extra], python_path)
                peaks[version], times[version] = peak, seconds
                print(f"{name:>22} {version:>6}: peak RSS {peak:6.2f} GB, {seconds:6.1f} s")
            if len(peaks) == 2:
                print(f"{name:>22}  ratio: {peaks['before'] / peaks['after']:.1f}x less memory")
            before = (f" (`--before`: {peaks['before']:.2f} GB and {times['before']:.1f} s)" if len(peaks) == 2
                      else "")
            what = (f"`prepare cache`, one {options.hours:g}-hour {SOURCE_RATE / 1000:g} kHz mono WAV, cache at "
                    f"{options.rate / 1000:g} kHz: peak memory (RSS) and time" if not extra
                    else f"the same with `--max-seconds {options.max_seconds:g}`")
            rows.append(_published.Row(what, f"{peaks['after']:.2f} GB in {times['after']:.1f} s{before}",
                                       "independent of the clip's length" if not extra else ""))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _published.finish(__file__, rows, options.write_docs)


if __name__ == "__main__":
    main()
