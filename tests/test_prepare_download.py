"""Downloads against a local HTTP server (Range resume, dropped connections, MD5 mismatch) and the
whole `prepare clotho` flow on a small real release (7z archives + CSVs) served the same way."""

import hashlib

import numpy as np
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import Recorder
from dcase_t6.data import archive
from dcase_t6.data.clotho import CLOTHO_MD5, ClothoSource, prepare_clotho
from dcase_t6.data.download import DownloadPolicy, download
from dcase_t6.data.layout import Layout
from dcase_t6.data.split_index import read_index
from helpers.data import clotho_release
from helpers.servers import serving

DATA = np.random.default_rng(1).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
DATA_MD5 = hashlib.md5(DATA).hexdigest()


@pytest.fixture(autouse=True)
def py7zr_only(monkeypatch):
    monkeypatch.setattr(archive, "seven_zip_binary", lambda: None)


def fetch(url, target, md5=DATA_MD5, **kwargs) -> Recorder:
    """Download through a recording reporter, returned (its tasks: each download and MD5 check, in bytes)."""
    recorder = Recorder()
    download(url, target, md5, recorder, DownloadPolicy(retry_wait_s=0, **kwargs))
    return recorder


def test_interrupted_download_resumes_with_a_range_request(tmp_path):
    target = tmp_path / "big.7z"
    (tmp_path / "big.7z.part").write_bytes(DATA[:1_234_567])  # what an interrupted run left
    with serving({"big.7z": DATA}) as server:
        recorder = fetch(server.url + "big.7z", target)
    assert target.read_bytes() == DATA and not (tmp_path / "big.7z.part").exists()
    assert server.requests == [("big.7z", "bytes=1234567-")]
    # the bar starts where the part file ended and reaches the size; then the MD5 check reads every byte
    assert recorder.tasks == [
        {"description": "downloading big.7z", "total": len(DATA), "unit": "bytes", "completed": len(DATA)},
        {"description": "verifying big.7z.part", "total": len(DATA), "unit": "bytes", "completed": len(DATA)}]


def test_dropped_connection_is_retried_from_where_it_stopped(tmp_path):
    with serving({"big.7z": DATA}, drop_after=1_000_000) as server:
        fetch(server.url + "big.7z", tmp_path / "big.7z")
    assert (tmp_path / "big.7z").read_bytes() == DATA
    assert server.requests == [("big.7z", None), ("big.7z", "bytes=1000000-")]


def test_complete_part_file_is_only_verified(tmp_path):
    (tmp_path / "big.7z.part").write_bytes(DATA)
    with serving({"big.7z": DATA}) as server:
        fetch(server.url + "big.7z", tmp_path / "big.7z")
    assert server.requests == [("big.7z", f"bytes={len(DATA)}-")]  # answered 416: nothing left to send
    assert (tmp_path / "big.7z").read_bytes() == DATA


def test_checksum_mismatch_deletes_the_download_and_says_so(tmp_path):
    with serving({"big.7z": DATA[:-1] + b"\x00"}) as server, pytest.raises(UserError) as err:
        fetch(server.url + "big.7z", tmp_path / "big.7z")
    assert f"does not match the expected {DATA_MD5}" in str(err.value) and "re-run" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_and_unreachable_server_fail_with_the_fix(tmp_path):
    with serving({}) as server, pytest.raises(UserError, match="HTTP 404"):
        fetch(server.url + "nope.7z", tmp_path / "nope.7z", attempts=3)
    with pytest.raises(UserError, match="cannot connect.*re-run to resume"):
        fetch("http://127.0.0.1:9/x.7z", tmp_path / "x.7z", attempts=2)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A tiny Clotho v2.1 release (nine files) and its MD5s."""
    folder = tmp_path_factory.mktemp("release")
    return folder, clotho_release(folder)


def test_prepare_clotho_downloads_verifies_extracts_and_indexes_then_is_a_no_op(tmp_path, release):
    folder, md5s = release
    files = {name: (folder / name).read_bytes() for name in md5s}
    layout = Layout.at(tmp_path / "data")
    with serving(files, drop_after=5000) as server:
        summary = prepare_clotho(layout, ClothoSource(mirror=server.url, md5s=md5s),
                                 policy=DownloadPolicy(retry_wait_s=0))
        assert {split: counts["clips"] for split, counts in summary.splits.items()} == {
            "development-training": 4, "development-validation": 3, "development-testing": 5}
        assert summary.extracted == {"development": 4, "validation": 3, "evaluation": 5}
        index = read_index(layout.root, "clotho", "development-testing")
        assert len(index) == 25 and index["sample_rate"].eq(44100).all()
        assert (layout.audio_dir("clotho", "evaluation") / index["file_name"][0]).is_file()
        requests = len(server.requests)
        again = prepare_clotho(layout, ClothoSource(mirror=server.url, md5s=md5s))
        assert again.up_to_date and again.extracted == {"development": 0, "validation": 0, "evaluation": 0}
        assert len(server.requests) == requests  # nothing downloaded again


def test_prepare_clotho_offline_from_archives_via_cli(tmp_path, release, monkeypatch):
    folder, md5s = release
    for name, value in md5s.items():
        monkeypatch.setitem(CLOTHO_MD5, name, value)
    result = CliRunner().invoke(main, ["prepare", "clotho", "--root", str(tmp_path), "--archives", str(folder),
                                       "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert '"development-testing"' in result.output
    assert not (tmp_path / "clotho" / "archives").exists()  # nothing downloaded or copied


def test_offline_checksum_mismatch_and_missing_files_are_clear(tmp_path, release):
    folder, md5s = release
    layout = Layout.at(tmp_path / "data")
    with pytest.raises(UserError, match="clotho_metadata_validation.csv: MD5 .* delete it and re-run"):
        prepare_clotho(layout, ClothoSource(folder, md5s={**md5s, "clotho_metadata_validation.csv": "0" * 32}))
    with pytest.raises(UserError, match=r"missing 1 Clotho file\(s\) \(extra.csv\); download them from https://zenodo.org/records/4783391"):
        prepare_clotho(layout, ClothoSource(folder, md5s={**md5s, "extra.csv": "0" * 32}))
    assert not (layout.root / "index").exists() and not (layout.root / "clotho" / "audio").exists()
