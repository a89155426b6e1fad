"""Search over your own sounds: index build time per clip, and query latency of the exact and the approximate
search at 10k, 100k and 1M vectors with the approximate index's recall@10 against the exact one.

Build: ``index build``'s library path (scan, hash, decode, embed, write) with the tiny-cnn backbone and the tiny
random text model on generated clips of 5-10 s (``prepare synthetic``), first build and a rebuild with nothing
changed. Latency: random unit vectors of dimension ``--dim`` (512 by default: at the models' 1,024 the 1M case's
approximate index alone takes about three minutes on one thread of the shared 2-core machine, past this script's
five-minute budget; the exact search's time doubles with the dimension), clustered as embeddings are (one centre
per 1,000 vectors, spread within a 64-dimensional subspace); queries are noisy cluster centres,
as a caption lands near the sounds it describes (the best cosine about 0.55). Vectors are written to a memory-mapped
.npy file as an index holds them; the exact search reads it through the page cache (warm: the median of 9
single queries after one); the approximate one is FAISS IVF-Flat with the settings ``index build`` uses. The
sizes below 10k only locate the latency crossover. The break-even (``APPROXIMATE_FROM`` in
dcase_t6/search/approximate.py) is the smallest size where the approximate search is 5x faster at recall@10 of
0.99 or more: below it the exact search answers in milliseconds and misses nothing.
``--write-docs`` puts the figures into this script's block of docs/speed.md.

    .venv/bin/python benchmarks/bench_search.py [--quick] [--dim 512] [--write-docs]
"""

from __future__ import annotations

import os

# One thread for BLAS, FAISS and torch: on a shared, loaded machine their idle threads spin and a 1,000-vector
# product takes tens of milliseconds instead of a tenth of one; one thread gives figures that mean something.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _published  # noqa: E402
from dcase_t6.data.layout import Layout  # noqa: E402
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic  # noqa: E402
from dcase_t6.embedding.encode import EncodeSettings  # noqa: E402
from dcase_t6.models import DualEncoder  # noqa: E402
from dcase_t6.runs.config import build_config  # noqa: E402
from dcase_t6.search.approximate import APPROXIMATE_FROM, build_ivf, ivf_settings, ivf_top, load_ivf  # noqa: E402
from dcase_t6.search.build import BuildRequest, build_index  # noqa: E402
from dcase_t6.search.encoder import Encoder  # noqa: E402
from dcase_t6.search.ranking import exact_top  # noqa: E402
from dcase_t6.search.store import ModelIdentity  # noqa: E402

SIZES, QUICK_SIZES, SWEEP = (10_000, 100_000, 1_000_000), (10_000, 100_000), (1_000, 3_000)
PER_CENTRE, SUBSPACE, SPREAD, QUERY_NOISE = 1_000, 64, 1.0, 1.2
RECALL_QUERIES, LATENCY_QUERIES, BUILD_CLIPS = 100, 9, 48
BLOCK = 65_536
FELT_MS = 100.0  # a delay felt in the search box
PAYS_SPEEDUP, PAYS_RECALL = 5.0, 0.99  # what the approximate index must give for its recall risk and build time


def build_per_clip(folder: Path) -> tuple[float, float]:
    """Seconds per clip of a first ``index build`` and of a rebuild with nothing changed (tiny-cnn)."""
    prepare_synthetic(Layout.at(folder / "data"), SyntheticConfig(development=BUILD_CLIPS, validation=1,
                                                                   evaluation=1, min_duration=5.0, max_duration=10.0))
    config = build_config(None, {"model.backbone": "tiny-cnn", "model.text_model": "tiny-random",
                                 "audio_weights": "random", "audio_seconds": 10.0})
    model = DualEncoder(config.model, audio_weights="random").eval()
    encoder = Encoder(model, ModelIdentity("folder", "bench", None, "0" * 64), config.clip_samples(model.sample_rate),
                      EncodeSettings(16, torch.device("cpu")))
    audio = folder / "data" / "synthetic" / "audio" / "development"
    clips = len(list(audio.iterdir()))
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        build_index(BuildRequest(audio, folder / "index"), encoder)
        seconds.append((time.perf_counter() - start) / clips)
    return seconds[0], seconds[1]


