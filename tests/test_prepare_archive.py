"""Safe 7z extraction with real archives: escaping members, truncation and corruption fail cleanly."""

import os

import numpy as np
import py7zr
import pytest

from dcase_t6.common.errors import UserError
from dcase_t6.data import archive
from dcase_t6.data.archive import extract_7z
from helpers.data import seven_zip

NOISE = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


@pytest.fixture(autouse=True)
def py7zr_only(monkeypatch):
    """Exercise the py7zr path even where a 7z binary is installed (tested separately below)."""
    monkeypatch.setattr(archive, "seven_zip_binary", lambda: None)


def leftovers(folder):
    """Temporary (dot) entries left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


def test_extracts_the_top_folder_into_the_target_and_replaces_it(tmp_path):
    source = seven_zip(tmp_path / "a.7z", {"development/x, y.wav": b"x", "development/z&#39;s.wav": b"z"})
    target = tmp_path / "audio" / "development"
    assert extract_7z(source, target) == 2
    assert sorted(p.name for p in target.iterdir()) == ["x, y.wav", "z&#39;s.wav"]
    assert extract_7z(seven_zip(tmp_path / "b.7z", {"new.wav": b"n"}), target) == 1
    assert [p.name for p in target.iterdir()] == ["new.wav"]
    assert leftovers(target.parent) == []


@pytest.mark.parametrize("member, why", [("../evil.txt", "contains '..'"), ("ok/../../evil.txt", "contains '..'"),
                                         ("/etc/evil.txt", "is an absolute path")])
def test_members_escaping_the_target_are_rejected_before_extraction(tmp_path, member, why):
    source = seven_zip(tmp_path / "evil.7z", {"development/ok.wav": b"ok", member: b"evil"}, unchecked=True)
    target = tmp_path / "out" / "development"
    with pytest.raises(UserError, match=why) as err:
        extract_7z(source, target)
    assert "evil.7z" in str(err.value) and "nothing was extracted" in str(err.value)
    assert not target.exists() and not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "out").exists()  # rejected before anything was created


def test_symbolic_links_are_rejected(tmp_path):
    os.symlink("/etc/passwd", tmp_path / "link")
    with py7zr.SevenZipFile(tmp_path / "link.7z", "w") as handle:
        handle.write(tmp_path / "link", "development/link")
    with pytest.raises(UserError, match="is a symbolic link"):
        extract_7z(tmp_path / "link.7z", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_truncated_or_corrupt_archive_names_the_fix_and_leaves_nothing(tmp_path, damage):
    good = seven_zip(tmp_path / "good.7z", {"development/a.wav": NOISE, "development/b.wav": NOISE[::-1]})
    data = bytearray(good.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0xFF
    bad = tmp_path / "clotho_audio_development.7z"
    bad.write_bytes(bytes(data))
    target = tmp_path / "audio" / "development"
    with pytest.raises(UserError, match="truncated or corrupt: delete it and re-run") as err:
        extract_7z(bad, target)
    assert str(bad) in str(err.value)
    assert not target.exists() and leftovers(target.parent) == []


@pytest.mark.skipif(archive.seven_zip_binary() is None, reason="no 7z binary on PATH")
def test_seven_zip_binary_path(tmp_path, monkeypatch):
    monkeypatch.undo()
    source = seven_zip(tmp_path / "a.7z", {"development/x, y.wav": b"x"})
    assert extract_7z(source, tmp_path / "out") == 1
    evil = seven_zip(tmp_path / "evil.7z", {"../evil.txt": b"e"}, unchecked=True)
    with pytest.raises(UserError, match="contains '..'"):
        extract_7z(evil, tmp_path / "out2")
    os.symlink("/etc/passwd", tmp_path / "link")
    with py7zr.SevenZipFile(tmp_path / "link.7z", "w") as handle:
        handle.write(tmp_path / "link", "development/link")
    with pytest.raises(UserError, match="is a symbolic link"):
        extract_7z(tmp_path / "link.7z", tmp_path / "out3")
    truncated = tmp_path / "t.7z"
    truncated.write_bytes(seven_zip(tmp_path / "n.7z", {"a.wav": NOISE}).read_bytes()[:-200])
    with pytest.raises(UserError, match="truncated or corrupt"):
        extract_7z(truncated, tmp_path / "out4")
    assert not any((tmp_path / name).exists() for name in ("out2", "out3", "out4"))
