"""Cluster auxiliary task: the loss by hand, clustering, labels in the registry, heads in checkpoints."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn.functional import cross_entropy

from dcase_t6.common.errors import UserError
from dcase_t6.embedding.checkpoints import SplitRequest, embed_run
from dcase_t6.models import DualEncoder, cluster_head
from dcase_t6.runs.config import Clusters, build_config, from_dict
from dcase_t6.runs.model import load_model
from dcase_t6.runs.registry import Registry
from dcase_t6.training import trainer as training
from dcase_t6.training.builder import build_training, initialise_from
from dcase_t6.training.clustering import assign_noise, cluster_vectors, read_labels
from dcase_t6.training.data import BatchSource, epoch_batches, load_pairs
from dcase_t6.training.distributed import World
from dcase_t6.training.losses import cluster_loss


def test_cluster_loss_is_the_sum_of_both_cross_entropies_by_hand():
    audio_logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # p(label 0) = 3/4; uniform
    text_logits = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])  # p(label 0) = 1/5
    labels = torch.tensor([0, -1])  # the second pair (a mixed clip) has no label
    expected = math.log(4 / 3) + math.log(5)
    assert cluster_loss(audio_logits, text_logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert cluster_loss(audio_logits, text_logits, torch.tensor([-1, -1])).item() == 0.0


def test_cluster_head_is_two_linear_layers_with_three_times_the_input_in_between():
    head = cluster_head(16, 5)
    assert [type(layer).__name__ for layer in head] == ["Linear", "ReLU", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[2].out_features) == (16, 48, 5)


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), 20)
    centres = np.eye(8)[:3] * 5
    return centres[truth] + 0.1 * rng.standard_normal((60, 8)), truth


def same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    return len(set(zip(labels.tolist(), truth.tolist()))) == len(set(truth.tolist())) == len(set(labels.tolist()))


@pytest.mark.slow  # about 15 s: UMAP + HDBSCAN
def test_kmeans_and_hdbscan_find_separated_groups():
    vectors, truth = blobs()
    labels, info = cluster_vectors(vectors, Clusters(method="kmeans", count=3), seed=0)
    assert same_partition(labels, truth) and info == {"method": "kmeans", "clusters": 3}
    labels, info = cluster_vectors(vectors, Clusters(method="hdbscan", min_cluster_size=5), seed=0)
    assert same_partition(labels, truth) and info["clusters"] == 3 and info["method"].endswith("+hdbscan")
    with pytest.raises(UserError, match="'clusters.count' is 100"):
        cluster_vectors(vectors, Clusters(method="kmeans", count=100), seed=0)
    with pytest.raises(UserError, match="'clusters.method' is 'spectral'"):
        cluster_vectors(vectors, Clusters(method="spectral"), seed=0)


def test_noise_points_join_the_cluster_with_the_nearest_centroid():
    points = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0], [7.0, 1.0], [2.0, 1.0]])
    labels = np.array([0, 0, 1, 1, -1, -1])
    assert assign_noise(points, labels).tolist() == [0, 0, 1, 1, 1, 0]


@pytest.fixture(scope="module")
def refinetuned(tmp_path_factory, tiny_training):
    workdir = tmp_path_factory.mktemp("work")
    base = training.train_new(workdir, build_config(None, {**tiny_training, "name": "base"})).run
    settings = {**tiny_training, "name": "clusters", "init_from": base, "clusters.method": "kmeans",
                "clusters.count": 4}
    run = training.train_new(workdir, build_config(None, settings)).run
    return workdir, base, run, build_config(None, settings)


def test_labels_are_registered_one_per_training_caption_and_read_back(refinetuned):
    workdir, _, run, config = refinetuned
    registry = Registry(workdir)
    record = registry.file(run, "clusters", "synthetic/development-training")
    pairs = load_pairs(config)
    labels = read_labels(record.path, pairs.captions)
    assert len(labels) == len(pairs.captions) and set(labels.tolist()) == {0, 1, 2, 3}
    assert record.info["method"] == "kmeans" and record.info["clusters"] == 4 and record.info["source"] == "init"
    frame = pd.read_csv(record.path, keep_default_na=False)
    assert frame["clip"].tolist() == pairs.pair_clips()
    same_caption = frame.groupby("caption")["label"].nunique()
    assert (same_caption == 1).all()
    with pytest.raises(UserError, match="made for other training captions"):
        read_labels(record.path, pairs.captions[::-1])


def test_the_cluster_term_adds_exactly_its_weight_times_the_cross_entropies(refinetuned):
    workdir, _, run, config = refinetuned
    epoch = Registry(workdir).run(run).epochs[0]
    assert epoch["train_cluster"] > 0
    expected = epoch["train_contrastive"] + 0.05 * epoch["train_cluster"]
    assert epoch["train_loss"] == pytest.approx(expected, rel=1e-6)  # float32 sums


def test_a_batch_loss_adds_the_heads_cross_entropies_on_the_registered_labels(refinetuned):
    workdir, _, run, config = refinetuned
    registry = Registry(workdir)
    setup = build_training(from_dict(registry.run(run).config), registry, run, World())
    data = setup.data
    batches = epoch_batches(len(data.pairs.captions), 8, seed=0, epoch=0)
    assert data.seed == 0 and data.world is setup.world
    batch = BatchSource(data, 0, batches)[0]
    outputs = setup.model(batch.waveforms, batch.lengths, batch.captions)
    losses = setup.objective(outputs, batch, setup.model.temperature)
    loss, terms = losses.total, losses.values()
    labels = torch.from_numpy(read_labels(registry.file(run, "clusters", "synthetic/development-training").path,
                                          data.pairs.captions))[batch.pairs]
    expected = cross_entropy(outputs[2], labels) + cross_entropy(outputs[3], labels)
    assert terms["cluster"] == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() == pytest.approx(terms["contrastive"] + 0.05 * expected.item(), rel=1e-6)


def test_heads_are_saved_with_the_finetuned_weights_and_embed_loads_both_kinds(refinetuned, tiny_data_root):
    workdir, base, run, _ = refinetuned
    registry = Registry(workdir)
    with_heads = load_model(registry, run).model
    without_heads = load_model(registry, base).model
    assert with_heads.config.cluster_classes == 4 and with_heads.audio_cluster_head[2].out_features == 4
    assert not hasattr(without_heads, "audio_cluster_head")
    written = embed_run(workdir, run, SplitRequest(tiny_data_root, "synthetic", "development-testing", batch_size=4))
    assert written.files == 4


def test_init_from_a_run_with_another_architecture_is_refused(refinetuned, tiny_training):
    workdir, base, _, _ = refinetuned
    model = DualEncoder(build_config(None, {**tiny_training, "model.embed_dim": 8}).model, audio_weights="random")
    with pytest.raises(UserError, match=f"init_from {base}: its weights do not fit this model"):
        initialise_from(model, Registry(workdir), base)
