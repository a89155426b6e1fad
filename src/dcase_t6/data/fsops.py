"""Folder operations that never leave a half-written result in place."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` (same file system), removed on exit whatever happens."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an existing ``target`` is swapped out first and removed afterwards."""
    if not target.exists():
        source.rename(target)
        return
    with staging_dir(target) as old:
        target.rename(old / target.name)
        source.rename(target)
