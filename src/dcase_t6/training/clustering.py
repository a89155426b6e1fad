"""Cluster auxiliary task (stage 3): a pseudo-label for every training caption, stored in the registry.

Config section ``clusters`` (off while ``method`` is null):

* ``method``: ``kmeans`` (scikit-learn KMeans, ``count`` clusters), ``hdbscan`` (BERTopic-like: UMAP
  to 5 cosine dimensions when ``umap-learn`` is installed, else PCA, then scikit-learn's HDBSCAN with
  ``min_cluster_size``; noise captions get the cluster whose centroid is nearest, so every caption has
  a label) or ``bertopic`` (the ``bertopic`` package as in the AISTAT 2025 report: UMAP to 5 cosine
  dimensions, HDBSCAN with ``min_cluster_size``, then the outliers reduced by BERTopic's topic
  probabilities: each goes to its most probable topic; the topics' c-TF-IDF words are registered);
* ``source`` of the caption embeddings: ``init`` (the text encoder of the ``init_from`` run, i.e. the
  finetuned model), ``run:RUN`` (another run's text encoder), ``model:NAME`` (a text model by name or
  folder, e.g. ``model:minilm``; first-token states), ``sentence:NAME`` (a sentence-transformers model by
  name or folder, pooled as it defines, e.g. ``sentence:minilm``, the offline all-MiniLM-L6-v2) or ``e5``
  (``intfloat/e5-large-v2``; ``e5:PATH`` for a local copy or another e5 model): an e5 model is given every
  caption with its required input prefix ``"query: "``;
* ``weight``: the loss weight of CE(audio head) + CE(text head), 0.05 as in the AISTAT 2025 system.

Each distinct caption is embedded and clustered once. The labels are written to
``runs/<id>/clusters.csv`` (columns clip, caption, label; one row per training pair) and registered with
the run as kind ``clusters``, tag ``<datasets>/<train_split>``; a resumed run reads them back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from dcase_t6.common.atomic import atomic_open
from dcase_t6.common.errors import UserError
from dcase_t6.models.text import TextEncoder, TextSettings, _minilm_path
from dcase_t6.runs.config import Clusters, TrainConfig
from dcase_t6.runs.lookup import writable
from dcase_t6.runs.model import load_model
from dcase_t6.runs.record_reader import RunLookup
from dcase_t6.training.data import CaptionPairs
from dcase_t6.training.distributed import World

_REDUCED_DIMENSIONS = 5
_UMAP_NEIGHBOURS = 15  # BERTopic's default
E5_MODEL, E5_PREFIX = "intfloat/e5-large-v2", "query: "
_TOPIC_WORDS = 4


def clusters_tag(config: TrainConfig) -> str:
    """Registry tag of a run's cluster labels: ``<dataset>[+<dataset>...]/<train_split>[+<train_split>...]``."""
    return f"{'+'.join(config.datasets)}/{'+'.join(config.train_split)}"


def caption_labels(registry: RunLookup, run_id: str, config: TrainConfig, pairs: CaptionPairs,
                   world: World) -> np.ndarray:
    """The run's label of every training pair: read from the registry (the other processes: from the run's record,
    once the main process has registered the labels), or clustered now and registered by the main process."""
    tag = clusters_tag(config)
    captions = pairs.captions
    if world.is_main and not _has_clusters(registry, run_id, tag):
        unique, inverse = np.unique(np.array(captions, dtype=object), return_inverse=True)
        vectors = caption_embeddings(registry, config, unique.tolist(), world.device)
        labels, info = cluster_vectors(vectors, config.clusters, config.seed, documents=unique.tolist())
        path = registry.layout.run(run_id) / "clusters.csv"
        write_labels(path, pairs.pair_clips(), captions, labels[inverse])
        writable(registry).add_file(run_id, "clusters", tag, path, {**info, "source": config.clusters.source,
                                                                    "captions": len(captions)})
    world.wait("cluster the training captions")
    return read_labels(registry.file(run_id, "clusters", tag).path, captions)


def _has_clusters(registry: RunLookup, run_id: str, tag: str) -> bool:
    return registry.has_file(run_id, "clusters", tag)


def caption_embeddings(registry: RunLookup, config: TrainConfig, captions: list[str],
                       device: torch.device) -> np.ndarray:
    """Embeddings of ``captions`` from the configured source (see the module docstring)."""
    sentence = sentence_source(config.clusters.source)
    if sentence is not None:
        return sentence_embeddings(*sentence, captions, device, max(1, config.batch_size))
    encode = _text_encoder(registry, config, device)
    batch = max(1, config.batch_size)
    with torch.no_grad():
        parts = [encode(captions[start:start + batch]).float().cpu().numpy()
                 for start in range(0, len(captions), batch)]
    return np.concatenate(parts)


