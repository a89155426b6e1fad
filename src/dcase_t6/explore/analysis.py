"""Systems scored and ranked query by query: everything the explorer's pages show, as typed values.

The numbers are those of ``evaluate`` (:func:`dcase_t6.retrieval.evaluation.evaluate` is called on each
matrix), and the orderings follow its pessimistic ranks: clips sorted by score, ties broken irrelevant
first, then by column. So the rank shown beside a relevant clip is the rank its AP@16 was computed from.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from dcase_t6.common.errors import UserError
from dcase_t6.retrieval import metrics
from dcase_t6.retrieval.evaluation import EvaluationResult, evaluate
from dcase_t6.retrieval.ground_truth import Relevance, align
from dcase_t6.retrieval.matrices import SimilarityMatrix

MAX_SYSTEMS = 2
HIGHEST_QUERIES = 10
RECALL_CURVE_MAX_K = 100
NOT_RANKED = np.iinfo(np.int64).max


@dataclass(frozen=True)
class SystemSource:
    """One system to explore: its display name, its similarity matrix and where the matrix came from."""

    name: str
    matrix: SimilarityMatrix
    source: str


@dataclass(frozen=True)
class ExploredSystem:
    """One system on the explored queries: ``evaluate``'s result, its scores and the ranks of relevant clips."""

    name: str
    source: str
    evaluation: EvaluationResult
    scores: np.ndarray
    relevant_ranks: np.ndarray

    @property
    def per_query(self) -> dict[str, np.ndarray]:
        """Per-query ``R@K``/``AP@K`` arrays exactly as ``evaluate --per-query`` writes them."""
        table = self.evaluation.per_query
        return {column: table[column].to_numpy() for column in table.columns if column.startswith(("R@", "AP@"))}


@dataclass(frozen=True)
class RankedClip:
    """A clip in one system's ranking of one query."""

    clip: int
    rank: int
    score: float
    relevant: bool
    other_ranks: tuple[int, ...] = ()


@dataclass(frozen=True)
class QueryView:
    """What the page of one query shows, per system: metrics, the top clips and the relevant clips below them."""

    query: int
    text: str
    relevant: tuple[int, ...]
    metrics: tuple[dict[str, float], ...]
    top: tuple[tuple[RankedClip, ...], ...]
    missed: tuple[tuple[RankedClip, ...], ...]


@dataclass(frozen=True)
class QueryHit:
    """A query in which a clip is ranked, with the clip's rank and score there."""

    query: int
    text: str
    rank: int
    score: float
    relevant: bool


@dataclass(frozen=True)
class ClipView:
    """What the page of one clip shows: its captions, the queries it is relevant to (its rank in each, per
    system) and, per system, the queries that rank it highest."""

    clip: int
    name: str
    captions: tuple[str, ...]
    relevant_to: tuple[tuple[QueryHit, ...], ...]
    ranked_highest: tuple[tuple[QueryHit, ...], ...]


@dataclass(frozen=True)
class RelevanceGroup:
    """Queries with the same number of relevant clips and each system's mean AP@16 over them."""

    n_relevant: int
    n_queries: int
    mean_ap: tuple[float, ...]


