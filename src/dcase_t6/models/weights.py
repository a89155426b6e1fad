"""Pretrained weight files: where they are cached, how they are fetched, and the message when they can't be."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

from dcase_t6.common.errors import UserError


def cache_dir() -> Path:
    """Folder for downloaded weights: ``$DCASE_T6_CACHE`` or ``~/.cache/dcase-t6``."""
    return Path(os.environ.get("DCASE_T6_CACHE", Path.home() / ".cache" / "dcase-t6")) / "weights"


def fetch(url: str, what: str, option: str) -> Path:
    """Return the cached copy of ``url``, downloading it first (atomically) if needed."""
    target = cache_dir() / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    import torch.hub

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)  # writes a temp file, then renames
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise UserError(f"cannot download the {what} weights from {url} ({err}); download that file yourself and "
                        f"either put it at {target} or pass {option} /path/to/{target.name}") from None
    return target


def local_file(path: str | os.PathLike, what: str, option: str) -> Path:
    """Check that a user-given weights file exists."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: {what} weights file not found; fix the path given to {option}")
    return path
