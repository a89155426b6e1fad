"""Hostile processes and data: killed commands and their workers, leftovers of killed writers, clips the cache
skipped, truncated WAVs, a resumed epoch's record."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import Recorder
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.data.audio_io import load_audio
from dcase_t6.data.cache_build import CacheRequest, build_cache
from dcase_t6.data.evalset import prepare_eval
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import read_index
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from dcase_t6.training.data import BatchSource, load_pairs, sha256_of_text

RATE = 16000
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63]  # temporary names: .<name>.<pid>@<host>.<random>


# --- processes ------------------------------------------------------------------------------------------------

def _children() -> dict[int, int]:
    """Parent pid of every process, from /proc/<pid>/stat."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children...)."""
    parents, found, frontier = _children(), set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a zombie holds no file)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_and_collect(process: subprocess.Popen, ready, timeout_s: float = 60.0) -> tuple[set[int], set[int]]:
    """Wait until ``ready(descendants)``, ``kill -9`` the process, and return its descendants then and those
    still running 3 s later."""
    deadline = time.monotonic() + timeout_s
    below: set[int] = set()
    while time.monotonic() < deadline and process.poll() is None:
        below = descendants(process.pid)
        if ready(below):
            break
        time.sleep(0.02)
    assert process.poll() is None and ready(below), "the command ended before its workers were seen"
    below |= descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(running(pid) for pid in below):
        time.sleep(0.05)
    left = {pid for pid in below if running(pid)}
    for pid in left:  # do not leave them behind after a failure
        os.kill(pid, signal.SIGKILL)
    return below, left


