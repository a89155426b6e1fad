"""The clips' audio files: found in ``--audio`` by the names in the matrix, and nothing else.

Pages address a clip's audio as ``audio/<clip index><suffix>`` (``audio/12.wav``), never by its name, so a
request cannot name any other file; a matrix name that would leave the folder (``../x.wav``, ``/etc/x``) is
refused by Werkzeug's ``safe_join`` and treated as missing.

Only regular files whose real path (every symbolic link followed) lies inside the real ``--audio`` folder are
served or copied into a static site: a link inside the folder that leads out of it (``clip.wav -> /home/...``)
is not followed, and its clip has no player (``--audio`` itself may be a link). A link to another file inside
the folder is fine. Pipes, devices and sockets are never opened. The check is made when the folder is scanned
and again right before each file is served or copied.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from werkzeug.security import safe_join

from dcase_t6.common.errors import UserError

_URL = re.compile(r"(\d+)(\.[a-z0-9]{1,8})?")


@dataclass(frozen=True)
class AudioFolder:
    """Where each clip's audio file is (None: not in the folder, or a name or a link that would leave it); the
    clips whose name is a link leading out of the folder (not served)."""

    root: Path
    paths: tuple[Path | None, ...]
    outside: tuple[int, ...] = ()

    @property
    def missing(self) -> list[int]:
        """Clips without a servable file."""
        return [clip for clip, path in enumerate(self.paths) if path is None]

    def url(self, clip: int) -> str | None:
        """The site-relative address of a clip's audio (``audio/12.wav``), None when it has no file."""
        path = self.paths[clip]
        return None if path is None else f"audio/{clip}{_suffix(path)}"

    def lookup(self, address: str) -> Path | None:
        """The file an ``audio/...`` address (without ``audio/``) stands for; None for anything else."""
        match = _URL.fullmatch(address)
        if not match:
            return None
        clip = int(match.group(1))
        if clip >= len(self.paths) or self.paths[clip] is None or self.url(clip) != f"audio/{address}":
            return None
        return self.file(clip)

    def file(self, clip: int) -> Path | None:
        """The clip's file, checked again now (a regular file, its real path inside the folder); None if not."""
        path = self.paths[clip]
        return path if path is not None and _where(os.path.realpath(self.root), path) == _INSIDE else None


def scan_audio(root: str | Path, clips: list[str]) -> AudioFolder:
    """Find every clip's file in ``root`` by its name (sub-folders allowed, never ``..`` or absolute names).

    Args:
        root: the ``--audio`` folder.
        clips: the matrix's audio file names.

    Returns:
        The :class:`AudioFolder`; a UserError when the folder is missing or holds none of the clips.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; pass --audio the folder that holds the clips named in the matrix")
    real_root = os.path.realpath(root)
    paths, outside = [], []
    for clip, name in enumerate(clips):
        joined = safe_join(str(root), name)
        where = _where(real_root, Path(joined)) if joined is not None else None
        paths.append(Path(joined) if where == _INSIDE else None)
        if where == _OUTSIDE:
            outside.append(clip)
    if outside and all(path is None for path in paths):
        first = safe_join(str(root), clips[outside[0]])
        raise UserError(f"{root}: the audio files named in the matrix are links that lead out of this folder (first "
                        f"{first} -> {os.path.realpath(first)}); explore serves only files inside --audio: pass "
                        "--audio the folder the links lead to, or copy the files in")
    if all(path is None for path in paths):
        raise UserError(f"{root}: holds none of the {len(clips)} audio files named in the matrix (first "
                        f"{clips[0]!r}); pass --audio the folder of the matrix's split, e.g. data/clotho/audio/"
                        "evaluation")
    return AudioFolder(root, tuple(paths), tuple(outside))


_INSIDE, _OUTSIDE = "inside", "outside"


def _where(real_root: str, path: Path) -> str | None:
    """``_INSIDE``: a regular file whose real path is inside ``real_root``; ``_OUTSIDE``: a regular file reached by
    a link leading out of it; None: nothing servable (missing, a folder, a pipe, a device, a looping link)."""
    try:
        real = os.path.realpath(path, strict=True)
        if not stat.S_ISREG(os.stat(real).st_mode):
            return None
    except (OSError, ValueError):
        return None
    return _INSIDE if os.path.commonpath([real_root, real]) == real_root else _OUTSIDE


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
