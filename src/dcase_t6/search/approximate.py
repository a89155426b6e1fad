"""The approximate index: FAISS IVF-Flat with inner product (``faiss-cpu``, the optional extra ``search``).

The vectors are clustered into ``lists`` (k-means on a sample); a query scans the ``probe`` lists whose centres are
nearest, with exact inner products, so the scores it gives are exact and only a relevant vector outside the probed
lists can be missed (recall below 1). An index gets one from ``APPROXIMATE_FROM`` vectors on: the break-even that
``benchmarks/bench_search.py`` measures (docs/speed.md), the smallest size at which the approximate search answers
5x faster than the exact one with recall@10 of 0.99 or more. It answers faster from about 10,000 vectors, but there
the exact search takes milliseconds and misses nothing. FAISS is imported only here, inside the functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.search.ranking import TopK

APPROXIMATE_FROM = 100_000  # vectors: the measured break-even (benchmarks/bench_search.py, docs/speed.md)
INSTALL = "pip install 'dcase-t6[search]' (or: pip install faiss-cpu)"
MIN_POINTS_PER_LIST = 39  # FAISS's k-means wants at least this many training points per centre
TRAIN_POINTS_PER_LIST = 64  # the k-means sample: enough for stable centres, small enough to train in seconds
TRAIN_ITERATIONS = 10
ADD_ROWS = 65_536  # vectors handed to FAISS at a time (memory stays bounded while reading the memory map)


@dataclass(frozen=True)
class IvfSettings:
    """How an IVF-Flat index is cut: ``lists`` k-means centres, ``probe`` of them scanned per query."""

    lists: int
    probe: int


def ivf_settings(count: int) -> IvfSettings:
    """About sqrt(count) lists (at most count / 39, FAISS's minimum of training points per list), and a sixteenth
    of them probed (at least 8): recall@10 of 1.000 at 100k and 1M clustered vectors, 0.92 at 10k (docs/speed.md)."""
    lists = max(1, min(round(math.sqrt(count)), count // MIN_POINTS_PER_LIST))
    return IvfSettings(lists, min(lists, max(8, math.ceil(lists / 16))))


def faiss_module():
    """The ``faiss`` module; a UserError naming the install when it is missing."""
    try:
        import faiss
    except ImportError:
        raise UserError(f"the approximate index needs FAISS, which is not installed: {INSTALL}; or search "
                        "exactly (--exact)") from None
    return faiss


def faiss_available() -> bool:
    """Whether FAISS imports."""
    try:
        faiss_module()
    except UserError:
        return False
    return True


def build_ivf(vectors: np.ndarray, path: Path, settings: IvfSettings, reporter: Reporter = SILENT) -> None:
    """Train an IVF-Flat index on a sample of ``vectors`` (count, dim), add them all, and write it to ``path``.

    Args:
        vectors: the index's vectors (a memory map is read ``ADD_ROWS`` at a time).
        path: the file to write.
        settings: lists and probe.
        reporter: a bar over the vectors added.
    """
    faiss = faiss_module()
    count, dim = vectors.shape
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, settings.lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = TRAIN_ITERATIONS
    index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST  # the sample is sized here: FAISS keeps it whole
    sample_size = min(count, settings.lists * TRAIN_POINTS_PER_LIST)
    sample = np.sort(np.random.default_rng(0).choice(count, sample_size, replace=False))
    index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    with reporter.task("approximate index: adding vectors", count) as task:
        for start in range(0, count, ADD_ROWS):
            block = np.ascontiguousarray(vectors[start:start + ADD_ROWS], dtype=np.float32)
            index.add(block)
            task.advance(len(block))
    index.nprobe = settings.probe
    faiss.write_index(index, str(path))


def load_ivf(path: Path, probe: int):
    """The IVF index of ``path``, memory-mapped (opens in milliseconds whatever its size)."""
    faiss = faiss_module()
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    except RuntimeError as err:
        raise UserError(f"{path}: not a FAISS index ({' '.join(str(err).split())[:120]}); build the index again "
                        "with `dcase-t6 index build --approximate`") from None
    index.nprobe = probe
    return index


def ivf_top(index, queries: np.ndarray, k: int) -> TopK:
    """The best ``k`` rows per query found in the probed lists (fewer when those lists hold fewer: the missing
    places have row -1 and score -inf), ordered by score then row as the exact search orders them."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = max(0, min(k, index.ntotal))
    if k == 0:
        return TopK(np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32))
    scores, rows = index.search(queries, k)
    scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
    order = np.lexsort((np.where(rows < 0, np.iinfo(np.int64).max, rows), -scores), axis=-1)
    return TopK(np.take_along_axis(rows.astype(np.int64), order, axis=1), np.take_along_axis(scores, order, axis=1))
