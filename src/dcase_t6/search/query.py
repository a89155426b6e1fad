"""``search``: the files of an index nearest to a caption (or to an example sound), with the index's own model.

A ``Searcher`` opens an index and loads its model once (``explore --index`` keeps one for every query); the text
or the example file is embedded with that model and ranked against the index's vectors: exactly (``ranking``) or
with the approximate index (``approximate``) when the index has one, unless told which.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.search.approximate import INSTALL, faiss_available, ivf_top, load_ivf
from dcase_t6.search.encoder import Encoder, open_index_encoder
from dcase_t6.search.ranking import TopK, exact_top
from dcase_t6.search.store import IndexView, ModelIdentity, open_index

METHODS = ("auto", "exact", "approximate")
MAX_TOP = 10_000


@dataclass(frozen=True)
class Query:
    """What to look for: a ``text`` (a caption) or an example sound (``like``, an audio file), the ``top``
    files to return, and the ``method``: ``auto`` (approximate when the index has one), ``exact`` or
    ``approximate``."""

    text: str | None = None
    like: str | Path | None = None
    top: int = 10
    method: str = "auto"


@dataclass(frozen=True)
class Hit:
    """A file found: its place, its row in the index, its path relative to the indexed folder, the file itself and
    its score (the cosine similarity of the two embeddings)."""

    rank: int
    row: int
    path: str
    file: Path
    score: float


@dataclass(frozen=True)
class Answer:
    """What a search found, best first, and how."""

    index: Path
    query: Query
    method: str  # "exact" or "approximate"
    model: ModelIdentity
    vectors: int  # files in the index
    hits: tuple[Hit, ...]
    seconds: float  # embedding the query and ranking (the model was loaded before)

    def as_json(self) -> dict:
        """What ``search --json`` prints."""
        return {"index": str(self.index), "text": self.query.text,
                "like": None if self.query.like is None else str(self.query.like), "top": self.query.top,
                "method": self.method, "model": self.model.describe(), "files": self.vectors,
                "seconds": round(self.seconds, 4),
                "results": [{"rank": hit.rank, "path": hit.path, "file": str(hit.file), "score": hit.score}
                            for hit in self.hits]}


class Searcher:
    """An open index and its loaded model; ``search`` answers one query (thread-safe).

    Args:
        view: the index.
        encoder: the index's model.
        reporter: a warning when the approximate index cannot be used.
    """

    def __init__(self, view: IndexView, encoder: Encoder, reporter: Reporter = SILENT):
        self.view, self.encoder, self.reporter = view, encoder, reporter
        self._lock = threading.Lock()
        self._ivf = None

    def search(self, query: Query) -> Answer:
        """The ``query.top`` files nearest to the query; a UserError for a bad query."""
        check_query(query)
        started = time.perf_counter()
        with self._lock:
            vector = self._embed(query)
            method = self._method(query.method)
            top = self._rank(vector, query.top, method)
        audio = Path(self.view.manifest.audio)
        hits = tuple(Hit(rank, int(row), self.view.entries[row].path, audio / self.view.entries[row].path,
                         float(score))
                     for rank, (row, score) in enumerate(zip(top.rows[0], top.scores[0]), start=1) if row >= 0)
        return Answer(self.view.folder, query, method, self.view.manifest.model, self.view.manifest.count, hits,
                      time.perf_counter() - started)

    def _embed(self, query: Query) -> np.ndarray:
        if query.text is not None:
            return self.encoder.encode_texts([query.text])
        encoded = self.encoder.encode_files([Path(query.like)])
        if encoded.problems[0] is not None:
            raise UserError(f"--like {query.like}: {encoded.problems[0]}; pass an audio file (.wav, .flac, .mp3, "
                            ".ogg)")
        return encoded.vectors

    def _method(self, asked: str) -> str:
        approximate = self.view.manifest.approximate
        if asked == "exact" or (asked == "auto" and approximate is None):
            return "exact"
        if approximate is None:
            raise UserError(f"--approximate: {self.view.folder} has no approximate index ({self.view.manifest.count} "
                            "files); build one with `dcase-t6 index build ... --approximate`, or leave it out")
        if not faiss_available():
            if asked == "approximate":
                raise UserError(f"--approximate: the approximate index needs FAISS, which is not installed: "
                                f"{INSTALL}")
            self.reporter.warning(f"FAISS is not installed ({INSTALL}): searching exactly")
            return "exact"
        return "approximate"

    def _rank(self, vector: np.ndarray, top: int, method: str) -> TopK:
        if method == "exact":
            return exact_top(self.view.vectors, vector, top)
        if self._ivf is None:
            approximate = self.view.manifest.approximate
            self._ivf = load_ivf(self.view.folder / approximate.file, approximate.probe)
        return ivf_top(self._ivf, vector, top)


def check_query(query: Query) -> None:
    """A UserError unless the query has one of text or example, a top from 1 to ``MAX_TOP`` and a known method."""
    if (query.text is None) == (query.like is None):
        raise UserError("search: give a TEXT to look for, or --like FILE (an example sound), not both")
    if query.text is not None and not query.text.strip():
        raise UserError("search: the TEXT is empty; describe the sound, e.g. \"a dog barks twice\"")
    if query.like is not None and not Path(query.like).is_file():
        raise UserError(f"--like {query.like}: no such file; pass an audio file (.wav, .flac, .mp3, .ogg)")
    if isinstance(query.top, bool) or not isinstance(query.top, int) or not 1 <= query.top <= MAX_TOP:
        raise UserError(f"--top {query.top!r}: give a whole number from 1 to {MAX_TOP}")
    if query.method not in METHODS:
        raise UserError(f"search: method {query.method!r}; one of {', '.join(METHODS)}")


@contextlib.contextmanager
def open_searcher(index: str | Path, workdir: str | Path, reporter: Reporter = SILENT) -> Iterator[Searcher]:
    """Open ``index`` and load its model (a registered run is looked up in ``workdir``) for the block."""
    view = open_index(index)
    with open_index_encoder(view.manifest.model, workdir) as encoder:
        yield Searcher(view, encoder, reporter)
