"""Storage modes of the audio cache on generated multi-minute clips: windows read from WAV, FLAC and MP3 sources
equal the float32 store's spans at the start, middle and end; int16 halves the size; caps, clips shorter than
the window, sources changing between epochs, the disk check, remembered choices and the CLI."""

import json
import shutil
from collections import namedtuple

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import Recorder
from dcase_t6.data import audio_cache, cache_build, storage
from dcase_t6.data.audio_cache import AudioCache, crop_span
from dcase_t6.data.audio_io import load_audio
from dcase_t6.data.cache_build import CacheRequest, build_cache
from dcase_t6.data.evalset import prepare_eval
from dcase_t6.data.layout import Layout
from dcase_t6.data.storage import Storage, StorageRequest, choose, resampled_length
from dcase_t6.runs.config import TrainConfig
from dcase_t6.training.augmentation import PairAugmenter
from dcase_t6.training.data import BatchSource, TrainingData, load_pairs
from dcase_t6.training.distributed import World
from helpers.data import interrupt_at_job

RATE = 32000
WINDOWS = (10 * RATE, 30 * RATE)
LAST = float(np.nextafter(1.0, 0.0))  # the largest offset: the window that ends the clip
OFFSETS = (0.0, 0.5, LAST)  # the file's start, middle and end
# (file, seconds, source rate, channels, subtype): WavCaps-like long sources in the three formats, plus a short clip
SOURCES = [("long stereo.wav", 180.0, 44100, 2, "PCM_16"), ("long.flac", 150.0, 32000, 1, "PCM_16"),
           ("long.mp3", 200.0, 44100, 1, "MPEG_LAYER_III"), ("short.flac", 7.5, 48000, 1, "PCM_16")]


