"""Folder operations that never leave a half-written result in place.

Staging and trash folders carry their writer in their names (``.<name>.tmp-<pid>@<host>.<random>``,
``.<name>.old-<pid>@<host>.<random>``); those of a killed run are removed by the next run for the same
target, those of a live process are left alone (see ``dcase_t6.common.atomic``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dcase_t6.common.atomic import owner_tag, remove_stale
from dcase_t6.common.errors import UserError
from dcase_t6.common.outputs import MARKER, foreign_entries, mark_output


@contextlib.contextmanager
def exclusive_lock(folder: Path, name: str, busy: str) -> Iterator[None]:
    """Hold the lock file ``folder/name`` for the block (created with the folder if missing): one writer at a time.

    Raises:
        UserError: another process holds it: "FOLDER: ``busy``" (who writes it, and what to do).
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder}: {busy}") from None
        yield


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` (same file system), removed on exit whatever happens.

    Leftovers of a killed earlier run for the same target are removed first.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    remove_stale(target.parent, prefix)
    remove_stale(target.parent, f".{target.name}.old-")
    for legacy in target.parent.glob(f"{prefix}*"):  # named before owners were recorded
        if "@" not in legacy.name[len(prefix):]:
            shutil.rmtree(legacy, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix + owner_tag(), dir=target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(source: Path, target: Path) -> None:
    """Move ``source`` (a staging folder or inside one) to ``target``; an existing ``target`` is moved into a
    trash folder first and removed afterwards."""
    if not target.exists():
        source.rename(target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{owner_tag()}", dir=target.parent))
    target.rename(trash / target.name)
    try:
        source.rename(target)
    except OSError:
        (trash / target.name).rename(target)  # put the previous version back
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def replace_owned_dir(source: Path, target: Path, command: str, legacy_marker: str | None = None) -> None:
    """``replace_dir`` for an output folder: ``source`` gets the marker listing its entries (see
    ``dcase_t6.common.outputs``), and an existing ``target`` is replaced only if it is empty or holds the marker and
    nothing it does not list (checked again now, right before the swap); a UserError otherwise, nothing moved."""

    mark_output(source, command)
    if target.is_dir() and not target.is_symlink() and any(target.iterdir()):
        foreign = foreign_entries(target, legacy_marker)
        if foreign is None or foreign:
            what = f"holds {foreign[0]!r}, which" if foreign else f"has no {MARKER}: it"
            raise UserError(f"{target}: {what} dcase-t6 did not write; nothing was replaced: move it out, or choose "
                            "another folder")
    elif os.path.lexists(target) and not target.is_dir():
        raise UserError(f"{target}: a file, not a folder; nothing was replaced: choose another folder")
    replace_dir(source, target)
