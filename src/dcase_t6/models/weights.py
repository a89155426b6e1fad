"""Pretrained weight files: where they are cached, how they are fetched, and the message when they can't be."""

from __future__ import annotations

import os
import pickle
import urllib.error
import zipfile
from pathlib import Path

import torch
import torch.hub

from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import require_file


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
    require_file(path, f"{what} weights file not found; fix the path given to {option}")
    return path


# ------------------------------------------------------------------------------------ safe checkpoint reading


class _Dropped:
    """Stands in for a pickled object whose class or function is not allowed: made of nothing, runs nothing."""

    name = "?"

    def __new__(cls, *_args, **_kwargs):
        return object.__new__(cls)

    def __init__(self, *_args, **_kwargs):
        pass

    def __setstate__(self, _state) -> None:
        pass


def read_checkpoint(path: Path, fix: str) -> object:
    """A torch checkpoint as tensors and plain values, without running anything from the file.

    First ``torch.load(weights_only=True)``. If the file holds pickled objects that torch does not allow
    (fairseq's or Lightning's configuration: omegaconf, argparse namespaces, numpy scalars, ...), every such global
    found by torch's static scan (``get_unsafe_globals_in_checkpoint``) is bound to an inert ``_Dropped``
    placeholder and the file is read again by the same ``weights_only`` unpickler; the placeholders are then
    removed, so only tensors and plain values remain. Globals from modules torch blocks outright (``os``, ``sys``,
    ...) and anything else torch's restricted unpickler refuses make the file unreadable.

    Args:
        path: the checkpoint file.
        fix: what the user should do when the file cannot be read, for the message.

    Returns:
        The checkpoint's content, tensors and plain containers/values only.

    Raises:
        UserError: the file is not a torch checkpoint, or cannot be read safely.
    """


    # A zip checkpoint is memory-mapped: tensors the caller never touches (a Lightning file's optimizer moments,
    # three times the model's size) are never read into memory.
    mapped = {"mmap": True} if zipfile.is_zipfile(path) else {}
    try:
        return _plain(torch.load(path, map_location="cpu", weights_only=True, **mapped))
    except pickle.UnpicklingError:
        pass
    except Exception as err:  # anything torch's reader raises for a file that is not a checkpoint (KeyError, ...)
        raise UserError(f"{path}: cannot be read as a torch checkpoint ({_first_line(err)}); {fix}") from None
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None or not hasattr(torch.serialization, "safe_globals"):
        raise UserError(f"{path}: holds pickled objects that reading safely needs torch 2.6 or newer for; "
                        f"upgrade torch, or {fix}")
    try:
        names = scan(path)
        placeholders = [(type("_Dropped", (_Dropped,), {"name": name}), name) for name in names]
        with torch.serialization.safe_globals(placeholders):
            return _plain(torch.load(path, map_location="cpu", weights_only=True, **mapped))
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise UserError(f"{path}: cannot be read safely, refused ({_first_line(err)}); {fix}") from None


def _plain(value: object) -> object:
    """``value`` with placeholders (and anything else that is not a tensor or plain value) removed."""

    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (str, bytes, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()
                if isinstance(key, (str, int)) and _kept(item)}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value if _kept(item)) if type(value) in (list, tuple) \
            else [_plain(item) for item in value if _kept(item)]
    return None


def _kept(value: object) -> bool:

    return isinstance(value, (torch.Tensor, str, bytes, bool, int, float, dict, list, tuple)) or value is None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
