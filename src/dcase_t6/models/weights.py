"""Pretrained weight files: where they are cached, how they are fetched, and the message when they can't be."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

from dcase_t6.common.errors import UserError


def cache_dir() -> Path:
    """Folder for downloaded weights: ``$DCASE_T6_CACHE`` or ``~/.cache/dcase-t6``."""
    return Path(os.environ.get("DCASE_T6_CACHE", Path.home() / ".cache" / "dcase-t6")) / "weights"


def fetch(url: str, what: str, option: str, name: str | None = None, page: str | None = None) -> Path:
    """Return the cached copy of ``url``, downloading it first (atomically) if needed.

    Args:
        url: the published file.
        what: the model, for messages (``PaSST``).
        option: the option that passes a local file instead (``--audio-weights``).
        name: the cached file's name (default: the URL's last part, without a query).
        page: a web page that links the file, named in the message when the download fails.

    Returns:
        The cached file.
    """
    target = cache_dir() / (name or url.split("?", 1)[0].rsplit("/", 1)[-1])
    if target.is_file():
        return target
    import torch.hub

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)  # writes a temp file, then renames
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        linked = f" (linked in {page})" if page else ""
        raise UserError(f"cannot download the {what} weights from {url} ({err}); download that file yourself{linked} "
                        f"and either put it at {target} or pass {option} /path/to/{target.name}") from None
    return target


def local_file(path: str | os.PathLike, what: str, option: str) -> Path:
    """Check that a user-given weights file exists."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: {what} weights file not found; fix the path given to {option}")
    return path
