"""The explorer's pages, rendered with Jinja2 from ``templates/``: one :class:`Site` answers every site path.

Paths (the same for the server and the static folder, linked relatively so both work, also from ``file://``):
``index.html`` (queries), ``summary.html``, ``query/<i>.html``, ``clip/<i>.html``, ``data/queries.js`` (the
query table's rows), ``charts/<name>.svg``, ``static/<asset>`` and ``explore.json`` (what the site shows).
Audio (``audio/<i><suffix>``) is served or copied from :class:`~dcase_t6.explore.audio.AudioFolder`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from dcase_t6 import __version__
from dcase_t6.explore.analysis import RECALL_CURVE_MAX_K, Exploration
from dcase_t6.explore.audio import AudioFolder
from dcase_t6.explore.charts import CHARTS, render_chart
from dcase_t6.explore.summary import SummaryFigures, summary_figures
from dcase_t6.retrieval.metrics import METRIC_KEYS

TABLE_METRICS = ("AP@16", "R@1", "R@5", "R@10")
QUERY_KEYS = tuple(key.replace("mAP@", "AP@") for key in METRIC_KEYS)
ASSETS = ("explore.css", "explore.js")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".json": "application/json"}
_ITEM = re.compile(r"(query|clip)/(\d+)\.html")


@dataclass(frozen=True)
class Page:
    """One generated file of the site: its bytes and media type."""

    content: bytes
    media_type: str


class Site:
    """Every page of an exploration, rendered on request (nothing is rendered before it is asked for).

    Args:
        exploration: the explored systems and queries.
        audio: where each clip's audio file is.
        searchable: the server also answers a search page (``explore --index``): the pages link to it.
    """

    def __init__(self, exploration: Exploration, audio: AudioFolder, searchable: bool = False):
        self.exploration = exploration
        self.audio = audio
        self.searchable = searchable
        self._environment = Environment(loader=PackageLoader("dcase_t6.explore", "templates"),
                                        autoescape=select_autoescape(), trim_blocks=True, lstrip_blocks=True)
        self._environment.filters["exact"] = _exact
        self._charts: dict[str, bytes | None] = {}

    def paths(self) -> list[str]:
        """Every path the site has, pages first (what the static folder holds besides ``audio/``)."""
        exploration = self.exploration
        charts = [f"charts/{name}.svg" for name in CHARTS if name != "scatter" or len(exploration.systems) == 2]
        return (["index.html", "summary.html", "data/queries.js", "explore.json"]
                + [f"static/{name}" for name in ASSETS] + charts
                + [f"query/{index}.html" for index in range(len(exploration.queries))]
                + [f"clip/{index}.html" for index in range(len(exploration.clips))])

    def render(self, path: str) -> Page | None:
        """The page at ``path`` (relative, no leading ``/``; ``""`` is ``index.html``), None for any other path."""
        path = path or "index.html"
        fixed = {"index.html": self._queries_page, "summary.html": self._summary_page,
                 "data/queries.js": self._queries_data, "explore.json": self._description}
        if path in fixed:
            return _page(path, fixed[path]())
        item = _ITEM.fullmatch(path)
        if item:
            index, count = int(item.group(2)), len(self.exploration.queries if item.group(1) == "query"
                                                   else self.exploration.clips)
            if index >= count or path != f"{item.group(1)}/{index}.html":
                return None
            return _page(path, self._query_page(index) if item.group(1) == "query" else self._clip_page(index))
        if path.startswith("static/") and path[len("static/"):] in ASSETS:
            return _page(path, (resources.files("dcase_t6.explore") / path).read_bytes())
        if path.startswith("charts/") and path.endswith(".svg") and path[7:-4] in CHARTS:
            name = path[7:-4]
            if name not in self._charts:
                self._charts[name] = render_chart(self.exploration, name)
            return None if self._charts[name] is None else _page(path, self._charts[name])
        return None

    # --- pages -----------------------------------------------------------------------------------

    def _context(self, root: str) -> dict:
        exploration = self.exploration
        return {"root": root, "systems": exploration.systems, "n_queries": len(exploration.queries),
                "n_clips": len(exploration.clips), "metric_keys": METRIC_KEYS, "query_keys": QUERY_KEYS,
                "top": exploration.top, "searchable": self.searchable,
                "clip_name": exploration.clips.__getitem__, "audio_url": self.audio.url,
                "captions": lambda clip: exploration.captions.get(exploration.clips[clip], [])}

    def _template(self, name: str, root: str, **values) -> bytes:
        return self._environment.get_template(name).render(**self._context(root), **values).encode("utf-8")

    def _queries_page(self) -> bytes:
        values = {}
        if len(self.exploration.systems) == 2:
            first, second = (system.per_query["AP@16"] for system in self.exploration.systems)
            values = {"better": int((second > first).sum()), "worse": int((second < first).sum()),
                      "equal": int((second == first).sum())}
        return self._template("index.html", "", **values)

    def _summary_page(self) -> bytes:
        counts = self.exploration.clip_relevance_counts()
        clip_groups = [(int(count), np.flatnonzero(counts == count).tolist()) for count in np.unique(counts)]
        return self._template("summary.html", "", groups=self.exploration.relevance_groups(), clip_groups=clip_groups,
                              max_k=min(RECALL_CURVE_MAX_K, len(self.exploration.clips)),
                              n_skipped=self.exploration.n_skipped, figures=self._summary_figures)

    @cached_property
    def _summary_figures(self) -> SummaryFigures:
        """Intervals, the paired comparison and audio-to-text scores (bootstrapped once, on first request)."""
        return summary_figures(self.exploration)

    def _query_page(self, query: int) -> bytes:
        ranks = []
        for system in self.exploration.systems:
            row = system.relevant_ranks[query]
            ranks.append(row[row != np.iinfo(np.int64).max].tolist())
        return self._template("query.html", "../", view=self.exploration.query_view(query), ranks=ranks)

    def _clip_page(self, clip: int) -> bytes:
        return self._template("clip.html", "../", view=self.exploration.clip_view(clip))

    @cached_property
    def _table(self) -> dict:
        """Columns and rows of the query table (values rounded to 6 decimals; the pages show 3)."""
        exploration = self.exploration
        columns = [{"label": "#", "type": "int", "title": "query number (ground-truth order)"},
                   {"label": "query", "type": "text"},
                   {"label": "relevant", "type": "int", "title": "number of relevant clips"}]
        several = len(exploration.systems) > 1
        blocks = []
        for system in exploration.systems:
            suffix = f" · {system.name}" if several else ""
            columns += [{"label": key + suffix, "type": "num"} for key in TABLE_METRICS]
            columns.append({"label": "ranks of relevant" + suffix, "type": "ranks",
                            "title": "rank of each relevant clip, best first (sorts by the best)"})
            ranks = system.relevant_ranks
            valid = ranks != np.iinfo(np.int64).max
            blocks.append(([np.round(system.per_query[key], 6).tolist() for key in TABLE_METRICS],
                           [row[mask].tolist() for row, mask in zip(ranks, valid)]))
        counts = (exploration.relevant >= 0).sum(axis=1).tolist()
        if several:
            columns.append({"label": f"Δ AP@16 ({exploration.systems[1].name} − {exploration.systems[0].name})",
                            "type": "diff"})
            difference = np.round(exploration.systems[1].per_query["AP@16"]
                                  - exploration.systems[0].per_query["AP@16"], 6).tolist()
        rows = []
        for query, text in enumerate(exploration.queries):
            row = [query, text, counts[query]]
            for values, ranks in blocks:
                row += [column[query] for column in values] + [ranks[query]]
            if several:
                row.append(difference[query])
            rows.append(row)
        return {"columns": columns, "rows": rows, "defaultSort": 3}

    def _queries_data(self) -> bytes:
        payload = json.dumps(self._table, ensure_ascii=False, separators=(",", ":"))
        return f"window.EXPLORE_QUERIES = {payload};\n".encode("utf-8")

    def _description(self) -> bytes:
        exploration = self.exploration
        return json.dumps({
            "generator": f"dcase-t6 {__version__} explore", "queries": len(exploration.queries),
            "clips": len(exploration.clips), "top": exploration.top, "missing_audio": len(self.audio.missing),
            "systems": [{"name": system.name, "matrix": system.source,
                         **system.evaluation.as_json()} for system in exploration.systems]},
            indent=2, ensure_ascii=False).encode("utf-8")


def _page(path: str, content: bytes) -> Page:
    return Page(content, _TYPES[path[path.rindex("."):]])


def _exact(value) -> str:
    """A number written so that reading it back gives the same value (Python's shortest round-trip repr)."""
    return repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)