def test_prepare_cache_workers_die_with_a_killed_command(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(0)
    sf.write(clips / "clip-000.wav", (0.3 * rng.standard_normal(44100 * 30)).astype(np.float32), 44100,
             subtype="PCM_16")
    for number in range(1, 240):  # 240 clips of 30 s (hard links: no disk), several seconds to decode
        os.link(clips / "clip-000.wav", clips / f"clip-{number:03d}.wav")
    pd.DataFrame({"caption": ["a query"]}).to_csv(tmp_path / "queries.csv", index=False)
    prepare_eval(Layout.at(tmp_path / "data"), tmp_path / "queries.csv", clips, workers=2)
    process = subprocess.Popen([sys.executable, "-m", "dcase_t6", "prepare", "cache", "--root", str(tmp_path / "data"),
                                "--rate", str(RATE), "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = process.pid

    def decoding(below: set[int]) -> bool:  # two workers (children of the fork server) are up and writing
        parents = _children()
        workers = [pid for pid in below if parents.get(pid) not in (parent, None)]
        shards = list((tmp_path / "data" / "cache" / str(RATE)).glob("audio-*.f32"))
        return len(workers) >= 2 and sum(p.stat().st_size for p in shards) > 0

    below, left = kill_and_collect(process, decoding)
    assert len(below) >= 3  # fork server, resource tracker, workers
    assert left == set(), f"{len(left)} of {len(below)} processes of the killed command still run"


LOADER_SCRIPT = """
import sys, time, types
import torch
from dcase_t6.training.data import TrainingData

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 10000
    def __getitem__(self, index):
        time.sleep(0.05)
        return index

stub = types.SimpleNamespace(source=lambda epoch, batches: Slow(), workers=2,
                               world=types.SimpleNamespace(device=torch.device("cpu")))
for item in TrainingData.loader(stub, 0, list(range(10000)), start=0):
    print(item, flush=True)
"""


def test_training_loader_workers_die_with_a_killed_trainer(tmp_path):
    script = tmp_path / "loader.py"
    script.write_text(textwrap.dedent(LOADER_SCRIPT))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout.readline().strip() == b"0"  # workers are loading batches
    below, left = kill_and_collect(process, lambda below: len(below) >= 2)
    process.stdout.close()
    assert len(below) >= 2
    assert left == set(), f"{len(left)} DataLoader worker(s) of the killed process still run"


# --- leftovers of killed writers ------------------------------------------------------------------------------

def dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def make_indexed_clips(root: Path, count: int = 3) -> list[Path]:
    clips = root / "clips"
    clips.mkdir(parents=True)
    rng = np.random.default_rng(1)
    paths = []
    for number in range(count):
        path = clips / f"clip-{number}.wav"
        sf.write(path, (0.2 * rng.standard_normal(22050 + 4410 * number)).astype(np.float32), 22050)
        paths.append(path)
    pd.DataFrame({"caption": ["a query"]}).to_csv(root / "queries.csv", index=False)
    prepare_eval(Layout.at(root), root / "queries.csv", clips, workers=1)
    return paths


def test_temp_file_of_a_killed_writer_is_removed_by_the_next_run(tmp_path):
    paths = make_indexed_clips(tmp_path)
    build_cache(Layout.at(tmp_path), CacheRequest(RATE))
    directory = Layout.at(tmp_path).cache_dir(RATE)
    stale = directory / f".index.csv.{dead_pid()}@{HOST}.k1ll3d00.tmp"
    stale.write_bytes(b"half a table" * 100_000)  # what a writer killed before its rename leaves
    with subprocess.Popen(["sleep", "30"]) as live_writer:
        live = directory / f".index.csv.{live_writer.pid}@{HOST}.wr1t1ng0.tmp"
        live.write_bytes(b"being written")
        (paths[0]).touch()  # something to do, so the index is written again
        result = CliRunner().invoke(main, ["prepare", "cache", "--root", str(tmp_path), "--rate", str(RATE)])
        live_writer.kill()
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.read_bytes() == b"being written"
    cache = AudioCache(tmp_path, RATE)
    assert len(cache) == 3
    for path in paths:
        np.testing.assert_array_equal(cache.read(path), load_audio(path, RATE))


def test_staging_folder_of_a_killed_generator_is_removed_by_the_next_run(tmp_path):
    small = SyntheticConfig(seed=3, development=2, validation=1, evaluation=1, min_duration=2.0, max_duration=2.5)
    prepare_synthetic(Layout.at(tmp_path), small)
    stale = tmp_path / f".synthetic.tmp-{dead_pid()}@{HOST}.k1ll3d00"
    (stale / "development").mkdir(parents=True)
    (stale / "development" / "half.wav").write_bytes(b"RIFF" + b"\0" * 100_000)
    live = tmp_path / f".synthetic.tmp-{os.getpid()}@{HOST}.wr1t1ng0"
    live.mkdir()
    report = prepare_synthetic(Layout.at(tmp_path), small, force=True)
    assert report.generated and not stale.exists() and live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".synthetic")) == [live.name]
    assert read_index(tmp_path, "synthetic")["path"].map(lambda p: Path(p).is_file()).all()


# --- clips the cache skipped ----------------------------------------------------------------------------------

TINY = {"datasets": "synthetic", "model.backbone": "tiny-cnn", "model.text_model": "tiny-random",
        "model.embed_dim": 16, "batch_size": 8, "epochs": 1, "lr": 1e-3, "audio_seconds": 1.0,
        "warmup_epochs": 0.5, "decay_epochs": 1.0}


@pytest.fixture
def broken_root(tmp_path) -> Path:
    """A tiny synthetic dataset indexed while intact; then one training and one validation clip are broken."""
    root = tmp_path / "data"
    prepare_synthetic(Layout.at(root), SyntheticConfig(seed=5, development=6, validation=3, evaluation=2,
                                                       min_duration=2.0, max_duration=2.5))
    index = read_index(root, "synthetic")
    for split in ("development-training", "development-validation"):
        Path(index[index["split"] == split]["path"].iloc[0]).write_bytes(b"not audio any more")
    return root


def test_training_leaves_out_clips_the_cache_skipped_and_resumes_bit_for_bit(broken_root, tmp_path):
    config = build_config(None, {**TINY, "data_root": str(broken_root), "name": "full"})
    recorder = Recorder()
    full = training.train_new(tmp_path / "a", config, reporter=recorder)
    assert full.status == "finished"
    warnings = [text for kind, text in recorder.messages if kind == "warning" and "left out" in text]
    assert len(warnings) == 2 and all("skipped.csv" in line for line in warnings)
    assert "left out 5 caption pair(s) of synthetic development-training" in warnings[0]
    assert "left out 5 query(ies) of synthetic development-validation" in warnings[1]
    store = AudioCache(broken_root, 16000)
    pairs = load_pairs(config, store)
    assert len(pairs.captions) == 25 and all(path in store for path in pairs.paths)
    run = Registry(tmp_path / "a").run(full.run)
    assert run.data_fingerprint == pairs.fingerprint == load_pairs(config, store).fingerprint
    assert run.data_fingerprint == sha256_of_text("\n".join(f"{p}\t{c}" for p, c in zip(pairs.paths, pairs.captions)))
    assert run.data_fingerprint != load_pairs(config).fingerprint
    stopped = training.train_new(tmp_path / "b", build_config(None, {**TINY, "data_root": str(broken_root),
                                                                     "name": "stopped", "max_steps": 1}))
    resumed = training.resume(tmp_path / "b", stopped.run)
    assert resumed.status == "finished" and resumed.step == full.step == 3  # 25 pairs: 3 batches of 8
    expected = torch.load(Registry(tmp_path / "a").file(full.run, "checkpoint", "last").path, weights_only=True)
    actual = torch.load(Registry(tmp_path / "b").file(stopped.run, "checkpoint", "last").path, weights_only=True)
    assert all(torch.equal(expected["model"][key], actual["model"][key]) for key in expected["model"])
    assert Registry(tmp_path / "b").run(stopped.run).data_fingerprint == run.data_fingerprint


def test_training_on_a_cache_that_skipped_every_clip_says_which_files_and_how_to_fix(broken_root, tmp_path):
    for path in read_index(broken_root, "synthetic", "development-training")["path"].unique():
        Path(path).write_bytes(b"")
    result = CliRunner().invoke(main, ["--workdir", str(tmp_path / "work"), "train", "--set",
                                       f"data_root={broken_root}"] +
                                [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if "error:" in line]
    assert len(error) == 1
    assert "skipped.csv: 6 clip(s) of synthetic development-training were skipped" in error[0]
    assert "re-encode or remove" in error[0] and "dcase-t6 prepare <dataset>" in error[0]
    with pytest.raises(UserError, match="the 16000 Hz audio cache skipped it .*re-encode or remove"):
        AudioCache(broken_root, 16000).read(read_index(broken_root, "synthetic", "development-training")["path"][0])


# --- truncated WAV --------------------------------------------------------------------------------------------

def test_truncated_wav_is_cached_at_what_decodes_and_reported(tmp_path):
    paths = make_indexed_clips(tmp_path, count=2)
    whole = paths[1].read_bytes()
    data_start = whole.find(b"data") + 8
    frames_left = 11025
    paths[1].write_bytes(whole[: data_start + 2 * frames_left])  # 16-bit; the header still promises 26460 frames
    result = CliRunner().invoke(main, ["prepare", "cache", "--root", str(tmp_path), "--rate", "22050", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [item["path"] for item in report["truncated"]] == ["clips/clip-1.wav"]
    assert f"26460 frames, {frames_left} decode" in report["truncated"][0]["reason"]
    listed = pd.read_csv(report["truncated_file"])
    assert listed["path"].tolist() == ["clips/clip-1.wav"]
    assert len(AudioCache(tmp_path, 22050).read(paths[1])) == frames_left
    again = CliRunner().invoke(main, ["prepare", "cache", "--root", str(tmp_path), "--rate", "22050"])
    assert again.exit_code == 0 and "2 up to date" in again.output
    assert "1 truncated file(s)" in again.output and "clips/clip-1.wav: truncated" in again.output
    paths[1].write_bytes(whole)  # repaired: no longer listed
    repaired = json.loads(CliRunner().invoke(main, ["prepare", "cache", "--root", str(tmp_path), "--rate", "22050",
                                                    "--json"]).stdout)
    assert repaired["truncated"] == [] and pd.read_csv(repaired["truncated_file"]).empty


# --- a resumed epoch's record ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    """6 / 2 / 1 clips of 2-2.5 s: 30 training pairs, 4 batches of 8 an epoch."""
    root = tmp_path_factory.mktemp("small-data")
    prepare_synthetic(Layout.at(root), SyntheticConfig(seed=7, development=6, validation=2, evaluation=1,
                                                       min_duration=2.0, max_duration=2.5))
    return root


def test_resumed_epoch_record_covers_the_whole_epoch(small_root, tmp_path, monkeypatch):
    overrides = {**TINY, "data_root": str(small_root)}
    whole = training.train_new(tmp_path / "whole", build_config(None, {**overrides, "name": "whole"}))
    expected = Registry(tmp_path / "whole").run(whole.run).epochs[0]
    real = BatchSource.__getitem__
    spent = {"part2": 0.0}

    def slow(self, index):  # the first part of the epoch waits 0.6 s for each batch
        time.sleep(0.6)
        return real(self, index)

    monkeypatch.setattr(BatchSource, "__getitem__", slow)
    stopped = training.train_new(tmp_path / "split", build_config(None, {**overrides, "name": "split",
                                                                         "max_steps": 2}))
    assert stopped.status == "stopped" and stopped.step == 2
    last = Registry(tmp_path / "split").file(stopped.run, "checkpoint", "last").path
    part1 = torch.load(last, weights_only=True)["position"]["epoch_sums"]["seconds"]
    assert part1 >= 1.2

    def timed(self, index):
        started = time.perf_counter()
        try:
            return real(self, index)
        finally:
            spent["part2"] += time.perf_counter() - started

    monkeypatch.setattr(BatchSource, "__getitem__", timed)
    started = time.perf_counter()
    resumed = training.resume(tmp_path / "split", stopped.run)
    part2_wall = time.perf_counter() - started
    assert resumed.step == whole.step == 4
    record = Registry(tmp_path / "split").run(stopped.run).epochs[0]
    assert record["train_loss"] == expected["train_loss"]
    assert {k: v for k, v in record.items() if k.startswith("train_")} == \
        {k: v for k, v in expected.items() if k.startswith("train_")}
    assert part1 + spent["part2"] <= record["seconds"] <= part1 + part2_wall + 0.01
    assert record["data_wait_fraction"] * record["seconds"] >= 1.2  # the waits before the stop count too
