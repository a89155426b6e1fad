"""Audio cache: values equal decode+resample, changed files are re-cached, interrupted runs resume."""

import fcntl
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.data import audio_cache, cache_build
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.data.audio_io import load_audio
from dcase_t6.data.cache_build import CacheRequest, build_cache
from dcase_t6.data.evalset import prepare_eval
from dcase_t6.data.layout import Layout
from helpers.data import interrupt_at_job, write_tone

RATE = 32000


def make_indexed_audio(root):
    """Six clips of mixed formats, rates and channel counts, indexed as the 'eval' dataset."""
    layout = Layout.at(root)
    audio = root / "clips"
    write_tone(audio / "stereo 44k, one.wav", 1.5, 44100, channels=2, frequency=300)
    write_tone(audio / "mono 48k.flac", 1.0, 48000, frequency=500)
    write_tone(audio / "low rate 16k.wav", 1.2, 16000, frequency=700)
    write_tone(audio / "already 32k.wav", 0.8, 32000, frequency=900)
    write_tone(audio / "tone.mp3", 1.0, 44100, frequency=1100)
    write_tone(audio / "sub" / "nested&#39;s.wav", 0.5, 22050, frequency=1300)
    pd.DataFrame({"caption": ["a query"]}).to_csv(root / "queries.csv", index=False)
    prepare_eval(layout, root / "queries.csv", audio, workers=2)
    return layout, sorted(p for p in audio.rglob("*") if p.is_file())


def test_cached_samples_equal_decode_and_resample(tmp_path):
    layout, files = make_indexed_audio(tmp_path)
    summary = build_cache(layout, CacheRequest(RATE, workers=1))
    assert (summary.clips, summary.decoded, summary.skipped) == (6, 6, [])
    cache = AudioCache(tmp_path, RATE)
    assert len(cache) == 6
    for path in files:
        cached = cache.read(path)
        assert cached.dtype == np.float32 and cached.ndim == 1
        np.testing.assert_array_equal(cached, load_audio(path, RATE))
    assert cache.read("clips/mono 48k.flac").shape == (RATE,)  # stored (relative) key works too
    again = build_cache(layout, CacheRequest(RATE, workers=1))
    assert (again.up_to_date, again.decoded) == (6, 0)


def test_parallel_builds_write_worker_shards_that_read_back_exactly(tmp_path):
    layout, files = make_indexed_audio(tmp_path)
    directory = layout.cache_dir(RATE)
    build_cache(layout, CacheRequest(RATE, workers=2))
    assert set(pd.read_csv(directory / "index.csv")["shard"]) <= {0, 1}  # each worker appends to its own file
    index = pd.read_csv(directory / "index.csv", dtype={"crc32": str})
    moved = index["path"] == "clips/tone.mp3"  # move one clip to shard 3, as a third worker would have written it
    writer = cache_build.ShardWriter(directory, 3)
    index.loc[moved, ["shard", "offset"]] = [3, writer.append(AudioCache(tmp_path, RATE).read("clips/tone.mp3"))]
    writer.files["float32"].write(b"\x01" * 400)  # plus an unindexed tail, as a killed worker would leave
    writer.close()
    index.to_csv(directory / "index.csv", index=False)
    write_tone(files[0], 0.7, 44100, frequency=3000)
    summary = build_cache(layout, CacheRequest(RATE, workers=3))
    assert (summary.decoded, summary.up_to_date) == (1, 5)
    tone = load_audio(tmp_path / "clips" / "tone.mp3", RATE)
    assert audio_cache.shard_path(directory, 3).stat().st_size == 4 * len(tone)  # the tail was cut
    cache = AudioCache(tmp_path, RATE)
    for path in files:
        np.testing.assert_array_equal(cache.read(path), load_audio(path, RATE))


def test_changed_file_is_recached_and_touched_file_is_not_decoded(tmp_path):
    layout, files = make_indexed_audio(tmp_path)
    build_cache(layout, CacheRequest(RATE, workers=1))
    changed, touched = tmp_path / "clips" / "mono 48k.flac", tmp_path / "clips" / "tone.mp3"
    write_tone(changed, 1.0, 48000, frequency=2000, amplitude=0.2)
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    summary = build_cache(layout, CacheRequest(RATE, workers=1))
    assert (summary.decoded, summary.unchanged_content, summary.up_to_date) == (1, 1, 4)
    np.testing.assert_array_equal(AudioCache(tmp_path, RATE).read(changed), load_audio(changed, RATE))
    assert build_cache(layout, CacheRequest(RATE, workers=1)).up_to_date == 6


def test_interrupted_run_resumes_and_drops_an_unindexed_tail(tmp_path, monkeypatch):
    layout, files = make_indexed_audio(tmp_path)
    real_job = interrupt_at_job(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_cache(layout, CacheRequest(RATE, workers=1))
    assert len(AudioCache(tmp_path, RATE)) == 2  # what finished before the interruption was committed
    data = audio_cache.shard_path(layout.cache_dir(RATE), 0)
    with open(data, "ab") as handle:  # a killed run can leave samples the index never pointed at
        handle.write(b"\x00" * 4000)
    monkeypatch.setattr(cache_build, "run_job", real_job)
    summary = build_cache(layout, CacheRequest(RATE, workers=1))
    assert (summary.up_to_date, summary.decoded) == (2, 4)
    cache = AudioCache(tmp_path, RATE)
    for path in files:
        np.testing.assert_array_equal(cache.read(path), load_audio(path, RATE))
    assert data.stat().st_size == 4 * sum(len(load_audio(p, RATE)) for p in files)


def test_broken_sources_are_listed_and_skipped_and_silent_ones_kept(tmp_path):
    layout, files = make_indexed_audio(tmp_path)
    (tmp_path / "clips" / "tone.mp3").write_bytes(b"not audio at all")
    (tmp_path / "clips" / "mono 48k.flac").write_bytes(b"")
    write_tone(tmp_path / "clips" / "already 32k.wav", 0.8, 32000, amplitude=0.0)
    result = CliRunner().invoke(main, ["prepare", "cache", "--root", str(tmp_path), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "skipped 2 item(s)" in result.output and "tone.mp3: unreadable" in result.output
    skipped = pd.read_csv(layout.cache_dir(RATE) / "skipped.csv")
    assert sorted(skipped["path"]) == ["clips/mono 48k.flac", "clips/tone.mp3"]
    assert skipped["reason"].str.startswith("unreadable (").all()
    cache = AudioCache(tmp_path, RATE)
    assert len(cache) == 4 and "clips/tone.mp3" not in cache
    assert not cache.read(tmp_path / "clips" / "already 32k.wav").any()  # the evaluation set needs every clip


def test_cache_errors_are_clear(tmp_path):
    layout, files = make_indexed_audio(tmp_path)
    with pytest.raises(UserError, match="no cached audio at 32000 Hz"):
        AudioCache(tmp_path, RATE)
    with pytest.raises(UserError, match="--rate 100"):
        build_cache(layout, CacheRequest(100))
    build_cache(layout, CacheRequest(RATE, workers=1))
    with pytest.raises(UserError, match="not in the 32000 Hz audio cache"):
        AudioCache(tmp_path, RATE).read(tmp_path / "nope.wav")
    with open(layout.cache_dir(RATE) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another `dcase-t6 prepare cache`"):
            build_cache(layout, CacheRequest(RATE))
    with pytest.raises(UserError, match="no split index"):
        build_cache(Layout.at(tmp_path / "empty"), CacheRequest(RATE))