@dataclass(frozen=True)
class Exploration:
    """Queries (ground-truth order), clips (the first matrix's column order), relevance and the systems.

    Args:
        queries: query texts, one per explored query.
        clips: audio file names, the columns of every system's ``scores``.
        relevant: (queries, R_max) relevant clip indices padded with -1.
        systems: one or two explored systems.
        captions: each clip's own captions (empty when none were given).
        top: how many clips a query page lists.
        n_skipped: ground-truth queries left out because a matrix lacks them (``allow_missing``).
    """

    queries: list[str]
    clips: list[str]
    relevant: np.ndarray
    systems: tuple[ExploredSystem, ...]
    captions: dict[str, list[str]]
    top: int = 16
    n_skipped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @cached_property
    def relevance_mask(self) -> np.ndarray:
        """(queries, clips) bool: whether the clip is relevant to the query."""
        mask = np.zeros((len(self.queries), len(self.clips)), dtype=bool)
        rows, slots = np.nonzero(self.relevant != metrics.PADDING)
        mask[rows, self.relevant[rows, slots]] = True
        return mask

    def relevant_clips(self, query: int) -> np.ndarray:
        """The relevant clips of ``query`` in ground-truth order."""
        row = self.relevant[query]
        return row[row != metrics.PADDING]

    def ranking(self, system: int, query: int) -> np.ndarray:
        """Clips of ``query`` from rank 1 to last in ``system`` (score descending, ties irrelevant first)."""
        return rank_order(self.systems[system].scores[query], self.relevance_mask[query])

    def positions(self, system: int) -> np.ndarray:
        """(queries, clips) int32: the 1-based rank of every clip in every query, computed once (lexsort of the
        whole matrix: 0.6 s for 5,225 x 1,045) and kept."""
        with self._lock:
            cache = self.__dict__.setdefault("_positions", {})
            if system not in cache:
                cache[system] = rank_positions(rank_order(self.systems[system].scores, self.relevance_mask))
            return cache[system]

    def query_view(self, query: int) -> QueryView:
        """The top ``self.top`` clips of ``query`` in each system and where its other relevant clips ranked."""
        orders = [self.ranking(system, query) for system in range(len(self.systems))]
        places = [rank_positions(order) for order in orders]
        relevant = self.relevant_clips(query)
        mask = self.relevance_mask[query]
        top, missed, values = [], [], []
        for system, (order, place) in enumerate(zip(orders, places)):
            scores = self.systems[system].scores[query]

            def ranked(clip: int, place=place, scores=scores, system=system) -> RankedClip:
                others = tuple(int(p[clip]) for index, p in enumerate(places) if index != system)
                return RankedClip(int(clip), int(place[clip]), float(scores[clip]), bool(mask[clip]), others)

            top.append(tuple(ranked(clip) for clip in order[: self.top]))
            below = sorted((clip for clip in relevant if place[clip] > self.top), key=lambda clip: place[clip])
            missed.append(tuple(ranked(clip) for clip in below))
            values.append({key: float(column[query]) for key, column in self.systems[system].per_query.items()})
        return QueryView(query, self.queries[query], tuple(int(c) for c in relevant), tuple(values), tuple(top),
                         tuple(missed))

    def clip_view(self, clip: int) -> ClipView:
        """The queries ``clip`` is relevant to and, per system, the :data:`HIGHEST_QUERIES` queries ranking it
        highest (ties by query order)."""
        relevant_queries = np.flatnonzero(self.relevance_mask[:, clip])
        relevant_to, highest = [], []
        for system in range(len(self.systems)):
            column = self.positions(system)[:, clip]
            scores = self.systems[system].scores[:, clip]

            def hit(query: int, column=column, scores=scores) -> QueryHit:
                return QueryHit(int(query), self.queries[query], int(column[query]), float(scores[query]),
                                bool(self.relevance_mask[query, clip]))

            relevant_to.append(tuple(hit(query) for query in relevant_queries))
            best = np.argsort(column, kind="stable")[:HIGHEST_QUERIES]
            highest.append(tuple(hit(query) for query in best))
        name = self.clips[clip]
        return ClipView(clip, name, tuple(self.captions.get(name, ())), tuple(relevant_to), tuple(highest))

    def recall_curve(self, system: int, max_k: int = RECALL_CURVE_MAX_K) -> tuple[np.ndarray, np.ndarray]:
        """K = 1..min(max_k, clips) and the mean R@K of ``system`` at each (R@1/5/10 equal ``evaluate``'s)."""
        ks = np.arange(1, min(max_k, len(self.clips)) + 1)
        ranks = self.systems[system].relevant_ranks
        return ks, np.array([float(np.mean(metrics.recall_at_k(ranks, int(k)))) for k in ks])

    def relevance_groups(self) -> list[RelevanceGroup]:
        """Queries grouped by their number of relevant clips, with each system's mean AP@16 per group."""
        counts = (self.relevant != metrics.PADDING).sum(axis=1)
        groups = []
        for count in np.unique(counts):
            chosen = counts == count
            groups.append(RelevanceGroup(int(count), int(chosen.sum()), tuple(
                float(np.mean(system.per_query["AP@16"][chosen])) for system in self.systems)))
        return groups

    def clip_relevance_counts(self) -> np.ndarray:
        """How many queries each clip is relevant to."""
        return self.relevance_mask.sum(axis=0)


