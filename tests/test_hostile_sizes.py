"""Hostile sizes: matrices far wider or longer than any retrieval set, weights that overflow, hours-long clips.

Every case is a real command on real files. A matrix beyond the bounds of ``retrieval.matrices`` (100,000 audio
files, 500,000 queries, 100 million scores) is refused from its header before the scores are parsed: one line
naming the file, the count and the bound, in well under a second. `prepare cache` decodes a clip block by block
straight into the cache, so its memory does not grow with the clip; with --max-seconds it decodes only what it
keeps. Weights that overflow name the weights file and entry.
"""

import json
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.data.audio_cache import AudioCache
from dcase_t6.data.audio_io import load_audio
from dcase_t6.retrieval.matrices import MAX_FILES, MAX_QUERIES
from dcase_t6.submission.package import CSV_KIND, build_package, member_name
from dcase_t6.submission.report import TechnicalReport
from helpers.submission import PDF, label, make_system

RATE = 32000
CLIP_SECONDS, CLIP_RATE = 600, 44100  # a 10-minute clip at 44.1 kHz: 106 MB decoded as float32
KEPT_SECONDS = 30
JUNK = '"a caption whose quote never closes,0.5\r\n' + "garbage " * 1000


def run(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def assert_refused(result, *fragments) -> str:
    """Exit 2, one `error:` line holding every fragment, no traceback."""
    message = result.output.strip()
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "\n" not in message and message.startswith("error: "), result.output
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


def wide_csv(path: Path, files: int, quoted: bool = False) -> Path:
    """A header naming ``files`` audio files (quoted names holding commas, if asked), then rows that are not CSV."""
    names = (f'"clip,{i}.wav"' for i in range(files)) if quoted else (f"f{i}.wav" for i in range(files))
    path.write_text("index," + ",".join(names) + "\r\n" + JUNK, encoding="utf-8")
    return path


def small_csv(path: Path, files=("f0.wav", "f1.wav"), scores=((0.9, 0.1), (0.2, 0.8))) -> Path:
    rows = [f"q{i}," + ",".join(map(repr, row)) for i, row in enumerate(scores)]
    path.write_text("\r\n".join([",".join(["index", *files]), *rows]) + "\r\n", encoding="utf-8")
    return path


def captions(path: Path) -> Path:
    path.write_text("file_name,caption_1\nf0.wav,q0\nf1.wav,q1\n", encoding="utf-8")
    return path


# --- similarity matrices: refused from the header -------------------------------------------------------------


@pytest.mark.parametrize("files, quoted", [(1_000_001, False), (MAX_FILES + 1, False), (MAX_FILES + 1, True)],
                         ids=["million-columns", "one-over-the-bound", "quoted-names-with-commas"])
def test_evaluate_refuses_a_matrix_wider_than_the_bound_from_its_header(tmp_path, files, quoted):
    matrix = wide_csv(tmp_path / "wide.csv", files, quoted)
    began = time.perf_counter()
    result = run("evaluate", "-p", matrix, "-c", captions(tmp_path / "c.csv"))
    elapsed = time.perf_counter() - began
    assert_refused(result, f"{matrix}: the header names {files:,} audio files (columns), more than {MAX_FILES:,}",
                   "one column per clip")
    assert elapsed < 1.0, f"{elapsed:.2f} s: the rows were read"


def test_evaluate_stops_reading_rows_at_the_query_bound(tmp_path):
    """500,001 rows of one score, then rows that are not CSV: refused at the bound, the rest never parsed."""
    matrix = tmp_path / "long.csv"
    rows = "".join(f"q{i},0.5\r\n" for i in range(MAX_QUERIES + 1))
    matrix.write_text("index,f0.wav\r\n" + rows + JUNK, encoding="utf-8")
    assert_refused(run("evaluate", "-p", matrix, "-c", captions(tmp_path / "c.csv")),
                   f"{matrix}: more than {MAX_QUERIES:,} query rows for 1 audio files", f"{MAX_QUERIES:,} queries")


def npz_of_shape(path: Path, rows: int, files: int) -> Path:
    np.savez_compressed(path, scores=np.zeros((rows, files)), queries=np.array([f"q{i}" for i in range(rows)]),
                        files=np.array([f"f{i}.wav" for i in range(files)]))
    return path


@pytest.mark.parametrize("rows, files, problem", [
    (1, MAX_FILES + 1, f"{MAX_FILES + 1:,} audio files, more than {MAX_FILES:,}"),
    (MAX_QUERIES + 1, 1, f"{MAX_QUERIES + 1:,} queries, more than {MAX_QUERIES:,}")], ids=["wide", "long"])
def test_evaluate_refuses_an_npz_beyond_the_bounds_from_its_array_headers(tmp_path, rows, files, problem):
    matrix = npz_of_shape(tmp_path / "big.npz", rows, files)
    assert_refused(run("evaluate", "-p", matrix, "-c", captions(tmp_path / "c.csv")),
                   f"{matrix}: array 'scores' has shape ({rows}, {files}): {problem}")


def test_ensemble_refuses_a_wide_system_naming_it_and_writes_nothing(tmp_path):
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"weights": {"a": 0.5, "b": 0.5}}), encoding="utf-8")
    wide = wide_csv(tmp_path / "b.csv", 1_000_001)
    out = tmp_path / "ens.csv"
    began = time.perf_counter()
    result = run("ensemble", "--apply", "-w", weights, "-s", f"a={small_csv(tmp_path / 'a.csv')}", "-s", f"b={wide}",
                 "--out", out)
    assert time.perf_counter() - began < 1.0
    assert_refused(result, f"{wide}: the header names 1,000,001 audio files")
    assert not out.exists()


