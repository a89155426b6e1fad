"""What a ``prepare`` step did, as the dataclasses the command line renders.

``as_json()`` gives a report's ``--json`` output (fields in declaration order; optional fields a
dataset does not have are left out); :meth:`IndexReport.document` is the JSON file written beside a
split index, which :meth:`IndexReport.from_document` reads back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def _as_json(report) -> dict:
    """Fields in declaration order, optional ones that are None left out, nested reports as their JSON."""
    out = {}
    for item in fields(report):
        value = getattr(report, item.name)
        if value is None and item.metadata.get("optional"):
            continue
        out[item.name] = value.as_json() if hasattr(value, "as_json") else value
    return out


def _optional():
    return field(default=None, metadata={"optional": True})


@dataclass(frozen=True)
class IndexReport:
    """A split index: where it is, clips/captions/hours per split, skipped audio files (``path``, ``reason``),
    whether it was already up to date, and what the dataset adds (exclusions, skipped rows, queries)."""

    dataset: str
    index: str
    report: str
    fingerprint: str
    splits: dict[str, dict]
    skipped: list[dict]
    excluded: dict[str, int] | None = _optional()
    freesound_derived: list[str] | None = _optional()
    forbidden_ids: dict | None = _optional()
    skipped_rows: list[dict] | None = _optional()
    queries: int | None = _optional()
    queries_file: str | None = _optional()
    up_to_date: bool = False

    def as_json(self) -> dict:
        """The ``--json`` output."""
        return _as_json(self)

    def document(self) -> dict:
        """The report file stored beside the index (the index fields of the ``--json`` output, less ``up_to_date``)."""
        stored = {item.name for item in fields(IndexReport)} - _NOT_STORED
        return {key: value for key, value in _as_json(self).items() if key in stored}

    def extended(self, kind: type, **extra) -> IndexReport:
        """This report as a ``kind`` (a subclass) with the ``extra`` fields it adds."""
        return kind(**{item.name: getattr(self, item.name) for item in fields(IndexReport)}, **extra)

    @classmethod
    def from_document(cls, document: dict, up_to_date: bool = True) -> IndexReport:
        """A report read back from its stored file."""
        return cls(**{item.name: document[item.name] for item in fields(IndexReport)
                      if item.name in document and item.name not in _NOT_STORED}, up_to_date=up_to_date)

    def all_skipped(self) -> list[dict]:
        """Skipped audio files and skipped metadata rows together."""
        return self.skipped + (self.skipped_rows or [])


_NOT_STORED = {"up_to_date"}


@dataclass(frozen=True)
class ClothoReport(IndexReport):
    """Clotho's index report, plus where the nine files were taken from and how many clips each part extracted."""

    source: str = ""
    extracted: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RelevanceReport:
    """An attached multi-relevance file: where it was stored, its queries and relevant files per query."""

    dataset: str
    split: str
    relevance: str
    queries: int
    relevant_per_query: dict[str, float]

    def as_json(self) -> dict:
        """The ``--json`` output."""
        return _as_json(self)


@dataclass(frozen=True)
class SyntheticReport(IndexReport):
    """The synthetic dataset's index report, plus whether it was generated now, its folder and its relevance."""

    generated: bool = False
    folder: str = ""
    relevance: RelevanceReport | None = None


@dataclass(frozen=True)
class CacheReport:
    """An audio cache build: clips in all, up to date, decoded (or probed, for ``window`` storage), touched but
    unchanged, skipped (listed in ``skipped_file``), hours of audio, size of the stored samples the index points at
    and of the replaced ones still in the shards (``stale_gb``: reclaimed when no later clip follows them),
    truncated files (cached at the length that decodes, listed in ``truncated_file``), the space the build
    needed and the space that was free, and each dataset's ``storage`` (mode, max_seconds, clips, hours)."""

    cache: str
    rate: int
    clips: int
    up_to_date: int
    decoded: int
    unchanged_content: int
    skipped_file: str
    skipped: list[dict]
    hours: float
    size_gb: float
    truncated_file: str = ""
    truncated: list[dict] = field(default_factory=list)
    stale_gb: float = 0.0
    needed_gb: float = 0.0
    free_gb: float = 0.0
    storage: dict[str, dict] = field(default_factory=dict)

    def as_json(self) -> dict:
        """The ``--json`` output."""
        return _as_json(self)
