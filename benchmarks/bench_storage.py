"""Benchmark the audio cache's storage modes on generated audio of WavCaps' length mix, and project the three
datasets of the DCASE baseline (Clotho + AudioCaps + WavCaps) onto disk and data-loader workers.

Data: clips in WavCaps' proportions (FreeSound 65 % around 86 s, BBC 8 % around 115 s, SoundBible 0.3 % of
13 s, AudioSet-SL 27 % of 10 s), as 32 kHz FLAC (WavCaps' distribution) and as 44.1 kHz MP3 (the baseline's
copies). In one run it prints:

1. bytes stored per hour of audio in each mode against today's float32 (goal: int16 <= 0.5x) and, for
   ``window``, what the index adds to the sources (goal <= 10 %);
2. random 10 s and 30 s windows read per second by one worker through ``AudioCache.clip`` (``window``)
   against the plain reference, decoding the whole file, resampling and cropping: over the WavCaps mix
   (whose ideal ratio, decoding only the window, is about mean length / window) and over long files of
   3-5 minutes (goal >= 3x), and the stored modes' reads;
3. the projection: disk for Clotho (float32), AudioCaps (int16) and WavCaps (window) at 32 and 16 kHz
   against float32 for all, and the workers needed to feed 150 clips/s at 30 s windows with the training
   mix of the three sets, with 5 % headroom (so that the loader waits under 5 % of the time).

``--write-docs`` puts the figures of 1 and 2 into this script's block of docs/speed.md. Usage:

    .venv/bin/python benchmarks/bench_storage.py [--clips 24] [--repeat 3] [--write-docs]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

import _published
from dcase_t6.data.audio_cache import AudioCache, crop_span
from dcase_t6.data.audio_io import load_audio
from dcase_t6.data.cache_build import CacheRequest, build_cache
from dcase_t6.data.evalset import prepare_eval
from dcase_t6.data.layout import Layout
from dcase_t6.data.storage import StorageRequest

RATES = (32000, 16000)
# WavCaps (paper, Table 1): clips and mean seconds per source
WAVCAPS = {"FreeSound": (262_300, 86.0), "BBC": (31_201, 115.0), "SoundBible": (1_232, 13.0),
           "AudioSet-SL": (108_317, 10.0)}
WAVCAPS_MP3_GB = 157.0  # the distributed files the baseline trains from (issue figures)
CLOTHO = (6_974, 22.0, 19_195)  # clips, mean seconds, training pairs (development: 3,839 clips x 5 captions)
AUDIOCAPS = (50_000, 10.0, 49_838)  # clips, seconds, training pairs (one caption per training clip)
WAVCAPS_PAIRS = 403_050
TARGET_CLIPS_PER_S = 150.0
HEADROOM = 1.05
WINDOW_S = 30
LONG_FILES = (180.0, 240.0, 300.0)  # several-minute files (BBC Sound Effects' long tail)


def length_mix(clips: int) -> list[float]:
    """Clip lengths in WavCaps' proportions (at least one clip of each source), spread +-40 % around its mean."""
    total = sum(count for count, _ in WAVCAPS.values())
    lengths = []
    for count, mean in WAVCAPS.values():
        share = max(1, round(clips * count / total))
        spread = mean * 0.4 if mean > 20 else 0.0
        lengths += [round(float(mean + spread * value), 2) for value in np.linspace(-1, 1, share)] if share > 1 \
            else [mean]
    return lengths


def write_sound(path: Path, seconds: float, rate: int, seed: int) -> None:
    """A chirp with a slow swell and a little noise (so FLAC compresses it about as much as real recordings)."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t))
    mono = 0.3 * np.sin(2 * np.pi * (150 + 7 * (seed + 1) * t) * t) * (0.6 + 0.4 * np.sin(t / 5)) + 0.03 * noise
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, mono.astype(np.float32), rate, subtype="MPEG_LAYER_III" if path.suffix == ".mp3" else "PCM_16")


def make_root(root: Path, lengths: list[float], suffix: str, rate: int) -> Layout:
    """The mix as ``sounds/mix-*``, the several-minute files as ``sounds/long-*``, indexed as one dataset."""
    layout = Layout.at(root)
    for number, seconds in enumerate(lengths):
        write_sound(root / "sounds" / f"mix-{number:03d}{suffix}", seconds, rate, number)
    for number, seconds in enumerate(LONG_FILES):
        write_sound(root / "sounds" / f"long-{number}{suffix}", seconds, rate, 100 + number)
    pd.DataFrame({"caption": ["a query"]}).to_csv(root / "queries.csv", index=False)
    prepare_eval(layout, root / "queries.csv", root / "sounds", workers=2)
    return layout


def per_second(repeat: int, function, count: int) -> float:
    """Best of ``repeat`` runs of ``function`` (which does ``count`` reads), in reads per second."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return count / best


