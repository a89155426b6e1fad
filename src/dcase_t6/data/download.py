"""Resumable HTTP downloads with MD5 verification and progress through the caller's reporter.

A download streams into ``<name>.part``; an interrupted transfer (dropped connection, Ctrl-C, a
killed process) is resumed with an HTTP ``Range`` request on the next attempt or the next run. The
file gets its final name only after its MD5 matches. Verified files are remembered by size and
modification time in a small JSON file, so re-runs do not hash gigabytes again.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json, write_json
from dcase_t6.common.reporting import BYTES, SILENT, Reporter

CHUNK = 1 << 20
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}


class IncompleteTransfer(Exception):
    """The server closed the connection before sending every byte it announced."""


@dataclass(frozen=True)
class DownloadPolicy:
    """How hard a download tries.

    Attributes:
        attempts: tries in all (each resumes from the part file) before giving up.
        retry_wait_s: seconds before the first retry; doubled before each next one.
        timeout_s: seconds a connection may stay silent before the attempt fails.
    """

    attempts: int = 5
    retry_wait_s: float = 2.0
    timeout_s: float = 60.0


def download(url: str, target: Path, md5: str, reporter: Reporter = SILENT,
             policy: DownloadPolicy = DownloadPolicy()) -> None:
    """Download ``url`` to ``target`` through ``target.part`` (resuming it, retrying as ``policy`` says), verify
    the MD5, then rename."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, policy.attempts + 1):
        try:
            _fetch(url, part, reporter, policy.timeout_s)
            break
        except (OSError, http.client.HTTPException, IncompleteTransfer) as err:
            if _fatal(err) or attempt == policy.attempts:
                size = part.stat().st_size if part.exists() else 0
                raise UserError(f"{url}: download failed ({_describe(err)}) after {attempt} attempt(s); "
                                f"{size} bytes kept in {part}: re-run to resume") from None
            time.sleep(policy.retry_wait_s * 2 ** (attempt - 1))
    actual = file_md5(part, reporter)
    if actual != md5:
        part.unlink()
        raise UserError(f"{target.name}: MD5 {actual} does not match the expected {md5}; the corrupt download "
                        f"was deleted: re-run to download it again")
    os.replace(part, target)


def _fetch(url: str, part: Path, reporter: Reporter, timeout_s: float) -> None:
    """Stream ``url`` into ``part``, asking for the missing bytes only when ``part`` already has some."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "dcase-t6", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the part is complete (the MD5 decides)
            return
        raise
    with response:
        resumed = offset > 0 and response.status == 206 and _range_start(response) == offset
        offset = offset if resumed else 0
        length = int(response.headers.get("Content-Length") or 0)
        received = 0
        with reporter.task(f"downloading {part.name[:-5]}", (offset + length) or None, BYTES, offset) as task, \
                open(part, "ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                task.advance(len(chunk))
    if length and received < length:
        raise IncompleteTransfer(f"received {received} of {length} bytes")


def _range_start(response) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _fatal(err: Exception) -> bool:
    """True for errors a retry cannot fix (404, 403, ...)."""
    return isinstance(err, urllib.error.HTTPError) and err.code not in RETRYABLE_HTTP


def _describe(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect: {err.reason}"
    return str(err) or type(err).__name__


def file_md5(path: Path, reporter: Reporter = SILENT) -> str:
    """MD5 of a file, with a progress bar."""
    digest = hashlib.md5()
    with reporter.task(f"verifying {path.name}", path.stat().st_size, BYTES) as task, open(path, "rb") as handle:
        while chunk := handle.read(8 * CHUNK):
            digest.update(chunk)
            task.advance(len(chunk))
    return digest.hexdigest()


class VerifiedFiles:
    """Remembers files whose MD5 matched, by path, size and modification time."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict = read_json(path, "delete it; the files are verified again") if path.is_file() else {}

    def check(self, file: Path, md5: str, reporter: Reporter = SILENT) -> None:
        """Fail with the fix if ``file``'s MD5 is not ``md5``; hash only if it changed since the last check."""
        stat = file.stat()
        stamp = {"md5": md5, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if self.entries.get(str(file)) == stamp:
            return
        actual = file_md5(file, reporter)
        if actual != md5:
            raise UserError(f"{file}: MD5 {actual} does not match the expected {md5}; the file is corrupt or "
                            "incomplete: delete it and re-run (without --archives it is downloaded again)")
        self.entries[str(file)] = stamp
        write_json(self.entries, self.path)