def rank_order(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Clip indices from rank 1 to last along the last axis: score descending, ties with the irrelevant clips
    first, then by column; the order whose relevant positions are ``metrics.relevant_ranks``.

    Args:
        scores: (..., clips) scores.
        relevant: bool array of the same shape.

    Returns:
        int64 array of the same shape.
    """
    columns = np.broadcast_to(np.arange(scores.shape[-1]), scores.shape)
    return np.lexsort((columns, relevant, -scores), axis=-1)


def rank_positions(order: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rank_order`: the 1-based rank of each clip (int32, same shape)."""
    positions = np.empty(order.shape, dtype=np.int32)
    ranks = np.broadcast_to(np.arange(1, order.shape[-1] + 1, dtype=np.int32), order.shape)
    np.put_along_axis(positions, order, ranks, axis=-1)
    return positions


def explore(sources: Sequence[SystemSource], truth: Relevance, captions: dict[str, list[str]] | None = None,
            top: int = 16, allow_missing: bool = False) -> Exploration:
    """Score one or two systems on ``truth`` and prepare their per-query rankings.

    Args:
        sources: one or two systems; the second must score the same audio files (in any column order).
        truth: relevance (multi-relevance file, or a captions file: each caption's own clip).
        captions: each clip's own captions, shown beside it (``clip_captions``).
        top: clips listed on a query page (>= 1; at most the number of clips).
        allow_missing: explore only the ground-truth queries every matrix has, instead of failing.

    Returns:
        The :class:`Exploration`; each system's ``evaluation`` equals ``evaluate`` on that matrix.
    """
    if not 1 <= len(sources) <= MAX_SYSTEMS:
        raise UserError(f"explore: {len(sources)} matrices given; pass one -p MATRIX, or two to compare them")
    if top < 1:
        raise UserError(f"explore: --top {top}; list at least 1 clip per query")
    first = sources[0]
    explored = _shared_queries(sources, truth) if allow_missing else truth
    systems, relevant, queries = [], None, None
    for source in sources:
        columns = _column_order(source, first)
        result = evaluate(source.matrix, explored, both_directions=True)
        alignment = align(source.matrix, explored)
        scores = source.matrix.scores[alignment.rows]
        if columns is not None:
            scores = scores[:, columns]
            inverse = np.argsort(columns)
            aligned = np.where(alignment.relevant == metrics.PADDING, metrics.PADDING,
                               inverse[np.maximum(alignment.relevant, 0)])
        else:
            aligned = alignment.relevant
        if relevant is None:
            relevant = aligned
            queries = [source.matrix.queries[row] for row in alignment.rows]
        ranks = metrics.relevant_ranks(scores, relevant)
        systems.append(ExploredSystem(source.name, source.source, result, np.ascontiguousarray(scores), ranks))
    return Exploration(queries=queries, clips=list(first.matrix.files), relevant=relevant, systems=tuple(systems),
                       captions=dict(captions or {}), top=min(top, len(first.matrix.files)),
                       n_skipped=len(truth.queries) - len(explored.queries))


def clip_captions(captions_file: Relevance) -> dict[str, list[str]]:
    """Each clip's captions from a captions file read by ``read_captions_file`` (caption -> its one clip)."""
    by_clip: dict[str, list[str]] = {}
    for caption, files in zip(captions_file.queries, captions_file.relevant_files):
        for name in files:
            by_clip.setdefault(name, []).append(caption)
    return by_clip


def _column_order(source: SystemSource, first: SystemSource) -> np.ndarray | None:
    """Indices into ``source``'s columns giving ``first``'s file order (None when already the same)."""
    files, reference = source.matrix.files, first.matrix.files
    if files == reference:
        return None
    position = {name: index for index, name in enumerate(files)}
    missing = [name for name in reference if name not in position]
    extra = sorted(set(files) - set(reference))
    if missing or extra:
        what = (f"lacks the audio file {missing[0]!r} of {first.source}" if missing
                else f"has the audio file {extra[0]!r}, which {first.source} lacks")
        raise UserError(f"{source.source}: {what} ({len(missing)} missing, {len(extra)} extra); compare matrices "
                        "of the same split")
    return np.array([position[name] for name in reference], dtype=np.int64)


def _shared_queries(sources: Sequence[SystemSource], truth: Relevance) -> Relevance:
    """``truth`` restricted to the queries that every matrix has."""
    present = set.intersection(*(set(source.matrix.queries) for source in sources))
    kept = [index for index, query in enumerate(truth.queries) if query in present]
    if not kept:
        raise UserError(f"{truth.source}: none of its queries appear in every matrix; nothing to explore")
    return Relevance(queries=[truth.queries[i] for i in kept], relevant_files=[truth.relevant_files[i] for i in kept],
                     source=truth.source)
