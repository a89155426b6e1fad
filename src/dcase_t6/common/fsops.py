"""Folder operations that never leave a half-written result in place."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` (same file system), removed on exit whatever happens.

    Leftovers of a killed earlier run for the same target are removed first.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    for stale in target.parent.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
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
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    target.rename(trash / target.name)
    try:
        source.rename(target)
    except OSError:
        (trash / target.name).rename(target)  # put the previous version back
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
