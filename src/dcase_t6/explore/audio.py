"""The clips' audio files: found in ``--audio`` by the names in the matrix, and nothing else.

Pages address a clip's audio as ``audio/<clip index><suffix>`` (``audio/12.wav``), never by its name, so a
request cannot name any other file; a matrix name that would leave the folder (``../x.wav``, ``/etc/x``) is
refused by Werkzeug's ``safe_join`` and treated as missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from werkzeug.security import safe_join

from dcase_t6.common.errors import UserError

_URL = re.compile(r"(\d+)(\.[a-z0-9]{1,8})?")


@dataclass(frozen=True)
class AudioFolder:
    """Where each clip's audio file is (None: not in the folder, or a name that would leave it)."""

    root: Path
    paths: tuple[Path | None, ...]

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
        return self.paths[clip]


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
    paths = []
    for name in clips:
        joined = safe_join(str(root), name)
        paths.append(Path(joined) if joined is not None and Path(joined).is_file() else None)
    if all(path is None for path in paths):
        raise UserError(f"{root}: holds none of the {len(clips)} audio files named in the matrix (first "
                        f"{clips[0]!r}); pass --audio the folder of the matrix's split, e.g. data/clotho/audio/"
                        "evaluation")
    return AudioFolder(root, tuple(paths))


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