def clustered_vectors(path: Path, count: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` clustered unit vectors written to ``path`` (memory-mapped), and the cluster centres."""
    centres = rng.standard_normal((max(1, count // PER_CENTRE), dim)).astype(np.float32)
    basis = rng.standard_normal((SUBSPACE, dim)).astype(np.float32) * SPREAD  # noise of SPREAD per coordinate
    vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, dim))
    for start in range(0, count, BLOCK):
        rows = min(BLOCK, count - start)
        block = centres[rng.integers(0, len(centres), rows)]
        block += (rng.standard_normal((rows, SUBSPACE), dtype=np.float32) / np.sqrt(SUBSPACE)) @ basis
        vectors[start:start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    vectors.flush()
    del vectors
    return np.load(path, mmap_mode="r"), centres


def queries_near(centres: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Unit queries: a random centre plus noise (a caption near the sounds it describes)."""
    chosen = centres[rng.integers(0, len(centres), count)]
    noisy = chosen + QUERY_NOISE * rng.standard_normal(chosen.shape).astype(np.float32)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def median_ms(search, queries: np.ndarray) -> float:
    search(queries[:1])  # warm: the page cache, FAISS's first allocations
    times = []
    for query in queries[1:LATENCY_QUERIES + 1]:
        start = time.perf_counter()
        search(query[None])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(folder: Path, count: int, dim: int, recall: bool = True) -> dict:
    """Exact and approximate latency (ms), the approximate index's build seconds and recall@10 at ``count``."""
    rng = np.random.default_rng(count)
    vectors, centres = clustered_vectors(folder / f"v{count}.npy", count, dim, rng)
    queries = queries_near(centres, max(RECALL_QUERIES, LATENCY_QUERIES + 1), rng)
    settings = ivf_settings(count)
    start = time.perf_counter()
    build_ivf(vectors, folder / f"v{count}.faiss", settings)
    built = time.perf_counter() - start
    index = load_ivf(folder / f"v{count}.faiss", settings.probe)
    result = {"count": count, "exact_ms": median_ms(lambda q: exact_top(vectors, q, 10), queries),
              "approximate_ms": median_ms(lambda q: ivf_top(index, q, 10), queries), "build_s": built,
              "lists": settings.lists, "probe": settings.probe}
    if recall:
        exact, approximate = exact_top(vectors, queries, 10), ivf_top(index, queries, 10)
        result["recall"] = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate.rows, exact.rows)]))
        result["best_cosine"] = float(exact.scores[:, 0].mean())
    (folder / f"v{count}.npy").unlink()
    (folder / f"v{count}.faiss").unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k vectors only")
    parser.add_argument("--dim", type=int, default=512, help="vector dimension (default 512; the models': 1024)")
    _published.add_option(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        first, again = build_per_clip(Path(folder))
        print(f"index build, tiny-cnn, clips of 5-10 s: {1000 * first:.0f} ms per clip; rebuild, nothing changed: "
              f"{1000 * again:.2f} ms per clip")
        rows.append(_published.Row(f"`index build`, tiny-cnn, {BUILD_CLIPS} generated clips of 5-10 s: first build "
                                   "/ rebuild with nothing changed",
                                   f"{1000 * first:.0f} ms / {1000 * again:.2f} ms per clip"))
        sweep = [measure(Path(folder), count, args.dim, recall=False) for count in SWEEP]
        for count, result in zip(SWEEP, sweep):
            print(f"{count:>9,} x {args.dim}: exact {result['exact_ms']:.2f} ms, approximate "
                  f"{result['approximate_ms']:.2f} ms")
        measured = []
        for count in QUICK_SIZES if args.quick else SIZES:
            result = measure(Path(folder), count, args.dim)
            measured.append(result)
            print(f"{count:>9,} x {args.dim}: exact {result['exact_ms']:.1f} ms, approximate "
                  f"{result['approximate_ms']:.2f} ms (IVF-Flat {result['lists']} lists, {result['probe']} probed; "
                  f"built in {result['build_s']:.1f} s), recall@10 {result['recall']:.3f}, best cosine "
                  f"{result['best_cosine']:.2f}")
            rows.append(_published.Row(
                f"`search` latency, {count:,} vectors x {args.dim}: exact / approximate (IVF-Flat, "
                f"{result['lists']} lists, {result['probe']} probed)",
                f"{result['exact_ms']:.1f} ms / {result['approximate_ms']:.2f} ms; recall@10 "
                f"{result['recall']:.3f}; approximate index built in {result['build_s']:.1f} s"))
        every = sweep + measured
        faster = [result["count"] for result in every if result["approximate_ms"] < result["exact_ms"]]
        paying = [result["count"] for result in measured
                  if result["exact_ms"] >= PAYS_SPEEDUP * result["approximate_ms"] and result["recall"] >= PAYS_RECALL]
        largest = measured[-1]  # the exact search reads every vector: its time grows with the size
        felt = float(f"{FELT_MS / largest['exact_ms'] * largest['count']:.2g}")
        print(f"approximate faster from {min(faster, default=0):,} vectors; {PAYS_SPEEDUP:.0f}x faster at recall@10 "
              f">= {PAYS_RECALL} from {min(paying, default=0):,}; the exact search reaches {FELT_MS:.0f} ms at about "
              f"{felt:,.0f} vectors")
        rows.append(_published.Row(
            "latency crossover: smallest size where the approximate search answers faster (measured: "
            + ", ".join(f"{result['count']:,}" for result in every) + ")",
            f"{min(faster):,} vectors" if faster else "none"))
        rows.append(_published.Row(
            f"break-even: smallest size where the approximate search is {PAYS_SPEEDUP:.0f}x faster at recall@10 >= "
            f"{PAYS_RECALL} (below it the exact search takes milliseconds and misses nothing); the exact search "
            f"reaches {FELT_MS:.0f} ms at about {felt:,.0f} vectors",
            f"{min(paying):,} vectors" if paying else "none",
            f"`APPROXIMATE_FROM` = {APPROXIMATE_FROM:,}"))
    _published.finish(__file__, rows, args.write_docs, note="one thread (BLAS, FAISS, torch)")


if __name__ == "__main__":
    main()