def write_sound(path, seconds, rate, channels=1, subtype="PCM_16", seed=0):
    """A chirp with a slow amplitude swell and a little noise: every window of it differs from the others."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    swell = 0.6 + 0.4 * np.sin(t / 7)
    mono = 0.4 * np.sin(2 * np.pi * (200 + 15 * t) * t) * swell + 0.02 * rng.standard_normal(len(t))
    samples = np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1) if channels > 1 else mono
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples.astype(np.float32), rate, subtype=subtype)


def index_sounds(root, sources=SOURCES):
    layout = Layout.at(root)
    for seed, (name, seconds, rate, channels, subtype) in enumerate(sources):
        write_sound(root / "sounds" / name, seconds, rate, channels, subtype, seed)
    pd.DataFrame({"caption": ["a query"]}).to_csv(root / "queries.csv", index=False)
    prepare_eval(layout, root / "queries.csv", root / "sounds", workers=2)
    return layout


def as_mode(mode, seconds=0.0):
    return StorageRequest({None: mode}, {None: seconds})


Spans = namedtuple("Spans", "layout float32 int16 window sizes")


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    """The same spans read from each storage mode of one cache (rebuilt in each mode)."""
    root = tmp_path_factory.mktemp("long-sources")
    layout = index_sounds(root)
    read, sizes = {}, {}
    for mode in ("float32", "int16", "window"):
        report = build_cache(layout, CacheRequest(RATE, storage=as_mode(mode)))
        assert report.decoded == len(SOURCES) and report.storage["eval"]["mode"] == mode
        sizes[mode] = report
        cache = AudioCache(root, RATE)
        read[mode] = {(name, window, offset): cache.clip(f"sounds/{name}", window, offset)
                      for name, *_ in SOURCES for window in WINDOWS for offset in OFFSETS}
        read[mode]["whole short"] = cache.read("sounds/short.flac")
    return Spans(layout, read["float32"], read["int16"], read["window"], sizes)


@pytest.mark.parametrize("name", [source[0] for source in SOURCES[:3]])
def test_window_reads_equal_the_float32_store_at_start_middle_and_end(spans, name):
    whole = load_audio(spans.layout.root / "sounds" / name, RATE)
    for window in WINDOWS:
        for offset in OFFSETS:
            stored, decoded = spans.float32[name, window, offset], spans.window[name, window, offset]
            start, count = crop_span(len(whole), window, offset)
            np.testing.assert_array_equal(stored, whole[start:start + count])  # the store is decode + resample
            assert decoded.dtype == np.float32 and decoded.shape == (window,)
            np.testing.assert_allclose(decoded, stored, atol=2e-6, rtol=0)
    assert crop_span(len(whole), WINDOWS[1], OFFSETS[2])[0] + WINDOWS[1] == len(whole)  # the end window ends the file


def test_clips_shorter_than_the_window_are_read_whole_and_identical_in_every_mode(spans):
    whole = load_audio(spans.layout.root / "sounds" / "short.flac", RATE)
    assert len(whole) == 7.5 * RATE
    for window in WINDOWS:
        for offset in OFFSETS:
            np.testing.assert_array_equal(spans.window["short.flac", window, offset], whole)
            np.testing.assert_array_equal(spans.float32["short.flac", window, offset], whole)
    np.testing.assert_array_equal(spans.window["whole short"], whole)


def test_int16_is_half_the_float32_size_and_within_half_a_step(spans):
    float32, int16, window = (spans.sizes[mode] for mode in ("float32", "int16", "window"))
    assert float32.hours == int16.hours == window.hours == pytest.approx((180 + 150 + 200 + 7.5) / 3600, abs=1e-3)
    assert int16.size_gb * 2 == pytest.approx(float32.size_gb, abs=2e-3) and window.size_gb == 0
    assert int16.stale_gb == pytest.approx(float32.size_gb, abs=1e-3)  # the float32 samples it replaced
    for key, stored in spans.float32.items():
        assert np.abs(spans.int16[key] - np.clip(stored, -1, 32767 / 32768)).max() <= 0.5 / 32768 + 1e-9


def test_int16_of_a_16_bit_source_at_the_cache_rate_is_lossless(spans):
    for window in WINDOWS:
        np.testing.assert_array_equal(spans.int16["long.flac", window, 0.5], spans.float32["long.flac", window, 0.5])


def test_storage_sizes_on_disk(tmp_path):
    """float32 and int16 shards hold 4 and 2 bytes per sample; window stores no samples, only index rows."""
    layout = index_sounds(tmp_path, SOURCES[1:2])
    directory = layout.cache_dir(RATE)
    samples = 150 * RATE
    build_cache(layout, CacheRequest(RATE, storage=as_mode("float32")))
    assert sum(p.stat().st_size for p in directory.glob("audio-*.f32")) == 4 * samples
    shutil.rmtree(directory)
    build_cache(layout, CacheRequest(RATE, storage=as_mode("int16")))
    assert sum(p.stat().st_size for p in directory.glob("audio-*.i16")) == 2 * samples
    shutil.rmtree(directory)
    report = build_cache(layout, CacheRequest(RATE, storage=as_mode("window")))
    assert report.size_gb == 0 and not list(directory.glob("audio-*"))
    source = (tmp_path / "sounds" / "long.flac").stat().st_size
    assert (directory / "index.csv").stat().st_size < 0.001 * source


def test_max_seconds_caps_stored_clips_and_the_region_windows_come_from(tmp_path):
    layout = index_sounds(tmp_path, SOURCES[:1])
    whole = load_audio(tmp_path / "sounds" / "long stereo.wav", RATE)
    for mode in ("float32", "window"):
        report = build_cache(layout, CacheRequest(RATE, storage=as_mode(mode, 60)))
        assert report.decoded == 1 and report.hours == pytest.approx(60 / 3600, abs=1e-3)
        cache = AudioCache(tmp_path, RATE)
        assert cache.length("sounds/long stereo.wav") == 60 * RATE
        last = cache.clip("sounds/long stereo.wav", 10 * RATE, LAST)
        np.testing.assert_allclose(last, whole[50 * RATE:60 * RATE], atol=2e-6, rtol=0)
        assert build_cache(layout, CacheRequest(RATE)).up_to_date == 1  # the cap is remembered with the mode
        assert report.size_gb == pytest.approx(4 * 60 * RATE / 1e9 if mode == "float32" else 0, abs=1e-3)


def test_a_window_source_that_changes_between_epochs_is_read_as_it_is_now(tmp_path):
    layout = index_sounds(tmp_path, SOURCES[2:3])
    build_cache(layout, CacheRequest(RATE, storage=as_mode("window")))
    recorder = Recorder()
    cache = AudioCache(tmp_path, RATE, recorder)
    source = tmp_path / "sounds" / "long.mp3"
    before = cache.clip(source, 30 * RATE, LAST)  # epoch 0: the last 30 s of 200 s
    write_sound(source, 95.0, 44100, 1, "MPEG_LAYER_III", seed=9)  # epoch 1: someone replaced the file
    after = cache.clip(source, 30 * RATE, LAST)
    again = cache.clip(source, 30 * RATE, 0.0)
    new = load_audio(source, RATE)
    np.testing.assert_allclose(after, new[-30 * RATE:], atol=2e-6, rtol=0)
    np.testing.assert_allclose(again, new[:30 * RATE], atol=2e-6, rtol=0)
    assert not np.allclose(before, after, atol=1e-3)
    warnings = [text for kind, text in recorder.messages if kind == "warning"]
    assert len(warnings) == 1 and "changed since the 32000 Hz audio cache indexed it" in warnings[0]  # once per file
    assert "95.0 s" in warnings[0]
    report = build_cache(layout, CacheRequest(RATE))  # the next build re-indexes it
    assert report.decoded == 1 and report.hours == pytest.approx(95 / 3600, abs=1e-3)
    source.unlink()
    with pytest.raises(UserError, match=r"long.mp3: a window of this source cannot be read \(No such file"):
        AudioCache(tmp_path, RATE).clip(source, 30 * RATE, 0.5)


def test_training_windows_are_a_function_of_seed_epoch_and_pair_and_match_across_modes(tiny_data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root, root, ignore=shutil.ignore_patterns("cache"))
    config = TrainConfig(data_root=str(root), datasets=["synthetic"])
    layout = Layout.at(root)
    read = {}
    for mode in ("float32", "window"):
        build_cache(layout, CacheRequest(RATE, storage=as_mode(mode)))
        store = AudioCache(root, RATE)
        pairs = load_pairs(config, store)
        batches = [np.arange(len(pairs.captions))]

        def source(epoch, store=store, pairs=pairs, batches=batches):
            augmenter = PairAugmenter(config, pairs.captions, pairs.clip_ids, pairs.clip_names)
            data = TrainingData(pairs, store, augmenter, RATE // 2, len(batches[0]), 7, 0, World(), str(root))
            return BatchSource(data, epoch, batches)
        read[mode] = [source(epoch)[0].waveforms.numpy() for epoch in (0, 0, 1)]
    for first, repeat, other in read.values():
        np.testing.assert_array_equal(first, repeat)  # a resumed epoch reads the very same windows
        assert not np.allclose(first, other)  # a new epoch, new windows
    for stored, decoded in zip(read["float32"], read["window"]):
        np.testing.assert_allclose(decoded, stored, atol=2e-6, rtol=0)


def test_defaults_choice_and_remembered_storage(tmp_path):
    chosen = choose(tmp_path, ["clotho", "audiocaps", "wavcaps", "synthetic"], StorageRequest.none())
    assert {name: s.mode for name, s in chosen.items()} == {"clotho": "float32", "audiocaps": "int16",
                                                            "wavcaps": "window", "synthetic": "float32"}
    storage.remember(tmp_path, {"clotho": Storage("int16", 0.0)})
    asked = choose(tmp_path, ["clotho", "wavcaps"], StorageRequest({"wavcaps": "float32"}, {None: 45}))
    assert asked == {"clotho": Storage("int16", 45.0), "wavcaps": Storage("float32", 45.0)}
    with pytest.raises(UserError, match="storage mode 'zip': use one of float32, int16, window"):
        Storage("zip")
    with pytest.raises(UserError, match="name dataset 'audiocaps', which this build does not cache"):
        choose(tmp_path, ["clotho"], StorageRequest({"audiocaps": "int16"}, {}))


@pytest.mark.parametrize("frames,source_rate", [(1, 44100), (44101, 44100), (12345, 48000), (7777777, 22050),
                                                (999, 8000), (16000, 16000)])
def test_resampled_length_is_what_soxr_gives(frames, source_rate):
    assert resampled_length(frames, source_rate, RATE) == len(soxr.resample(np.zeros(frames, np.float32),
                                                                            source_rate, RATE))


def test_disk_check_refuses_with_the_figures_and_force_overrides(tmp_path, monkeypatch):
    layout = index_sounds(tmp_path, SOURCES[:2])
    needed = 4 * (180 + 150) * RATE
    real = shutil.disk_usage
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: real(path)._replace(free=needed // 2))
    result = CliRunner().invoke(main, ["prepare", "cache", "--root", str(tmp_path), "--storage", "float32"])
    assert result.exit_code == 2 and result.stdout == ""
    line = " ".join(result.stderr.split())
    assert f"caching 2 clip(s) needs {needed / 1e9:.3f}" in line and f"{needed / 2e9:.3f} GB free" in line
    assert "--storage DATASET=window" in line and "--force" in line and "Traceback" not in result.stderr
    assert not list(layout.cache_dir(RATE).glob("audio-*"))  # nothing written
    window = CliRunner().invoke(main, ["prepare", "cache", "--root", str(tmp_path), "--storage", "window"])
    assert window.exit_code == 0, window.output  # windows need only index rows
    forced = CliRunner().invoke(main, ["prepare", "cache", "--root", str(tmp_path), "--storage", "eval=float32",
                                       "--force", "--json"])
    assert forced.exit_code == 0, forced.output
    report = json.loads(forced.stdout)
    assert report["decoded"] == 2 and report["needed_gb"] == pytest.approx(needed / 1e9, abs=1e-3)
    assert report["storage"]["eval"] == {"mode": "float32", "max_seconds": 0.0, "clips": 2,
                                         "hours": pytest.approx(330 / 3600, abs=1e-3)}


@pytest.mark.parametrize("arguments,message", [
    (["--storage", "eval=zip"], "storage mode 'zip': use one of float32, int16, window"),
    (["--max-seconds", "eval=abc"],
     "--max-seconds 'eval=abc': expected [DATASET=]FLOAT, e.g. --max-seconds wavcaps=120"),
    (["--max-seconds", "-3"], "max seconds -3.0: use a positive number of seconds, or 0 for whole clips"),
    (["--storage", "clotho=int16"], "name dataset 'clotho', which this build does not cache (it caches eval)"),
])
def test_bad_storage_options_are_one_line_errors(tmp_path, arguments, message):
    index_sounds(tmp_path, SOURCES[3:])
    result = CliRunner().invoke(main, ["prepare", "cache", "--root", str(tmp_path), *arguments])
    assert result.exit_code == 2 and message in " ".join(result.stderr.split())
    assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr


def test_an_index_written_before_storage_modes_reads_as_float32(tmp_path):
    layout = index_sounds(tmp_path, SOURCES[3:])
    build_cache(layout, CacheRequest(RATE))
    index = layout.cache_dir(RATE) / "index.csv"
    pd.read_csv(index, dtype=str)[audio_cache.LEGACY_COLUMNS].to_csv(index, index=False)
    (layout.cache_dir(RATE) / storage.CHOICES_FILE).unlink()
    np.testing.assert_array_equal(AudioCache(tmp_path, RATE).read("sounds/short.flac"),
                                  load_audio(tmp_path / "sounds" / "short.flac", RATE))
    assert build_cache(layout, CacheRequest(RATE)).up_to_date == 1  # nothing re-decoded


def test_training_on_window_storage_resumes_bit_for_bit_and_learns_like_the_stored_modes(tiny_data_root, tiny_training,
                                                                              tmp_path):
    import torch

    from dcase_t6.runs.config import build_config
    from dcase_t6.runs.registry import Registry
    from dcase_t6.training import trainer as training

    finals = {}
    for mode in ("float32", "window", "int16"):
        root = tmp_path / mode / "data"
        shutil.copytree(tiny_data_root, root, ignore=shutil.ignore_patterns("cache"))
        rate = 16000  # tiny-cnn's rate; train builds the cache itself, in the remembered storage
        build_cache(Layout.at(root), CacheRequest(rate, storage=as_mode(mode)))
        settings = {**tiny_training, "data_root": str(root), "audio_seconds": 1.0, "epochs": 2}  # 1 s of 2-3 s clips
        full = training.train_new(tmp_path / mode / "a", build_config(None, settings))
        assert full.status == "finished"
        first = load_pairs(build_config(None, settings)).paths[0]
        assert AudioCache(root, rate).clip(first, rate, 0.5).shape == (rate,)
        finals[mode] = Registry(tmp_path / mode / "a").run(full.run).epochs[-1]["train_loss"]
        if mode == "window":
            stopped = training.train_new(tmp_path / mode / "b", build_config(None, {**settings, "max_steps": 1}))
            resumed = training.resume(tmp_path / mode / "b", stopped.run)
            assert resumed.status == "finished" and resumed.step == full.step
            expected, actual = (torch.load(Registry(tmp_path / mode / name).file(run, "checkpoint", "last").path,
                                           weights_only=True)["model"]
                                for name, run in (("a", full.run), ("b", stopped.run)))
            assert all(torch.equal(expected[key], actual[key]) for key in expected)
    # the same windows (to 1e-7, int16 to 2^-16) through a log-mel front end, whose log amplifies differences in
    # near-silent frames: the losses agree to about 1e-3, not to the last digit
    assert finals["window"] == pytest.approx(finals["float32"], rel=1e-2)
    assert finals["int16"] == pytest.approx(finals["float32"], rel=1e-2)


def test_an_interrupted_int16_build_resumes_and_cuts_the_unindexed_tail(tmp_path, monkeypatch):
    layout = index_sounds(tmp_path, [("a.wav", 3.0, 44100, 1, "PCM_16"), ("b.flac", 4.0, 48000, 2, "PCM_16"),
                                     ("c.mp3", 5.0, 44100, 1, "MPEG_LAYER_III")])
    real_job = interrupt_at_job(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_cache(layout, CacheRequest(RATE, storage=as_mode("int16")))
    assert len(AudioCache(tmp_path, RATE)) == 2
    shard = audio_cache.shard_path(layout.cache_dir(RATE), 0, "int16")
    with open(shard, "ab") as handle:  # samples a killed build wrote but never indexed
        handle.write(b"\x01" * 1000)
    monkeypatch.setattr(cache_build, "run_job", real_job)
    report = build_cache(layout, CacheRequest(RATE))  # int16 is remembered
    assert (report.up_to_date, report.decoded, report.storage["eval"]["mode"]) == (2, 1, "int16")
    cache = AudioCache(tmp_path, RATE)
    for name in ("a.wav", "b.flac", "c.mp3"):
        whole = load_audio(tmp_path / "sounds" / name, RATE)
        np.testing.assert_allclose(cache.read(f"sounds/{name}"), whole, atol=0.5 / 32768 + 1e-9, rtol=0)
    assert shard.stat().st_size == 2 * (3 + 4 + 5) * RATE