def ideal(lengths: list[float], window: float) -> float:
    """What decoding only the window saves at best: the seconds decoded whole over the seconds in the windows."""
    return sum(lengths) / sum(min(length, window) for length in lengths)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def measure(layout: Layout, rate: int, repeat: int) -> dict:
    """Bytes per hour of each mode (over the mix) and read rates (reads/s of one process) at ``rate``."""
    root = layout.root
    groups = {group: sorted(f"sounds/{p.name}" for p in (root / "sounds").glob(f"{group}-*"))
              for group in ("mix", "long")}
    keys = groups["mix"]
    lengths = [sf.info(str(root / key)).duration for key in keys]
    result: dict = {"source_bytes": sum((root / key).stat().st_size for key in keys), "clips": len(keys),
                    "hours": sum(lengths) / 3600, "lengths": lengths}
    offsets = np.random.default_rng(1).random(len(keys) + len(groups["long"]))
    for mode in ("float32", "int16", "window"):
        directory = layout.cache_dir(rate)
        shutil.rmtree(directory, ignore_errors=True)
        build_cache(layout, CacheRequest(rate, storage=StorageRequest({None: mode}, {})))
        cache = AudioCache(root, rate)
        samples = sum(cache.length(key) for key in keys)
        result[f"{mode}_bytes"] = (samples * {"float32": 4, "int16": 2}[mode] if mode != "window"
                                   else (directory / "index.csv").stat().st_size * len(keys) / len(cache))
        for seconds in (10, 30):
            window = seconds * rate
            for group, selected in groups.items():
                result[f"{mode}_{group}_{seconds}"] = per_second(
                    repeat, lambda selected=selected: [cache.clip(k, window, o) for k, o in zip(selected, offsets)],
                    len(selected))
                if mode == "window":
                    result[f"decode_{group}_{seconds}"] = per_second(
                        repeat, lambda selected=selected: _decode_all(root, selected, offsets, rate, window),
                        len(selected))
    return result


def _decode_all(root: Path, keys: list[str], offsets: np.ndarray, rate: int, window: int) -> None:
    """The plain reference: decode the whole file, resample, crop the window."""
    for key, offset in zip(keys, offsets):
        samples = load_audio(root / key, rate)
        start, count = crop_span(len(samples), window, offset)
        samples[start:start + count].copy()


def report_formats(measured: dict[str, dict[int, dict]]) -> None:
    print("\n1. bytes stored per hour of audio (GB/h)")
    print(f"{'source':>6} {'rate':>6} {'float32':>8} {'int16':>8} {'ratio':>6}   {'sources':>8} {'window index':>13} "
          f"{'adds':>7}")
    for name, by_rate in measured.items():
        for rate, m in by_rate.items():
            per_hour = {key: m[f"{key}_bytes"] / m["hours"] / 1e9 for key in ("float32", "int16", "window")}
            ratio, adds = per_hour["int16"] / per_hour["float32"], m["window_bytes"] / m["source_bytes"]
            print(f"{name:>6} {rate:>6} {per_hour['float32']:8.3f} {per_hour['int16']:8.3f} {ratio:5.2f}x   "
                  f"{m['source_bytes'] / m['hours'] / 1e9:8.3f} {per_hour['window']:13.5f} {adds:6.2%}   "
                  f"(int16 <= 0.5x: {verdict(ratio <= 0.5 + 1e-9)}; window adds <= 10 %: {verdict(adds <= 0.10)})")
    print("\n2. reads per second, one worker, random windows: the WavCaps mix (ideal: seconds in the clips over "
          "seconds in their windows) "
          f"and files of {', '.join(f'{s / 60:g}' for s in LONG_FILES)} min")
    print(f"{'source':>6} {'rate':>6} {'win':>4} {'float32':>8} {'int16':>8} {'mix: window':>12} {'decode':>7} "
          f"{'ratio':>6} {'ideal':>6} {'long: window':>13} {'decode':>7} {'ratio':>6}")
    lengths = measured["mp3"][RATES[0]]["lengths"]
    for name, by_rate in measured.items():
        for rate, m in by_rate.items():
            for seconds in (10, 30):
                mix = m[f"window_mix_{seconds}"] / m[f"decode_mix_{seconds}"]
                long = m[f"window_long_{seconds}"] / m[f"decode_long_{seconds}"]
                print(f"{name:>6} {rate:>6} {seconds:>3}s {m[f'float32_mix_{seconds}']:8.0f} "
                      f"{m[f'int16_mix_{seconds}']:8.0f} {m[f'window_mix_{seconds}']:12.1f} "
                      f"{m[f'decode_mix_{seconds}']:7.1f} {mix:5.1f}x {ideal(lengths, seconds):5.1f}x "
                      f"{m[f'window_long_{seconds}']:13.1f} {m[f'decode_long_{seconds}']:7.1f} {long:5.1f}x   "
                      f"(long files >= 3x: {verdict(long >= 3)})")


