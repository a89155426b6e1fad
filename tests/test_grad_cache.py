"""Batches beyond memory (config key ``grad_cache_chunk``, ``training.grad_cache``): a batch trained in chunks has the
gradients of the batch in one piece, every parameter, with the contrastive, distillation and cluster terms and a
trainable temperature; in training mode the second forward of each chunk replays the first one's random draws
(dropout, PaSST's patchout and fmin/fmax) and BatchNorm's running statistics move once per chunk. Under two
processes (DDP) the chunked step's gradients equal one process's on the combined batch (global negatives)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.models import DualEncoder, ModelConfig
from dcase_t6.pipeline.run import config_digest
from dcase_t6.runs.config import Clusters, TrainConfig, build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training.data import TrainingBatch
from dcase_t6.training.distillation import TeacherSimilarity
from dcase_t6.training.distributed import World, init_world
from dcase_t6.training.grad_cache import BatchPlan, Chunk, StepParts, backward_batch, plan_chunks, split_rows
from dcase_t6.training.objective import build_objective
from dcase_t6.training.trainer import register_run
from helpers.cli import free_port

TINY = ModelConfig(backbone="tiny-cnn", text_model="tiny-random", embed_dim=8, trainable_temperature=True,
                   cluster_classes=3)
CAPTIONS = ["a dog barks", "rain falls", "a dog barks loudly", "a bell", "wind blows", "a bell rings and rain"]
CLIP_IDS = [0, 1, 0, 2, 3, -6]  # the last pair is mixed (clip id -1 - its row): its partner is pair 2
PARTNERS = [-1, -1, -1, -1, -1, 2]
LABELS = torch.tensor([0, 1, 0, 2, 1, 2])  # every pair's cluster label (the mixed pair has none)
# the three terms on, each with a weight that matters
OBJECTIVE = dataclasses.replace(TrainConfig(), distill_weight=0.7, clusters=Clusters(method="kmeans", weight=0.3))


def teachers(dim: int = 5) -> TeacherSimilarity:
    generator = torch.Generator().manual_seed(3)
    audio = torch.nn.functional.normalize(torch.randn(4, dim, generator=generator), dim=1)
    text = torch.nn.functional.normalize(torch.randn(6, dim, generator=generator), dim=1)
    return TeacherSimilarity(audio, text, torch.tensor([0, 1, 0, 2, 3, 2]), 1)


def pairs_batch(rows: list[int], samples: int, world: World = World(),
                dtype: torch.dtype = torch.float64) -> TrainingBatch:
    """This process's share (``World.share``) of a batch of pairs ``rows`` of the six."""
    waveforms = 0.1 * torch.randn(6, samples, generator=torch.Generator().manual_seed(1), dtype=dtype)
    lengths = torch.tensor([samples, samples * 3 // 4, samples, samples // 2, samples, samples * 7 // 8])
    share = world.share(len(rows))
    encoded = [rows[index] for index in share.rows]
    kept = encoded[:share.kept]
    return TrainingBatch(waveforms[encoded], lengths[encoded], [CAPTIONS[row] for row in encoded],
                         torch.tensor([CLIP_IDS[row] for row in kept]), torch.tensor(kept, dtype=torch.long),
                         torch.tensor([PARTNERS[row] for row in kept], dtype=torch.long))


def parts_for(model: torch.nn.Module, world: World = World(), network: torch.nn.Module | None = None) -> StepParts:
    objective = build_objective(OBJECTIVE, world, teachers(), LABELS)
    return StepParts(network or model, model, objective, torch.amp.GradScaler("cpu", enabled=False), None)


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.grad is not None}


def chunked_step(model, batch: TrainingBatch, chunk: int | None, seed: int = 0):
    """One batch through ``backward_batch`` as the loop runs it (seeded first): its loss and the gradients."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    losses = backward_batch(parts_for(model), batch, BatchPlan(chunk))
    return losses.total.detach(), gradients(model)


def held_step(model, batch: TrainingBatch, bounds: list[tuple[int, int]], seed: int = 0):
    """The reference: the chunks forwarded one after the other with their graphs held, the objective on all of them,
    one backward (the random draws of the chunks in order from ``seed``: the chunked step's first forward)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    parts = parts_for(model)
    outputs = [model(batch.waveforms[a:b], batch.lengths[a:b], batch.captions[a:b]) for a, b in bounds]
    losses = parts.objective(tuple(torch.cat(column) for column in zip(*outputs)), batch, model.temperature)
    parts.objective.backward_total(losses, 1).backward()
    return losses.total.detach(), gradients(model)


def assert_same_gradients(got: dict, expected: dict, tolerance: float = 1e-9) -> None:
    """Every parameter's gradient equal to ``tolerance`` relative to each entry and to the largest entry of that
    gradient (at least 1e-4 of the model's largest entry: attention key biases get a gradient that is 0 but for
    rounding): 1e-9 for the tiny models in float64 (they agree to about 1e-13 there; in float32 the rounding of
    sums over many rows, e.g. the text embeddings' over every token, reaches 1e-4 of their largest entry), 1e-5 for
    PaSST and the RoBERTa in float32 against the same chunks held together."""
    assert got.keys() == expected.keys()
    largest = max(float(gradient.abs().max()) for gradient in expected.values())
    assert largest > 0
    for name, gradient in expected.items():
        scale = max(float(gradient.abs().max()), 1e-4 * largest)
        assert torch.allclose(got[name], gradient, rtol=tolerance, atol=tolerance * scale), \
            (name, float((got[name] - gradient).abs().max()), scale)


def tiny_model() -> DualEncoder:
    """tiny-cnn and tiny-random, in float64."""
    torch.manual_seed(0)
    return DualEncoder(TINY, audio_weights=None).double()


def test_chunks_of_a_share_and_stand_ins():
    assert split_rows(6, 2) == [Chunk(0, 3), Chunk(3, 6)]
    assert split_rows(7, 3) == [Chunk(0, 3), Chunk(3, 5), Chunk(5, 7)]
    # a share one row shorter than the longest, chunks of one pair: the last chunk is a stand-in
    assert split_rows(2, 3) == [Chunk(0, 1), Chunk(1, 2), Chunk(0, 1, stand_in=True)]
    assert plan_chunks(6, 4, World()) == [Chunk(0, 3), Chunk(3, 6)]
    assert plan_chunks(6, 6, World()) == [Chunk(0, 6)] and plan_chunks(5, 1, World()) == split_rows(5, 5)


def test_chunked_step_has_the_full_batch_gradients():
    """Eval mode (no dropout, BatchNorm on its running statistics): the forward of a row does not depend on the
    rows it is encoded with, so chunks of 2 and of 4 (two of 3) give the one-piece batch's loss and gradients."""
    model = tiny_model().eval()
    batch = pairs_batch(list(range(6)), 8000)
    loss, expected = chunked_step(model, batch, None)
    for chunk in (2, 4):
        chunk_loss, got = chunked_step(model, batch, chunk)
        assert torch.allclose(chunk_loss, loss, rtol=1e-6, atol=0)
        assert_same_gradients(got, expected)
    assert "log_temperature" in expected and "audio_cluster_head.2.weight" in expected


def test_training_mode_replays_each_chunks_random_draws_and_moves_batch_norm_once_per_chunk():
    """Training mode with dropout 0.2 in the text transformer and BatchNorm on batch statistics: the chunked step
    equals the chunks held together with the same draws (the second forward replays the first), and BatchNorm's
    running statistics move once per chunk, as there; other draws (another seed) give other gradients."""
    model = tiny_model().train()
    batch = pairs_batch(list(range(6)), 8000)
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    loss, got = chunked_step(model, batch, 2, seed=5)
    chunked_buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(before[name])
    held_loss, expected = held_step(model, batch, [(0, 2), (2, 4), (4, 6)], seed=5)
    assert torch.allclose(loss, held_loss, rtol=1e-6, atol=0)
    assert_same_gradients(got, expected)
    for name, buffer in model.named_buffers():
        assert torch.equal(chunked_buffers[name], buffer), name
    tracked = [name for name in before if name.endswith("num_batches_tracked")]
    assert tracked and all(int(chunked_buffers[name] - before[name]) == 3 for name in tracked)
    _, other = held_step(model, batch, [(0, 2), (2, 4), (4, 6)], seed=6)
    assert not torch.allclose(other["text.model.encoder.layer.0.output.dense.weight"],
                              expected["text.model.encoder.layer.0.output.dense.weight"], rtol=1e-3)


def test_grad_cache_chunk_is_a_checked_memory_only_key(tmp_path):
    """Off by default; 1 to 65536 or null from YAML and --set; left out of pipeline digests (memory only); shown by
    `runs show` and `runs compare`."""
    assert TrainConfig().grad_cache_chunk is None
    assert build_config(None, {"grad_cache_chunk": "16"}).grad_cache_chunk == 16
    assert build_config(None, {"grad_cache_chunk": "null"}).grad_cache_chunk is None
    for bad, words in (("0", "must be between 1 and 65536"), ("2.5", "is not an integer")):
        with pytest.raises(UserError, match=f"config key 'grad_cache_chunk' = .* {words}"):
            build_config(None, {"grad_cache_chunk": bad})
    assert config_digest(build_config(None, {"grad_cache_chunk": 8})) == config_digest(TrainConfig())
    registry = Registry(tmp_path)
    runs = [register_run(registry, build_config(None, {"name": name, **chunk}))
            for name, chunk in (("plain", {}), ("chunked", {"grad_cache_chunk": 8}))]
    shown = CliRunner().invoke(main, ["--workdir", str(tmp_path), "runs", "show", runs[1], "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["config"]["grad_cache_chunk"] == 8
    compared = CliRunner().invoke(main, ["--workdir", str(tmp_path), "runs", "compare", *runs, "--json"])
    assert compared.exit_code == 0, compared.output
    assert json.loads(compared.output)["differing"] == {"grad_cache_chunk": [None, 8]}


@pytest.mark.slow  # PaSST and a RoBERTa on CPU: three training steps of four clips (minutes on a loaded machine)
def test_passt_and_a_hub_roberta_with_dropout_replay_their_random_draws(roberta_with_pooler):
    """The real architectures with random weights in training mode: PaSST's patchout and random fmin/fmax, the
    RoBERTa's dropout (0.2). Clips of 2-3 s (one 10 s segment each). The chunked step (chunks of 2) equals the two
    chunks held together with the same draws; another seed's draws give other gradients in both encoders."""
    config = ModelConfig(backbone="passt", text_model=str(roberta_with_pooler), embed_dim=16,
                         trainable_temperature=True, cluster_classes=3)
    torch.manual_seed(0)
    model = DualEncoder(config, audio_weights="random").train()
    rows = [0, 1, 2, 3]
    batch = pairs_batch(rows, 3 * 32000, dtype=torch.float32)  # 3, 2.25, 3 and 1.5 s
    loss, got = chunked_step(model, batch, 2, seed=11)
    held_loss, expected = held_step(model, batch, [(0, 2), (2, 4)], seed=11)
    assert torch.allclose(loss, held_loss, rtol=1e-6, atol=0)
    assert_same_gradients(got, expected, tolerance=1e-5)
    _, other = held_step(model, batch, [(0, 2), (2, 4)], seed=12)
    for name in ("audio.net.blocks.0.attn.qkv.weight", "text.model.encoder.layer.0.output.dense.weight"):
        assert not torch.allclose(other[name], expected[name], rtol=1e-3, atol=1e-3 * float(expected[name].abs().max()))


def _process(rank: int, port: int, cases: list, results) -> None:
    """One of two processes (as torchrun starts them): DDP, and every case of (rows, chunk) through
    ``backward_batch`` (a list of batches: accumulated into one step)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    world = init_world(timeout_minutes=5)
    model = tiny_model().eval()
    parts = parts_for(model, world, torch.nn.parallel.DistributedDataParallel(model))
    for index, batches in enumerate(cases):
        model.zero_grad(set_to_none=True)
        for number, (rows, chunk) in enumerate(batches):
            plan = BatchPlan(chunk, accumulation=len(batches), last=number == len(batches) - 1)
            backward_batch(parts, pairs_batch(rows, 8000, world), plan)
        results[rank, index] = gradients(model)
    dist.destroy_process_group()


@pytest.mark.slow  # two processes, each importing torch and building the model
def test_two_processes_in_chunks_have_the_gradients_of_one_process_on_the_combined_batch():
    """Global negatives: each process encodes its share in chunks and the loss sees the whole batch, so the reduced
    gradients equal one process's on the batch in one piece; also shares of 3 and 2 pairs in chunks of 1 (the
    shorter share runs a stand-in chunk), a step of two accumulated batches, and the trainable temperature."""
    cases = [[(list(range(6)), 2)], [([0, 1, 2, 3, 4], 1)], [(list(range(6)), 2), ([5, 0, 3], 1)]]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_process, args=(free_port(), cases, results), nprocs=2, join=True)
        results = dict(results)
    model = tiny_model().eval()
    for index, batches in enumerate(cases):
        model.zero_grad(set_to_none=True)
        for rows, _ in batches:
            backward_batch(parts_for(model), pairs_batch(rows, 8000), BatchPlan(None, accumulation=len(batches)))
        expected = gradients(model)
        assert "log_temperature" in expected
        for rank in (0, 1):
            assert_same_gradients(results[rank, index], expected)


@pytest.mark.slow  # three training runs of one epoch, one of them under torchrun
def test_torchrun_trains_in_chunks_as_one_process_does(tiny_training, tmp_path):
    """`train --set grad_cache_chunk=2` under torchrun with two processes (global batches of 8, shares of 4 in two
    chunks each) ends with the weights of one process training the same batches in chunks of 2 (the same
    BatchNorm groups; no dropout), and not with those of one process on whole batches."""
    from helpers.cli import run_dcase_process

    arguments = ["train", "--data-root", tiny_training["data_root"], "--datasets", "synthetic", "--backbone",
                 "tiny-cnn", "--text-model", "tiny-random", "--embed-dim", "8", "--epochs", "1", "--batch-size", "8",
                 "--audio-seconds", "2", "--set", "lr=1e-3", "--set", "model.text_dropout=0", "--json"]
    weights = {}
    for label, processes, extra in (("torchrun", 2, ["--set", "grad_cache_chunk=2"]),
                                    ("one", 0, ["--set", "grad_cache_chunk=2"]), ("whole", 0, [])):
        workdir = tmp_path / label
        finished = run_dcase_process(workdir, *arguments, *extra, processes=processes)
        assert finished.returncode == 0, finished.stderr[-3000:]
        run = json.loads(finished.stdout)["run"]
        checkpoint = Registry(workdir).file(run, "checkpoint", "last").path
        weights[label] = torch.load(checkpoint, weights_only=True)["model"]
    names = [name for name, _ in DualEncoder(ModelConfig(backbone="tiny-cnn", text_model="tiny-random", embed_dim=8),
                                             audio_weights=None).named_parameters()]
    for name in names:
        assert torch.allclose(weights["torchrun"][name], weights["one"][name], rtol=1e-4, atol=1e-5), name
    assert any(not torch.allclose(weights["whole"][name], weights["one"][name], rtol=1e-4, atol=1e-5)
               for name in names)
