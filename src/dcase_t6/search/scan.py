"""The audio files of a folder, as ``index build`` sees them: every file below it (recursively) whose suffix the
project decodes (``dcase_t6.data.audio_io.AUDIO_SUFFIXES``, any case), with its size and modification time.

Hidden entries (names starting with ``.``, such as ``.git`` or macOS's ``._clip.wav``) are passed over; symbolic
links to files are followed, links to folders are not (no loops). Paths are relative and ``/``-separated.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.data.audio_io import AUDIO_SUFFIXES


@dataclass(frozen=True)
class FoundFile:
    """An audio file of the folder."""

    path: str  # relative to the folder, /-separated
    size: int  # bytes
    mtime_ns: int  # modification time, nanoseconds

    @property
    def key(self) -> tuple[str, int, int]:
        """What says the file is unchanged: the path, the size and the time."""
        return self.path, self.size, self.mtime_ns


def scan_folder(root: Path) -> list[FoundFile]:
    """Every audio file below ``root``, sorted by path.

    Raises:
        UserError: ``root`` is not a folder.
    """
    if not root.is_dir():
        raise UserError(f"--audio {root}: no such folder; pass the folder that holds your sounds")
    found = []
    for folder, dirs, files in os.walk(root, onerror=None, followlinks=False):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        base = Path(folder).relative_to(root)
        for name in files:
            if name.startswith(".") or not name.lower().endswith(AUDIO_SUFFIXES):
                continue
            try:
                facts = os.stat(os.path.join(folder, name))
            except OSError:  # a broken link, or gone meanwhile
                continue
            if stat.S_ISREG(facts.st_mode):
                found.append(FoundFile((base / name).as_posix(), facts.st_size, facts.st_mtime_ns))
    return sorted(found, key=lambda item: item.path)
