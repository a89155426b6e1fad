"""Hard negatives (config section ``negatives``): mined batches are nearer by the source embeddings than random
ones and never group two pairs of one clip or one caption text; the chunked k-NN equals the full matrix's;
HN-NCE equals the baseline loss at hardness 0 and a hand computation above it; training with mining resumes
bit for bit; the keys are typed, range-checked and shown by `runs show` / `runs compare`; torchrun with two
processes mines a run's embeddings on PaSST + RoBERTa with the same batches on both (slow)."""

import json
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.data.layout import Layout
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.runs.config import build_config, from_dict
from dcase_t6.runs.registry import Registry
from dcase_t6.submission.systems import describe_runs
from dcase_t6.training import losses, negatives
from dcase_t6.training import trainer as training
from dcase_t6.training.data import epoch_batches, epoch_order, load_pairs
from dcase_t6.training.distributed import World, init_world
from dcase_t6.training.miner import MiningInputs, check_same_batches, run_vectors
from dcase_t6.training.negatives import (
    NO_NEIGHBOUR,
    Neighbours,
    PairGroups,
    mined_batches,
    nearest_neighbours,
    pair_groups,
    pair_vectors,
)
from dcase_t6.training.objective import Contrastive, GatheredBatch
from helpers.cli import free_port, run_dcase_process

TOPICS, CLIPS_PER_TOPIC, CAPTIONS_PER_CLIP, BATCH = 8, 40, 2, 32


def clustered_pairs(seed: int = 0):
    """640 pairs: 320 clips in 8 topics (topic centre, a shared offset, noise), 2 captions each."""
    rng = np.random.default_rng(seed)
    centres, offset = rng.standard_normal((TOPICS, 32)), 0.5 * rng.standard_normal(32)
    clip_topic = np.repeat(np.arange(TOPICS), CLIPS_PER_TOPIC)
    clip_ids = np.repeat(np.arange(len(clip_topic)), CAPTIONS_PER_CLIP)
    audio = centres[clip_topic] + offset + 0.7 * rng.standard_normal((len(clip_topic), 32))
    text = centres[clip_topic[clip_ids]] + offset + 0.7 * rng.standard_normal((len(clip_ids), 32))
    vectors = pair_vectors(torch.tensor(audio, dtype=torch.float32), torch.tensor(text, dtype=torch.float32),
                           torch.from_numpy(clip_ids))
    return vectors, PairGroups(clip_ids, np.arange(len(clip_ids)))


def mean_batch_similarity(batches, vectors: torch.Tensor) -> float:
    """The mean over batches of the mean cosine similarity of a batch's distinct pairs of rows."""
    points, means = vectors.numpy().astype(np.float64), []
    for batch in batches:
        similarity = points[batch] @ points[batch].T
        means.append((similarity.sum() - np.trace(similarity)) / (len(batch) * (len(batch) - 1)))
    return float(np.mean(means))


def test_mined_batches_are_nearer_than_random_ones_and_draw_every_pair_once():
    vectors, groups = clustered_pairs()
    pairs = len(groups.clip_ids)
    neighbours = Neighbours(nearest_neighbours(vectors, groups, 8), groups)
    random = mean_batch_similarity(epoch_batches(pairs, BATCH, 0, 0), vectors)
    ratios = {}
    for share in (0.0, 0.5, 1.0):
        drawn = mined_batches(epoch_order(pairs, 0, 0), neighbours, BATCH, share, np.random.default_rng([0, 0, 3]))
        assert sorted(np.concatenate(drawn.batches).tolist()) == list(range(pairs))  # each pair once
        assert drawn.mined_fraction() >= 0.85 * share
        ratios[share] = mean_batch_similarity(drawn.batches, vectors) / random
    assert ratios[0.0] == pytest.approx(1.0, abs=1e-6)  # share 0: the random batches (shuffled within)
    assert ratios[1.0] >= 1.5 and ratios[0.5] >= 1.2  # measured 2.30 and 1.35
    again = mined_batches(epoch_order(pairs, 0, 0), neighbours, BATCH, 0.5, np.random.default_rng([0, 0, 3]))
    first = mined_batches(epoch_order(pairs, 0, 0), neighbours, BATCH, 0.5, np.random.default_rng([0, 0, 3]))
    later = mined_batches(epoch_order(pairs, 0, 1), neighbours, BATCH, 0.5, np.random.default_rng([0, 1, 3]))
    assert first.digest() == again.digest() != later.digest()
    assert all(np.array_equal(a, b) for a, b in zip(first.batches, again.batches))


