"""Atomic file writing: write to a temporary file beside the target, then rename.

A temporary name carries its writer: ``.<target name>.<pid>@<host>.<random>.tmp``. A writer killed before
the rename (``kill -9``, a power cut) leaves it behind; the next write of the same target removes the
temporary files of that target whose writer, on this host, is no longer running. A live writer's file
(another process writing the same target now) is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
_OWNER = re.compile(r"(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.")


def owner_tag() -> str:
    """``<pid>@<host>.``: the part of a temporary name that says which process writes it."""
    return f"{os.getpid()}@{HOST}."


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, which holds no file, counts as dead)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def remove_stale(folder: Path, prefix: str) -> list[Path]:
    """Remove the entries of ``folder`` named ``prefix`` + ``<pid>@<host>.…`` whose writer on this host is dead.

    Args:
        folder: where the leftovers are.
        prefix: the name part before the owner tag (e.g. ``.index.csv.``).

    Returns:
        What was removed (files or folders).
    """
    removed = []
    try:
        entries = [entry for entry in os.scandir(folder) if entry.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        owner = _OWNER.match(entry.name, len(prefix))
        if owner is None or owner["host"] != HOST or process_alive(int(owner["pid"])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    Temporary files of ``target`` left by dead writers are removed first (see the module docstring).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, f".{target.name}.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{owner_tag()}", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise _naming(err, target) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes owner-only files; use the usual permissions
        os.replace(tmp_path, target)
    except OSError as err:
        if err.filename is None or os.fsdecode(err.filename) == tmp:
            raise _naming(err, target) from err
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def _naming(err: OSError, target: Path) -> OSError:
    """``err`` (a write to the temporary file, a full disk...) naming ``target``, the file the user asked for."""
    return OSError(err.errno, err.strerror or str(err), str(target)) if err.errno else err


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``target`` when the block succeeds."""
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