def sentence_source(source: str) -> tuple[str, str] | None:
    """(model name or folder, input prefix) of a sentence-model source (``sentence:NAME``, ``e5``, ``e5:PATH``);
    None for the other sources."""
    kind, _, name = source.partition(":")
    if source == "e5":
        return E5_MODEL, E5_PREFIX
    if kind == "e5" and name:
        return name, E5_PREFIX
    if kind == "sentence" and name:
        return name, ""
    return None


def sentence_embeddings(name: str, prefix: str, captions: list[str], device: torch.device,
                        batch_size: int) -> np.ndarray:
    """Sentence-transformers embeddings of ``prefix + caption`` for every caption.

    Args:
        name: a sentence-transformers model name, a folder, or ``minilm`` (the offline all-MiniLM-L6-v2).
        prefix: put before every caption (``"query: "`` for e5 models).
        captions: the texts, as written (no lower-casing: the model has its own tokeniser).
        device: where to run.
        batch_size: captions encoded at once.

    Returns:
        One row per caption.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError(f"clusters.source {name!r} needs the package sentence-transformers (bertopic brings it): "
                        "pip install 'bertopic>=0.16'") from None
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    path = _minilm_path() if name == "minilm" else name
    try:
        model = SentenceTransformer(path, device=str(device))
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise UserError(f"cannot load sentence model '{name}' for clusters.source ({reason}); with internet it comes "
                        "from the Hugging Face hub, offline set clusters.source to sentence:/folder (or e5:/folder) "
                        "saved with save_pretrained, or sentence:minilm") from None
    return model.encode([prefix + caption for caption in captions], batch_size=batch_size, convert_to_numpy=True,
                        show_progress_bar=False)


def _text_encoder(registry: RunLookup, config: TrainConfig,
                  device: torch.device) -> Callable[[list[str]], torch.Tensor]:
    source = config.clusters.source
    kind, _, name = source.partition(":")
    if source == "init" and not config.init_from:
        raise UserError("config key 'clusters.source' is 'init' but 'init_from' is empty; set init_from to the "
                        "finetuned run, or use clusters.source run:RUN or model:NAME")
    if source == "init" or kind == "run":
        model = load_model(registry, config.init_from if source == "init" else name, device=str(device)).model
        return model.eval().encode_text
    if kind == "model" and name:
        return TextEncoder(TextSettings(name, config.model.text_max_length, dropout=None)).to(device).eval()
    raise UserError(f"config key 'clusters.source' is {source!r}; expected init, run:RUN, model:NAME, sentence:NAME, "
                    "e5 or e5:PATH")


def cluster_vectors(vectors: np.ndarray, settings: Clusters, seed: int,
                    documents: list[str] | None = None) -> tuple[np.ndarray, dict]:
    """Consecutive labels 0..K-1 of the L2-normalised ``vectors``, and what was done (for the registry).

    Args:
        vectors: one embedding per distinct caption.
        settings: the config's ``clusters`` section.
        seed: seed of KMeans and UMAP.
        documents: the captions of ``vectors`` (``bertopic`` needs them for its topic words).

    Returns:
        The labels and the registry info (method, clusters, noise reassigned, topic words).
    """
    from sklearn.preprocessing import normalize

    unit = normalize(vectors.astype(np.float64))
    if settings.method == "kmeans":
        labels, info = _kmeans(unit, settings.count, seed), {"method": "kmeans"}
    elif settings.method == "hdbscan":
        labels, info = _hdbscan(unit, settings.min_cluster_size, seed)
    elif settings.method == "bertopic":
        if documents is None or len(documents) != len(unit):
            raise ValueError("bertopic clusters need one document (caption) per vector")
        labels, info = _bertopic(unit, documents, settings.min_cluster_size, seed)
    else:
        raise UserError(f"config key 'clusters.method' is {settings.method!r}; expected kmeans, hdbscan, bertopic or "
                        "null (off)")
    labels = np.unique(labels, return_inverse=True)[1]
    return labels, {**info, "clusters": int(labels.max()) + 1}


def _kmeans(unit: np.ndarray, count: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    if not 2 <= count <= len(unit):
        raise UserError(f"config key 'clusters.count' is {count}; it must be between 2 and the number of distinct "
                        f"training captions ({len(unit)})")
    return KMeans(n_clusters=count, n_init=10, random_state=seed).fit_predict(unit)


def _hdbscan(unit: np.ndarray, min_cluster_size: int, seed: int) -> tuple[np.ndarray, dict]:
    from sklearn.cluster import HDBSCAN

    reduced, reducer = reduce_dimensions(unit, seed)
    labels = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(reduced)
    if labels.max() < 0:
        raise UserError(f"clusters: HDBSCAN found no cluster among {len(unit)} captions; lower "
                        f"clusters.min_cluster_size ({min_cluster_size}) or use clusters.method kmeans")
    noise = int((labels < 0).sum())
    return assign_noise(reduced, labels), {"method": f"{reducer}+hdbscan", "noise_reassigned": noise}


def _bertopic(unit: np.ndarray, documents: list[str], min_cluster_size: int, seed: int) -> tuple[np.ndarray, dict]:
    """BERTopic on precomputed embeddings: UMAP (cosine, 5 dimensions, 15 neighbours, min_dist 0), HDBSCAN (eom,
    with prediction data for the topic probabilities), outliers to their most probable topic."""
    try:
        from bertopic import BERTopic
        from hdbscan import HDBSCAN
        from sklearn.feature_extraction.text import CountVectorizer
        from umap import UMAP
    except ImportError:
        raise UserError("clusters.method bertopic needs the package bertopic (with umap-learn and hdbscan): "
                        "pip install 'bertopic>=0.16'") from None
    if len(unit) < max(2 * min_cluster_size, _REDUCED_DIMENSIONS + 3):
        raise UserError(f"clusters: bertopic needs at least {max(2 * min_cluster_size, _REDUCED_DIMENSIONS + 3)} "
                        f"distinct training captions with min_cluster_size {min_cluster_size} (found {len(unit)}); "
                        "lower clusters.min_cluster_size or use clusters.method kmeans")
    reducer = UMAP(n_neighbors=min(_UMAP_NEIGHBOURS, len(unit) - 1), n_components=_REDUCED_DIMENSIONS, min_dist=0.0,
                   metric="cosine", random_state=seed, n_jobs=1)  # a seed makes UMAP single-threaded anyway
    clusterer = HDBSCAN(min_cluster_size=min_cluster_size, metric="euclidean", cluster_selection_method="eom",
                        prediction_data=True)
    model = BERTopic(umap_model=reducer, hdbscan_model=clusterer, vectorizer_model=CountVectorizer(
        stop_words="english"), calculate_probabilities=True)
    topics, probabilities = model.fit_transform(documents, unit.astype(np.float32))
    topics = np.asarray(topics)
    if topics.max() < 0:
        raise UserError(f"clusters: BERTopic found no topic among {len(unit)} captions; lower "
                        f"clusters.min_cluster_size ({min_cluster_size}) or use clusters.method kmeans")
    outliers = int((topics < 0).sum())
    if outliers:
        topics = np.asarray(model.reduce_outliers(documents, topics.tolist(), probabilities=probabilities,
                                                  strategy="probabilities", threshold=0.0))
        if topics.min() < 0:  # no probability at all for some: the nearest topic centroid
            topics = assign_noise(unit, topics)
    found, labels = np.unique(topics, return_inverse=True)
    words = {str(label): " ".join(word for word, _ in (model.get_topic(int(topic)) or [])[:_TOPIC_WORDS])
             for label, topic in enumerate(found)}
    return labels, {"method": "umap+bertopic", "noise_reassigned": outliers, "reassigned_by": "topic probabilities",
                    "topic_words": words}


def reduce_dimensions(unit: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """UMAP (cosine) to 5 dimensions when umap-learn is installed, else PCA."""
    dimensions = min(_REDUCED_DIMENSIONS, unit.shape[1], len(unit) - 1)
    if importlib.util.find_spec("umap") is not None:
        import umap

        reducer = umap.UMAP(n_components=dimensions, metric="cosine", random_state=seed, n_jobs=1)
        return reducer.fit_transform(unit), "umap"
    from sklearn.decomposition import PCA

    return PCA(n_components=dimensions, random_state=seed).fit_transform(unit), "pca"


def assign_noise(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Labels with every noise point (label < 0) moved to the cluster with the nearest centroid."""
    clusters = np.unique(labels[labels >= 0])
    centroids = np.stack([points[labels == cluster].mean(axis=0) for cluster in clusters])
    distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=-1)
    return np.where(labels >= 0, labels, clusters[distances.argmin(axis=1)])


def write_labels(path: Path, pair_clips: list[str], captions: list[str], labels: np.ndarray) -> None:
    """One row per training pair: clip (dataset/file_name), caption, label."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        pd.DataFrame({"clip": pair_clips, "caption": captions, "label": labels}).to_csv(handle, index=False)


def read_labels(path: Path, captions: list[str]) -> np.ndarray:
    """The labels of a clusters CSV, checked against the training captions they were made for."""
    frame = pd.read_csv(path, dtype={"clip": str, "caption": str, "label": np.int64}, keep_default_na=False)
    if frame["caption"].tolist() != list(captions):
        raise UserError(f"{path}: the cluster labels were made for other training captions (the data changed); "
                        "start a new run")
    return frame["label"].to_numpy(dtype=np.int64, copy=True)