def test_no_mined_group_holds_two_pairs_of_one_clip_or_one_caption_text():
    """Pairs of one clip are each other's nearest points, and so are pairs with the same caption text on other
    clips: the mining must pass over both."""
    rng = np.random.default_rng(1)
    clip_ids = np.repeat(np.arange(40), 5)  # 40 clips of 5 captions
    caption_ids = np.arange(200)
    caption_ids[1::10] = caption_ids[0]  # one text on 20 pairs of 20 clips, as duplicate captions are
    centres = rng.standard_normal((40, 16))
    audio = torch.tensor(centres, dtype=torch.float32)
    text = torch.tensor(centres[clip_ids] + 0.05 * rng.standard_normal((200, 16)), dtype=torch.float32)
    text[caption_ids == 0] = text[0].clone()
    groups = PairGroups(clip_ids, caption_ids)
    table = nearest_neighbours(pair_vectors(audio, text, torch.from_numpy(clip_ids)), groups, 6)
    rows = np.repeat(np.arange(200), 6).reshape(200, 6)
    found = table != NO_NEIGHBOUR
    assert found.all()
    assert not (clip_ids[table] == clip_ids[rows]).any() and not (caption_ids[table] == caption_ids[rows]).any()
    for share in (0.5, 1.0):
        drawn = mined_batches(epoch_order(200, 3, 0), Neighbours(table, groups), 16, share,
                              np.random.default_rng([3, 0, 3]))
        assert sum(int(mask.sum()) for mask in drawn.mined) > 0.8 * share * 200
        for batch, mined in zip(drawn.batches, drawn.mined):
            assert len(set(clip_ids[batch[mined]])) == int(mined.sum())
            assert len(set(caption_ids[batch[mined]])) == int(mined.sum())