def test_package_check_reports_a_wide_matrix_member_from_its_header(tmp_path):
    system = make_system(tmp_path, 1)
    (tmp_path / "report.pdf").write_bytes(PDF)
    build_package([system], tmp_path / "good.zip", TechnicalReport(tmp_path / "report.pdf"))
    name = member_name(label(1), CSV_KIND)
    wide = wide_csv(tmp_path / "wide.csv", 1_000_001).read_bytes()
    zipped = tmp_path / "wide.zip"
    with zipfile.ZipFile(tmp_path / "good.zip") as good, \
            zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for info in good.infolist():
            archive.writestr(info.filename, wide if info.filename == name else good.read(info))
    began = time.perf_counter()
    result = run("package", "--check", zipped)
    assert time.perf_counter() - began < 2.0
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    problems = [line[4:] for line in result.output.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1, result.output
    assert problems[0].startswith(f"{name}: the header names 1,000,001 audio files (columns), more than 100,000")


# --- ensemble weights that overflow -----------------------------------------------------------------------------


def test_overflowing_weights_name_the_weights_file_and_entry_not_the_output(tmp_path):
    weights = tmp_path / "w.json"
    weights.write_text('{"weights": {"a": 1e308, "b": 0.5}}', encoding="utf-8")
    a = small_csv(tmp_path / "a.csv", scores=((9.0, 0.1), (0.2, 0.8)))
    out = tmp_path / "ens.csv"
    message = assert_refused(run("ensemble", "--apply", "-w", weights, "-s", f"a={a}", "-s",
                                 f"b={small_csv(tmp_path / 'b.csv')}", "--out", out),
                             f"error: {weights}: \"weights\" entry 'a' is 1e+308", f"the scores of {a}",
                             "row 2, column 2", "scale them all down")
    assert "ens.csv" not in message and not out.exists()


# --- `prepare cache` of a long clip: memory bounded by a block, --max-seconds decodes only what it keeps ----------


@pytest.fixture(scope="module")
def long_clip_root(tmp_path_factory) -> Path:
    """A data root whose evaluation set is one 10-minute 44.1 kHz clip."""
    root = tmp_path_factory.mktemp("long-clip")
    audio = root / "audio"
    audio.mkdir()
    samples = (np.random.default_rng(0).standard_normal(CLIP_SECONDS * CLIP_RATE) * 3000).astype(np.int16)
    sf.write(audio / "long.wav", samples, CLIP_RATE, subtype="PCM_16")
    pd.DataFrame({"caption": ["a long recording"]}).to_csv(root / "queries.csv", index=False)
    result = run("prepare", "eval", "--root", root, "--captions", root / "queries.csv", "--audio", audio,
                 "--workers", "1")
    assert result.exit_code == 0, result.output
    return root


def traced_cache(root: Path, *options) -> int:
    """Run `prepare cache` (one process) from a fresh cache; return the peak of traced allocations in bytes."""
    cache = root / "cache"
    if cache.exists():
        for path in sorted(cache.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    tracemalloc.start()
    try:
        result = run("prepare", "cache", "--root", root, "--rate", RATE, "--workers", 1, *options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    return peak


def test_max_seconds_decodes_only_what_the_cache_keeps(long_clip_root):
    """Decoding the whole 10-minute clip takes 106 MB; keeping its first 30 s must stay within a few blocks."""
    peak = traced_cache(long_clip_root, "--max-seconds", KEPT_SECONDS)
    assert peak < 8 << 20, f"peak {peak / 1e6:.0f} MB: more than the kept {KEPT_SECONDS} s was decoded"
    cache = AudioCache(long_clip_root, RATE)
    kept = cache.read("audio/long.wav")
    assert len(kept) == KEPT_SECONDS * RATE
    np.testing.assert_array_equal(kept, load_audio(long_clip_root / "audio" / "long.wav", RATE)[:len(kept)])


def test_a_long_clip_caches_in_memory_that_does_not_grow_with_its_length(long_clip_root):
    """The whole clip is 77 MB at 32 kHz (106 MB decoded): the build must stay within a few blocks (8 MB)."""
    peak = traced_cache(long_clip_root)
    assert peak < 8 << 20, f"peak {peak / 1e6:.0f} MB grows with the clip"
    cached = AudioCache(long_clip_root, RATE).read("audio/long.wav")
    assert len(cached) == CLIP_SECONDS * RATE
    np.testing.assert_array_equal(cached, load_audio(long_clip_root / "audio" / "long.wav", RATE))


def test_max_seconds_never_decodes_a_damaged_part_past_what_it_keeps(tmp_path):
    """A 2-minute FLAC whose second half is zeroed: cached whole it is skipped (and nothing of it stays in the
    shard); with --max-seconds 30 the damage is never decoded and the first 30 s are cached."""
    audio = tmp_path / "audio"
    audio.mkdir()
    source = audio / "damaged.flac"
    sf.write(source, (np.random.default_rng(1).standard_normal(120 * CLIP_RATE) * 3000).astype(np.int16), CLIP_RATE,
             subtype="PCM_16")
    data = bytearray(source.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    source.write_bytes(bytes(data))
    pd.DataFrame({"caption": ["a damaged recording"]}).to_csv(tmp_path / "queries.csv", index=False)
    assert run("prepare", "eval", "--root", tmp_path, "--captions", tmp_path / "queries.csv", "--audio", audio,
               "--workers", "1").exit_code == 0
    whole = run("prepare", "cache", "--root", tmp_path, "--rate", RATE, "--workers", 1)
    assert whole.exit_code == 0 and "damaged.flac: unreadable (" in " ".join(whole.output.split()), whole.output
    assert sum(path.stat().st_size for path in (tmp_path / "cache").rglob("audio-*")) == 0
    capped = run("prepare", "cache", "--root", tmp_path, "--rate", RATE, "--workers", 1, "--max-seconds", KEPT_SECONDS)
    assert capped.exit_code == 0 and "unreadable" not in capped.output, capped.output
    kept = AudioCache(tmp_path, RATE).read("audio/damaged.flac")
    assert len(kept) == KEPT_SECONDS * RATE and np.abs(kept).max() > 0.05
