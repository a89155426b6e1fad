"""Defences of `package --check` against hostile zips: entry checks before any data is inflated, bounded reads.

Every member is inflated in 1 MiB chunks and counted; none may exceed a bound derived from what a legitimate
file of its kind can need (``ZipInfo.file_size`` is checked first, so a bomb is refused without inflating it):

* ``<label>.output.csv``: a header of 16 + F x 1,024 bytes plus R rows of 1,024 + F x 32 bytes, i.e. 1 KiB per
  quoted file name or caption and 32 bytes per score (a comma and a float's shortest repr, at most 24
  characters). R and F are ``--expected-rows``/``--expected-files``, else the largest legitimate matrix, Clotho's
  5,225 captions x 1,045 files: about 181 MB (the CSV ``dcase-t6 package`` writes for that shape is ~100 MB).
* ``<label>.meta.yaml``: 256 KiB, ``metadata.MAX_META_BYTES`` (the template is 10 kB).
* the report PDF and any other member: 100 MiB.

A CSV member is copied to a temporary file of at most its bound (``read_csv`` reads paths), so memory and disk
stay bounded by what the expected matrix legitimately needs.
"""

from __future__ import annotations

import codecs
import re
import stat
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable

from dcase_t6.common.duplicates import duplicates
from dcase_t6.submission.metadata import MAX_META_BYTES

MAX_ENTRIES = 64  # 4 systems x 3 files, plus folder entries, with room to spare
LARGEST_MATRIX = (5225, 1045)  # Clotho development-validation: captions x audio files
NAME_BYTES, CELL_BYTES = 1024, 32
META_BYTES = MAX_META_BYTES
OTHER_BYTES = 100 << 20
CHUNK = 1 << 20
# Stored and deflate: inflated in bounded chunks. zipfile inflates bzip2/LZMA data without an output limit.
SAFE_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_ENCRYPTED, _PATCHED, _STRONG_ENCRYPTION = 0x1, 0x20, 0x40  # general purpose flag bits


class MemberError(Exception):
    """A member that cannot be read safely or correctly; the message is the whole problem line."""


def csv_bound(rows: int | None, files: int | None) -> int:
    """Most bytes a submission CSV of ``rows`` queries x ``files`` audio files can legitimately need.

    Args:
        rows: expected query rows, or None for the largest legitimate matrix's.
        files: expected audio file columns, or None for the largest legitimate matrix's.

    Returns:
        The bound in bytes (see the module docstring).
    """
    rows = LARGEST_MATRIX[0] if rows is None else rows
    files = LARGEST_MATRIX[1] if files is None else files
    return 16 + files * NAME_BYTES + rows * (NAME_BYTES + files * CELL_BYTES)


def entry_count_problem(path: Path) -> str | None:
    """Why the zip at ``path`` holds too many entries to be a submission, read from its end record only.

    Args:
        path: the zip file.

    Returns:
        The problem line, or None (also when the end record is unreadable: ``ZipFile`` then reports it).
    """
    with open(path, "rb") as handle:
        end = zipfile._EndRecData(handle)  # private, but stable since Python 2
    if end is None or end[zipfile._ECD_ENTRIES_TOTAL] <= MAX_ENTRIES:
        return None
    return (f"{path}: {end[zipfile._ECD_ENTRIES_TOTAL]:,} entries; a submission holds at most {MAX_ENTRIES} "
            "(4 systems x 3 files); rebuild it with `dcase-t6 package`")


def unsafe_name(name: str) -> bool:
    """True for an entry name an extractor could write outside its folder with: absolute, ``..`` or backslash."""
    return name.startswith("/") or "\\" in name or bool(_DRIVE.match(name)) or ".." in name.split("/")


