"""``explore --html DIR``: every page of a :class:`~dcase_t6.explore.pages.Site` written as a static folder to
share, with the clips' audio beside it (hard links where the file system allows, else copies)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dcase_t6.common.fsops import replace_owned_dir, staging_dir
from dcase_t6.common.outputs import FolderKind, OutputRequest, check_output_dir
from dcase_t6.explore.pages import Site

MARKER = "explore.json"


@dataclass(frozen=True)
class SiteReport:
    """What ``write_site`` wrote: the folder, its pages and audio files, and how long it took."""

    folder: Path
    pages: int
    audio_files: int
    seconds: float

    def as_json(self) -> dict:
        """The ``--json`` object of ``explore --html``."""
        return {"site": str(self.folder), "index": str(self.folder / "index.html"), "pages": self.pages,
                "audio_files": self.audio_files, "seconds": round(self.seconds, 3)}


def write_site(site: Site, folder: str | Path) -> SiteReport:
    """Write every page of ``site`` and its audio files into ``folder``, replacing it whole at the end.

    Args:
        site: the pages to write.
        folder: the target; it must not exist, be empty, or hold an earlier explorer site (its ``explore.json``).

    Returns:
        The :class:`SiteReport`.
    """
    started = time.perf_counter()
    folder = check_target(folder, [("--audio", site.audio.root)])
    with staging_dir(folder) as staging:
        for path in site.paths():
            page = site.render(path)
            target = staging / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(page.content)
        audio_files = 0
        (staging / "audio").mkdir()
        for clip in range(len(site.audio.paths)):
            source = site.audio.file(clip)  # checked again: a regular file inside --audio
            if source is not None:
                _link_or_copy(source, staging / site.audio.url(clip))
                audio_files += 1
        replace_owned_dir(staging, folder, "explore --html", legacy_marker=MARKER)
    return SiteReport(folder, len(site.paths()), audio_files, time.perf_counter() - started)


def check_target(folder: str | Path, inputs=(), protected=()) -> Path:
    """The site folder, absolute, or a UserError (see ``dcase_t6.common.outputs.check_output_dir``): a new or empty
    folder, or an earlier explorer site holding nothing else, that is not, holds or links to an input."""
    return check_output_dir(OutputRequest(folder, "--html", inputs=inputs, protected=protected),
                            FolderKind("an explorer site", legacy_marker=MARKER))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
