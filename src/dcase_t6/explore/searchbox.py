"""``explore --index``: a search page over an index of your own sounds (``dcase-t6 index build``).

The page (``search.html``; the site's start page when no matrix is explored) holds a text box; the browser asks
the server's ``api/search?q=TEXT&top=K`` and shows the files it answers with players. Audio is addressed by the
file's row in the index (``found/<row><suffix>``), from the indexed folder only, as ``audio/`` is for the explored
clips (see ``explore.audio``). The search itself is passed in (``find``): the explorer knows nothing of models.
A static site (``--html``) has no server to ask, so it has no search page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from jinja2 import Environment, PackageLoader, select_autoescape

from dcase_t6.common.errors import UserError
from dcase_t6.explore.audio import AudioFolder
from dcase_t6.explore.pages import Page

PAGE, ENDPOINT, AUDIO_PREFIX = "search.html", "api/search", "found/"
DEFAULT_TOP, MAX_TOP = 20, 200


@dataclass(frozen=True)
class FoundClip:
    """A file a search found: its row in the index, its path relative to the indexed folder, its score."""

    row: int
    name: str
    score: float


@dataclass(frozen=True)
class SearchBox:
    """What the search page needs.

    Args:
        find: the files nearest to a caption, best first: ``find(text, top)``; a UserError for a bad text.
        audio: the index's files by row (what ``found/`` serves).
        description: the index and its model, shown on the page.
        standalone: no matrix is explored beside it: the search page is the start page.
    """

    find: Callable[[str, int], Sequence[FoundClip]]
    audio: AudioFolder
    description: str
    standalone: bool = False

    def render(self, path: str) -> Page | None:
        """The search page (and, standalone, the stylesheet) at ``path``; None for any other path."""
        if path == PAGE or (self.standalone and path in ("", "index.html")):
            environment = Environment(loader=PackageLoader("dcase_t6.explore", "templates"),
                                      autoescape=select_autoescape(), trim_blocks=True, lstrip_blocks=True)
            html = environment.get_template("search.html").render(box=self, endpoint=ENDPOINT, top=DEFAULT_TOP)
            return Page(html.encode("utf-8"), "text/html; charset=utf-8")
        if self.standalone and path == "static/explore.css":
            return Page((resources.files("dcase_t6.explore") / path).read_bytes(), "text/css; charset=utf-8")
        return None

    def answer(self, arguments: Mapping[str, str]) -> tuple[int, bytes]:
        """The endpoint's HTTP status and JSON body for ``q`` (the text) and ``top`` (1 to ``MAX_TOP``)."""
        text, top = arguments.get("q", ""), arguments.get("top", str(DEFAULT_TOP))
        if not top.isdigit() or not 1 <= int(top) <= MAX_TOP:
            return 400, _json({"error": f"top {top!r}: give a whole number from 1 to {MAX_TOP}"})
        try:
            found = self.find(text, int(top))
        except UserError as err:
            return 400, _json({"error": str(err)})
        return 200, _json({"query": text, "results": [
            {"rank": rank, "name": clip.name, "score": clip.score, "audio": self.audio_url(clip.row)}
            for rank, clip in enumerate(found, start=1)]})

    def audio_url(self, row: int) -> str | None:
        """The address of a found file's audio, relative to the page (None when it cannot be served)."""
        url = self.audio.url(row)
        return None if url is None else AUDIO_PREFIX + url[len("audio/"):]


def _json(payload: dict) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")