def test_the_chunked_neighbours_equal_the_full_matrix_and_fewer_pairs_than_k(monkeypatch):
    rng = np.random.default_rng(2)
    vectors = torch.nn.functional.normalize(torch.tensor(rng.standard_normal((50, 8)), dtype=torch.float32), dim=1)
    groups = PairGroups(np.arange(50) // 2, np.arange(50))
    monkeypatch.setattr(negatives, "CHUNK_ELEMENTS", 7 * 50)  # blocks of 7 rows: 8 blocks, the last of 1 row
    similarity = (vectors @ vectors.T).numpy()
    similarity[groups.clip_ids[:, None] == groups.clip_ids[None, :]] = -np.inf
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    assert np.array_equal(nearest_neighbours(vectors, groups, 5), expected)
    few = nearest_neighbours(vectors[:4], PairGroups(np.array([0, 0, 1, 2]), np.arange(4)), 8)
    assert few.shape == (4, 3) and (few == NO_NEIGHBOUR).sum(axis=1).tolist() == [1, 1, 0, 0]  # 0, 1: one clip


def similarity_batch(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio and text whose product is ``logits`` (temperature 1)."""
    return torch.eye(len(logits), dtype=torch.float64), logits.T.clone()


def test_hardness_0_is_the_baseline_loss():
    generator = torch.Generator().manual_seed(3)
    audio = torch.nn.functional.normalize(torch.randn(8, 6, generator=generator), dim=1)
    text = torch.nn.functional.normalize(torch.randn(8, 6, generator=generator), dim=1)
    ids = torch.tensor([0, 0, 1, 2, 2, 2, 3, -4])
    baseline = losses.multi_positive_infonce(audio, text, ids, ids, 0.05)
    assert losses.hard_negative_infonce(audio, text, ids, 0.05, 0.0).item() == pytest.approx(baseline.item(),
                                                                                                    abs=1e-7)
    batch = GatheredBatch(audio, text, ids, torch.arange(8), torch.full((8,), -1), torch.tensor(0.05))
    assert torch.equal(Contrastive(0.0)(batch), baseline)
    assert Contrastive(0.5)(batch).item() > baseline.item()  # the near negatives weigh more


def hand_computed_hn_nce(logits: np.ndarray, ids: list[int], beta: float) -> float:
    """HN-NCE written out: each softmax's positives weigh 1, its negatives n exp(beta s) / sum exp(beta s)."""
    def direction(matrix):  # softmax over each row of ``matrix``
        terms = []
        for row in range(len(matrix)):
            positives = [col for col in range(len(matrix)) if ids[col] == ids[row]]
            negatives = [col for col in range(len(matrix)) if ids[col] != ids[row]]
            norm = sum(math.exp(beta * matrix[row][col]) for col in negatives)
            denominator = sum(math.exp(matrix[row][col]) for col in positives) + sum(
                len(negatives) * math.exp(beta * matrix[row][col]) / norm * math.exp(matrix[row][col])
                for col in negatives)
            terms += [matrix[row][col] - math.log(denominator) for col in positives]
        return sum(terms) / len(terms)
    return -0.5 * (direction(logits.T.tolist()) + direction(logits.tolist()))


def test_hard_negative_loss_of_a_small_case_computed_by_hand():
    logits = np.array([[2.0, 1.5, -0.5, 0.3], [1.2, 2.5, 0.9, -1.0], [0.1, 0.4, 1.8, 1.1], [-0.3, 0.8, 0.6, 1.4]])
    ids = [0, 0, 1, 2]  # the first two pairs describe one clip: both positives of each other
    audio, text = similarity_batch(torch.tensor(logits))
    for beta in (0.5, 2.0):
        loss = losses.hard_negative_infonce(audio, text, torch.tensor(ids), 1.0, beta)
        assert loss.item() == pytest.approx(hand_computed_hn_nce(logits, ids, beta), abs=1e-12)
    # one negative per softmax weighs 1 whatever beta: plain InfoNCE
    pair = torch.tensor([[1.0, 0.2], [-0.4, 0.7]], dtype=torch.float64)
    audio, text = similarity_batch(pair)
    assert losses.hard_negative_infonce(audio, text, torch.tensor([0, 1]), 1.0, 3.0).item() == (
        pytest.approx(losses.multi_positive_infonce(audio, text, torch.tensor([0, 1]), torch.tensor([0, 1]),
                                                    1.0).item(), abs=1e-12))


def test_negatives_keys_are_typed_and_checked_by_name():
    config = build_config(None, {"negatives.mining": "self", "negatives.share": "0.25", "negatives.neighbours": "4",
                                 "negatives.hardness": "0.5", "negatives.refresh_epochs": "2"})
    negatives_config = config.negatives
    assert (negatives_config.mining, negatives_config.share, negatives_config.neighbours) == ("self", 0.25, 4)
    assert (negatives_config.hardness, negatives_config.refresh_epochs) == (0.5, 2)
    for key, value, message in [("negatives.mining", "hard", "one of none, run, self"),
                                ("negatives.share", "1.5", "a probability in [0, 1]"),
                                ("negatives.neighbours", "0", "between 1 and 1024"),
                                ("negatives.hardness", "-1", "between 0 and 100"),
                                ("negatives.refresh_epochs", "0", "between 1 and 10000")]:
        with pytest.raises(UserError, match=f"config key '{key}' = .* must be {re.escape(message)}"):
            build_config(None, {key: value})
    with pytest.raises(UserError, match="mining run needs the run whose embeddings are mined"):
        build_config(None, {"negatives.mining": "run"})
    with pytest.raises(UserError, match="negatives.source' = 'abc' with negatives.mining self"):
        build_config(None, {"negatives.mining": "self", "negatives.source": "abc"})


def test_training_with_mining_resumes_bit_for_bit_and_shows_its_keys(tiny_training, tmp_path):
    """Mining the model itself every epoch with HN-NCE: 2 epochs straight equal 2 steps, a stop and a resume
    (which reads the neighbours the stopped run mined at epoch 1, not the model as it is after 2 steps)."""
    settings = {**tiny_training, "epochs": 2, "batch_size": 16, "validation_split": None, "log": "none",
                "negatives.mining": "self", "negatives.share": 0.5, "negatives.neighbours": 4,
                "negatives.hardness": 0.5}
    full = training.train_new(tmp_path, build_config(None, {**settings, "name": "straight"}))
    stopped = training.train_new(tmp_path, build_config(None, {**settings, "name": "stopped", "max_steps": 2}))
    resumed = training.resume(tmp_path, stopped.run)
    assert full.status == resumed.status == "finished" and resumed.step == full.step == 8  # 60 pairs, batches of 16
    registry = Registry(tmp_path)
    weights = [torch.load(registry.file(run, "checkpoint", "last").path, weights_only=True)["model"]
               for run in (full.run, stopped.run)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    losses_of = [[epoch["train_contrastive"] for epoch in registry.run(run).epochs] for run in (full.run, stopped.run)]
    assert losses_of[0] == losses_of[1] and all(math.isfinite(value) for value in losses_of[0])
    with np.load(registry.layout.run(full.run) / "negatives.npz") as stored:
        assert int(stored["epoch"]) == 1 and stored["neighbours"].shape == (60, 4)

    baseline = training.register_run(registry, build_config(None, {**tiny_training, "name": "plain"}))
    shown = CliRunner().invoke(main, ["--workdir", str(tmp_path), "runs", "show", full.run, "--json"])
    assert json.loads(shown.output)["config"]["negatives"] == {
        "mining": "self", "source": None, "share": 0.5, "neighbours": 4, "refresh_epochs": 1, "hardness": 0.5}
    compared = CliRunner().invoke(main, ["--workdir", str(tmp_path), "runs", "compare", full.run, baseline, "--json"])
    differing = json.loads(compared.output)["differing"]
    assert differing["negatives.mining"] == ["self", "none"] and differing["negatives.hardness"] == [0.5, 0.0]
    assert differing["negatives.neighbours"] == [4, 8]
    loss_function = [describe_runs(registry, [run], count_parameters=False).description["loss_function"]
                     for run in (full.run, baseline)]
    assert loss_function[0] == loss_function[1] + ", hard negatives weighted as in HN-NCE (beta 0.5)"


@pytest.mark.slow  # a tiny-cnn source run, then 2 gloo processes train PaSST + RoBERTa for 2 steps: minutes
def test_torchrun_mines_a_runs_embeddings_with_hn_nce_on_the_real_architectures(roberta_with_pooler, tmp_path):
    """Both processes must build the same batches: the run checks their digests every epoch (it would stop with
    an error otherwise), and the digest the main process reports equals one process's computation here."""
    root, workdir = tmp_path / "data", tmp_path / "work"
    prepare_synthetic(Layout.at(root), SyntheticConfig(development=3, validation=2, evaluation=2, min_duration=12.0,
                                                       max_duration=25.0))
    source = training.train_new(workdir, build_config(None, {
        "name": "source", "data_root": str(root), "datasets": "synthetic", "model.backbone": "tiny-cnn",
        "model.text_model": "tiny-random", "model.embed_dim": 16, "batch_size": 8, "epochs": 1, "audio_seconds": 2.0,
        "log": "none"})).run
    trained = run_dcase_process(workdir, "train", "--data-root", str(root), "--datasets", "synthetic", "--backbone",
                                "passt", "--audio-weights", "random", "--text-model", str(roberta_with_pooler),
                                "--epochs", "1", "--batch-size", "8", "--set", "log=none", "--set",
                                "negatives.mining=run", "--set", f"negatives.source={source}", "--set",
                                "negatives.neighbours=4", "--set", "negatives.hardness=0.5", "--json", processes=2)
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads(trained.stdout)
    assert summary["status"] == "finished" and summary["step"] == 2  # 15 pairs in global batches of 8 and 7
    registry = Registry(workdir)
    run = registry.run(summary["run"])
    assert run.config["negatives"]["source"] == source and math.isfinite(run.epochs[0]["train_loss"])
    reported = re.findall(r"negatives: epoch 1: (\d+)% of the pairs drawn in mined groups \(batches (\w+)\)",
                          trained.stderr)
    assert len(reported) == 1 and int(reported[0][0]) > 0  # one voice: the main process's

    config = from_dict(run.config)
    pairs = load_pairs(config)
    assert pairs.fingerprint == run.data_fingerprint
    vectors = run_vectors(MiningInputs(config, registry, registry.layout.run(run.id), pairs, World()))
    table = nearest_neighbours(vectors, pair_groups(pairs), 4)
    drawn = mined_batches(epoch_order(len(pairs.captions), config.seed, 0), Neighbours(table, pair_groups(pairs)), 8,
                          0.5, np.random.default_rng([config.seed, 0, 3]))
    assert drawn.digest() == reported[0][1]


def _digest_worker(rank: int, port: int, digests: list[str], results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    world = init_world(timeout_minutes=2)
    try:
        check_same_batches(digests[rank], world, 0)
        results[rank] = "agreed"
    except RuntimeError as err:
        results[rank] = str(err)
    dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes, twice
def test_processes_that_drew_different_batches_stop_together():
    outcomes = []
    for digests in (["0123456789abcdef"] * 2, ["0123456789abcdef", "0123456789abcdee"]):
        with mp.Manager() as manager:
            results = manager.dict()
            mp.spawn(_digest_worker, args=(free_port(), digests, results), nprocs=2, join=True)
            outcomes.append(dict(results))
    assert outcomes[0] == {0: "agreed", 1: "agreed"}
    assert outcomes[1][0] == outcomes[1][1] and "drew different batches for epoch 1" in outcomes[1][0]