def projection(measured: dict[str, dict[int, dict]]) -> None:
    """Disk and workers for Clotho + AudioCaps + WavCaps at each rate."""
    wavcaps_hours = sum(count * seconds for count, seconds in WAVCAPS.values()) / 3600
    clotho_hours, audiocaps_hours = CLOTHO[0] * CLOTHO[1] / 3600, AUDIOCAPS[0] * AUDIOCAPS[1] / 3600
    pairs = CLOTHO[2] + AUDIOCAPS[2] + WAVCAPS_PAIRS
    print(f"\n3. projection: Clotho {clotho_hours:.0f} h (float32), AudioCaps {audiocaps_hours:.0f} h (int16), "
          f"WavCaps {wavcaps_hours:,.0f} h (window over its MP3 files, {WAVCAPS_MP3_GB:.0f} GB); "
          f"{WINDOW_S} s windows; training mix by pairs: Clotho {CLOTHO[2] / pairs:.1%}, "
          f"AudioCaps {AUDIOCAPS[2] / pairs:.1%}, WavCaps {WAVCAPS_PAIRS / pairs:.1%}")
    print(f"{'rate':>6} {'Clotho GB':>10} {'AudioCaps GB':>13} {'WavCaps GB':>11} {'total GB':>9} "
          f"{'all float32 GB':>15} {'clips/s/worker':>15} {'workers for 150/s':>18}")
    for rate in RATES:
        mp3 = measured["mp3"][rate]
        index_per_clip = mp3["window_bytes"] / mp3["clips"]
        clotho_gb = clotho_hours * 3600 * rate * 4 / 1e9
        audiocaps_gb = audiocaps_hours * 3600 * rate * 2 / 1e9
        wavcaps_index_gb = sum(count for count, _ in WAVCAPS.values()) * index_per_clip / 1e9
        wavcaps_gb = WAVCAPS_MP3_GB + wavcaps_index_gb
        all_float32 = (clotho_hours + audiocaps_hours + wavcaps_hours) * 3600 * rate * 4 / 1e9
        seconds_per_clip = (CLOTHO[2] / mp3["float32_mix_30"] + AUDIOCAPS[2] / mp3["int16_mix_10"]
                            + WAVCAPS_PAIRS / mp3["window_mix_30"]) / pairs
        per_worker = 1 / seconds_per_clip
        workers = math.ceil(TARGET_CLIPS_PER_S * HEADROOM / per_worker)
        total = clotho_gb + audiocaps_gb + wavcaps_gb
        print(f"{rate:>6} {clotho_gb:10.1f} {audiocaps_gb:13.1f} {wavcaps_gb:11.1f} {total:9.1f} "
              f"{all_float32:15.0f} {per_worker:15.1f} {workers:18d}")
    print("(WavCaps GB: its sources plus the index; the sources are shared by both rates. Worker figures are this "
          "machine's CPU, one process per worker, reading through AudioCache.clip as the training loader does.)")


def published_rows(measured: dict[str, dict[int, dict]]) -> list[_published.Row]:
    """The storage ratios over both formats and both rates (one figure, or the range when they differ)."""
    every = [m for by_rate in measured.values() for m in by_rate.values()]
    int16 = [m["int16_bytes"] / m["float32_bytes"] for m in every]
    adds = [max(m["window_bytes"] / m["source_bytes"] for m in measured[name].values()) for name in ("flac", "mp3")]
    long = {seconds: [m[f"window_long_{seconds}"] / m[f"decode_long_{seconds}"] for m in every] for seconds in (10, 30)}
    minutes = f"{min(LONG_FILES) / 60:g}-{max(LONG_FILES) / 60:g} min"
    rates = " and ".join(f"{rate // 1000:g}" for rate in RATES)
    return [_published.Row("storage (`bench_storage.py`): int16 vs float32 bytes per hour", _span(int16, ".2f") + "x",
                           "<= 0.5x"),
            _published.Row("storage: `window` index vs its sources (FLAC / MP3)",
                           " / ".join(f"+{100 * value:.2f} %" for value in adds), "<= +10 %"),
            _published.Row(f"storage: random window of a {minutes} file vs decoding it whole",
                           "; ".join(f"{seconds} s: {_span(values, '.0f')}x" for seconds, values in long.items())
                           + f" (FLAC and MP3, {rates} kHz)", ">= 3x")]


def _span(values: list[float], spec: str) -> str:
    low, high = format(min(values), spec), format(max(values), spec)
    return low if low == high else f"{low}-{high}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24, help="Number of generated clips (default 24).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per measurement (default 3).")
    _published.add_option(parser)
    args = parser.parse_args()
    lengths = length_mix(args.clips)
    print(f"{len(lengths)} clips, {sum(lengths) / 60:.1f} min, mean {np.mean(lengths):.1f} s "
          f"(WavCaps' mean: 67.6 s), {sum(s >= 60 for s in lengths)} of 60 s or more")
    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        measured: dict[str, dict[int, dict]] = {}
        for name, suffix, rate in (("flac", ".flac", 32000), ("mp3", ".mp3", 44100)):
            layout = make_root(work / name, lengths, suffix, rate)
            measured[name] = {target: measure(layout, target, args.repeat) for target in RATES}
        report_formats(measured)
        projection(measured)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _published.finish(__file__, published_rows(measured), args.write_docs)


if __name__ == "__main__":
    main()