def entry_problems(infos: list[zipfile.ZipInfo], limit_of: Callable[[str], int]) -> dict[str, str]:
    """Problems visible in the central directory, before inflating anything: the first one per entry name.

    Args:
        infos: the zip's entries, in order.
        limit_of: the most bytes a member of that name may inflate to.

    Returns:
        ``{name: problem line}`` for every name that must not be read.
    """
    found = {f"{repeat.value}": f"{repeat.value}: appears {len(repeat.positions)} times in the zip (which copy an "
             "extractor keeps is undefined); rebuild the zip with one entry per file"
             for repeat in duplicates(info.filename for info in infos)}
    for info in infos:
        problem = _entry_problem(info, limit_of(info.filename))
        if problem and info.filename not in found:
            found[info.filename] = f"{info.filename}: {problem}"
    return found


def _entry_problem(info: zipfile.ZipInfo, limit: int) -> str | None:
    if unsafe_name(info.filename):
        return "unsafe path (absolute, with .. or a backslash): extracting it writes outside the folder; remove it"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link; zip the file itself"
    if info.flag_bits & (_ENCRYPTED | _STRONG_ENCRYPTION):
        return "is encrypted; the organisers cannot open it: zip it without a password"
    if info.flag_bits & _PATCHED:
        return "holds compressed patched data, which zip readers do not support; rebuild it with `dcase-t6 package`"
    if info.compress_type not in SAFE_METHODS:
        return (f"uses compression method {info.compress_type}; only stored or deflate can be checked (and "
                "extracted everywhere): rebuild the zip with `dcase-t6 package` or plain `zip`")
    if info.file_size > limit:
        return f"declares {info.file_size:,} bytes uncompressed, {_over(limit)}"
    return None


def _over(limit: int) -> str:
    return (f"more than the {limit:,} a file of its kind can need (zip bomb or wrong file); check "
            "--expected-rows/--expected-files and rebuild the zip")


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int,
                sink: Callable[[bytes], object] | None = None) -> int:
    """Inflate a member in chunks, verifying its CRC, passing each chunk to ``sink``; never more than ``limit``.

    Args:
        archive: the open zip.
        info: the member (already passed ``entry_problems``).
        limit: the most bytes it may inflate to.
        sink: called with each chunk (None: only count and verify).

    Returns:
        The number of bytes inflated.

    Raises:
        MemberError: corrupt data, or more than ``limit`` bytes.
    """
    size = 0
    try:
        with archive.open(info) as handle:
            while chunk := handle.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise MemberError(f"{info.filename}: inflates to {_over(limit)}")
                if sink is not None:
                    sink(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as err:
        raise MemberError(f"{info.filename}: corrupt data in the zip ({err}); rebuild the zip") from None
    return size


def read_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """The whole member, at most ``limit`` bytes (see ``read_member``)."""
    parts: list[bytes] = []
    read_member(archive, info, limit, parts.append)
    return b"".join(parts)


def copy_utf8(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, target: BinaryIO) -> None:
    """Copy a text member to ``target``, at most ``limit`` bytes, checking on the way that it is UTF-8.

    Raises:
        MemberError: as ``read_member``, or not UTF-8 (naming the line of the first bad byte).
    """
    check = _Utf8Check(info.filename)

    def sink(chunk: bytes) -> None:
        check.feed(chunk)
        target.write(chunk)

    read_member(archive, info, limit, sink)
    check.feed(b"", final=True)


class _Utf8Check:
    """Incremental UTF-8 validation that knows the line it is on."""

    def __init__(self, name: str):
        self.name, self.lines = name, 1
        self.decoder = codecs.getincrementaldecoder("utf-8")()

    def feed(self, chunk: bytes, final: bool = False) -> None:
        pending = len(self.decoder.getstate()[0])
        try:
            self.decoder.decode(chunk, final)
        except UnicodeDecodeError as err:
            line = self.lines + chunk[:max(err.start - pending, 0)].count(b"\n")
            raise MemberError(f"{self.name}: not UTF-8 text (byte {err.object[err.start]:#04x} on line {line}: "
                              f"{err.reason}); save the CSV as UTF-8") from None
        self.lines += chunk.count(b"\n")
