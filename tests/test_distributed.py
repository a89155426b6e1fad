"""gloo processes on CPU: the loss and gradients equal those of one process on the combined batch (also with a
trainable temperature and with batches that leave a process without a share); the process group's timeout."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dcase_t6.models import DualEncoder, ModelConfig
from dcase_t6.runs.config import TrainConfig
from dcase_t6.training.data import TrainingBatch
from dcase_t6.training.distributed import World, accumulating, init_world
from dcase_t6.training.objective import build_objective
from helpers.cli import free_port

CONFIG = ModelConfig(backbone="tiny-cnn", text_model="tiny-random", embed_dim=8, trainable_temperature=True)
CAPTIONS = ["a dog barks", "rain falls", "a dog barks loudly", "a bell", "wind blows", "a bell rings"]
CLIP_IDS = torch.tensor([0, 1, 0, 2, 3, 2])


def batch():
    generator = torch.Generator().manual_seed(1)
    waveforms = torch.randn(6, 8000, generator=generator)
    lengths = torch.tensor([8000, 6000, 8000, 4000, 8000, 7000])
    return waveforms, lengths


def model(kind: str = "dual") -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "small":
        return SmallEncoder()
    return DualEncoder(CONFIG, audio_weights=None).eval()  # eval: batch-norm statistics don't depend on the shard


class SmallEncoder(torch.nn.Module):
    """The dual encoder's forward and trainable temperature on a linear audio net and character embeddings: what
    the process-count tests need, started in seconds by every process (no transformers to import)."""

    def __init__(self):
        super().__init__()
        self.audio = torch.nn.Sequential(torch.nn.Linear(8000, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
        self.characters = torch.nn.Embedding(128, 8)
        self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(0.05)))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, captions: list[str]):
        masked = waveforms * (torch.arange(waveforms.shape[1])[None, :] < lengths[:, None])
        text = torch.stack([self.characters(torch.tensor([ord(c) % 128 for c in caption])).mean(0)
                            for caption in captions])
        return (torch.nn.functional.normalize(self.audio(masked), dim=1),
                torch.nn.functional.normalize(text, dim=1))


def local_batch(world: World, rows: list[int]) -> TrainingBatch:
    """This process's part of a global batch (``rows`` of the six pairs), by ``World.share``."""
    waveforms, lengths = batch()
    share = world.share(len(rows))
    encoded = [rows[index] for index in share.rows]
    kept = encoded[:share.kept]
    return TrainingBatch(waveforms[encoded], lengths[encoded], [CAPTIONS[i] for i in encoded], CLIP_IDS[kept],
                         torch.tensor(kept, dtype=torch.long), torch.full((len(kept),), -1))


def gradients_of(encoder: DualEncoder) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}


def loss_and_gradients(world: World, network: torch.nn.Module, encoder: DualEncoder, rows: list[int]):
    """One global batch as training takes it: this process's share, the objective on the gathered batch,
    ``backward_total``."""
    local = local_batch(world, rows)
    objective = build_objective(TrainConfig(), world)
    encoder.zero_grad(set_to_none=True)
    losses = objective(network(local.waveforms, local.lengths, local.captions), local, encoder.temperature)
    objective.backward_total(losses, 1).backward()
    return losses.total.detach(), gradients_of(encoder)


def accumulated_gradients(world: World, network: torch.nn.Module, encoder: DualEncoder, batches: list[list[int]]):
    """Batches accumulated into one optimizer step as the loop does (``accumulating``): the gradients after the
    first batch (this process's own while DDP does not reduce) and after the last."""
    objective = build_objective(TrainConfig(), world)
    encoder.zero_grad(set_to_none=True)
    after = []
    for index, rows in enumerate(batches):
        local = local_batch(world, rows)
        with accumulating(network, world, last=index == len(batches) - 1):
            losses = objective(network(local.waveforms, local.lengths, local.captions), local, encoder.temperature)
            objective.backward_total(losses, len(batches)).backward()
        after.append(gradients_of(encoder))
    return after[0], after[-1]


def _worker(rank: int, size: int, port: int, batches: list[list[int]], kind: str, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(size), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    world = init_world(timeout_minutes=7.5)  # as torchrun starts a process
    timeout = dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout
    encoder = model(kind)
    network = torch.nn.parallel.DistributedDataParallel(encoder)
    steps = [loss_and_gradients(world, network, encoder, rows) for rows in batches]
    results[rank] = (world.rank, timeout.total_seconds(), steps)
    if size == 2:
        results[f"accumulated {rank}"] = accumulated_gradients(world, network, encoder, batches)
    dist.destroy_process_group()


def run_processes(size: int, batches: list[list[int]], kind: str = "dual") -> dict:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(size, free_port(), batches, kind, results), nprocs=size, join=True)
        return dict(results)


def assert_equal_to_one_process(results: dict, batches: list[list[int]], kind: str = "dual") -> None:
    encoder = model(kind)
    for index, rows in enumerate(batches):
        single_loss, single_gradients = loss_and_gradients(World(), encoder, encoder, rows)
        assert "log_temperature" in single_gradients  # trainable: its gradient is compared too
        for rank, (_, _, steps) in ((key, value) for key, value in results.items() if isinstance(key, int)):
            loss, gradients = steps[index]
            assert torch.allclose(loss, single_loss, atol=1e-6), (rows, rank)
            assert gradients.keys() == single_gradients.keys()
            for name, gradient in gradients.items():
                # shards pad captions to different lengths: equal up to float rounding
                assert torch.allclose(gradient, single_gradients[name], atol=1e-5, rtol=1e-3), (rows, rank, name)
            # the temperature's gradient is small (~1e-5 here): relative to it, not to atol
            assert torch.allclose(gradients["log_temperature"], single_gradients["log_temperature"], rtol=1e-3,
                                  atol=0), (rows, rank)


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_combined_batch():
    """Also the trainable temperature, which every process uses whole: its gradient is not world-size times
    the single-process one."""
    batches = [list(range(6)), [0, 1, 2]]
    results = run_processes(2, batches)
    assert sorted(results[rank][0] for rank in (0, 1)) == [0, 1]
    assert {results[rank][1] for rank in (0, 1)} == {7.5 * 60}  # init_world's timeout reached the process group
    assert_equal_to_one_process(results, batches)
    # gradient accumulation: no reduction until the step's last batch, then the single-process sum
    encoder = model()
    _, single = accumulated_gradients(World(), encoder, encoder, batches)
    (first_0, last_0), (first_1, last_1) = results["accumulated 0"], results["accumulated 1"]
    assert not torch.allclose(first_0["audio_projection.weight"], first_1["audio_projection.weight"])
    for name, gradient in single.items():
        for last in (last_0, last_1):
            assert torch.allclose(last[name], gradient, atol=1e-5, rtol=1e-3), name


@pytest.mark.parametrize(("size", "batches"), [
    pytest.param(3, [[1, 4], [0, 1, 2, 3]],  # shares 1,1,0 (a stand-in row); 2,1,1 (a ceil split gave 2,2,0)
                 marks=pytest.mark.slow),  # three processes on two cores: about 10 s
    pytest.param(4, [[0, 1, 2, 3, 4], [2, 5, 0]],  # 2,1,1,1 (ceil: 2,2,1,0); 1,1,1,0 (a stand-in row)
                 marks=pytest.mark.slow),  # four processes on two cores: about 25 s
])
def test_a_process_without_a_share_leaves_loss_and_gradients_those_of_one_process(size, batches):
    assert [len(World(rank=rank, size=size).shard(list(range(5)))) for rank in range(size)] == \
        {3: [2, 2, 1], 4: [2, 1, 1, 1]}[size]
    assert_equal_to_one_process(run_processes(size, batches, "small"), batches, "small")


def test_every_process_gets_a_batch_it_can_encode_also_without_a_share(tiny_data_root):
    """What each process loads: its share of the pairs (together: the batch, in order), and one stand-in clip
    and caption without pair ids where the batch has fewer pairs than there are processes."""
    import numpy as np

    from dcase_t6.data.audio_cache import AudioCache
    from dcase_t6.data.cache_build import CacheRequest, build_cache
    from dcase_t6.data.layout import Layout
    from dcase_t6.runs.config import build_config
    from dcase_t6.training.augmentation import PairAugmenter
    from dcase_t6.training.data import TrainingData, load_pairs

    build_cache(Layout.at(tiny_data_root), CacheRequest(16000, ["synthetic"]))
    store = AudioCache(tiny_data_root, 16000)
    config = build_config(None, {"data_root": str(tiny_data_root), "datasets": "synthetic"})
    pairs = load_pairs(config, store)
    augmenter = PairAugmenter(config, pairs.captions, pairs.clip_ids, pairs.clip_names)
    batches = [np.array([7, 3]), np.array([0, 11, 2, 30, 4])]
    for size in (3, 4):
        for index, batch in enumerate(batches):
            shares = [TrainingData(pairs, store, augmenter, 32000, 8, 0, 0, World(rank=rank, size=size),
                                   str(tiny_data_root)).source(0, batches)[index] for rank in range(size)]
            assert torch.cat([share.pairs for share in shares]).tolist() == batch.tolist()
            for share in shares:
                rows = max(1, len(share.pairs))
                assert share.waveforms.shape[0] == len(share.lengths) == len(share.captions) == rows
                assert len(share.clip_ids) == len(share.partners) == len(share.pairs)
            assert [len(share.pairs) for share in shares] == {(3, 0): [1, 1, 0], (3, 1): [2, 2, 1],
                                                              (4, 0): [1, 1, 0, 0], (4, 1): [2, 1, 1, 1]}[size, index]


@pytest.mark.slow
def test_torchrun_with_two_processes_trains_and_registers_one_run(tiny_data_root, tmp_path):
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "dcase_t6", "--workdir", str(tmp_path), "train", "--data-root",
               str(tiny_data_root), "--datasets", "synthetic", "--backbone", "tiny-cnn", "--text-model",
               "tiny-random", "--embed-dim", "8", "--epochs", "1", "--batch-size", "8", "--audio-seconds", "2",
               "--json"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    summary = json.loads(finished.stdout)  # only rank 0 prints
    assert summary["status"] == "finished" and summary["step"] == 8  # 60 pairs in global batches of 8
    from dcase_t6.runs.registry import Registry

    runs = Registry(tmp_path).runs()
    assert [run.id for run in runs] == [summary["run"]] and runs[0].status == "finished"


def _training_worker(rank: int, port: int, workdir: str, overrides: dict, results):
    from dcase_t6.runs.config import build_config
    from dcase_t6.training import trainer as training

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    results[rank] = training.train_new(workdir, build_config(None, overrides))  # init_world from the environment
    dist.destroy_process_group()


@pytest.mark.slow  # two training processes, then a resume: about a minute on two loaded cores
def test_a_sigterm_to_one_process_stops_every_process_at_the_same_step_and_the_run_resumes(tiny_training, tmp_path):
    """A scheduler may signal one process only: the others must not train on and wait in all_gather for it."""
    import signal
    import time

    from dcase_t6.runs.registry import Registry
    from dcase_t6.training import trainer as training

    overrides = {**tiny_training, "epochs": 40, "dist_timeout_minutes": 1.5, "log": "none"}
    with mp.Manager() as manager:
        results = manager.dict()
        context = mp.start_processes(_training_worker, args=(free_port(), str(tmp_path), overrides, results),
                                     nprocs=2, join=False, start_method="spawn")
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("runs/*/metrics.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.2)  # until the first epoch is recorded: both processes are training
        os.kill(context.processes[1].pid, signal.SIGTERM)
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail("the processes did not stop together within the deadline")
        results = dict(results)
    assert results[0].status == results[1].status == "stopped"
    assert results[0].step == results[1].step and 0 < results[0].step < 40 * 8
    run = Registry(tmp_path).run(results[0].run)
    assert run.status == "stopped" and any(f.tag == "last" for f in run.files)
    resumed = training.resume(tmp_path, results[0].run, max_steps=results[0].step + 2, world=World())
    assert resumed.status == "stopped" and resumed.step == results[0].step + 2


def test_batches_are_pinned_for_a_gpu_only(tiny_data_root):
    """A loader for a CUDA process asks for page-locked batches (copied with non_blocking while the step runs); on
    a CPU it does not. A batch pins every tensor it holds (only where pinning is available: a CUDA build with a
    GPU)."""
    from dcase_t6.data.audio_cache import AudioCache
    from dcase_t6.data.cache_build import CacheRequest, build_cache
    from dcase_t6.data.layout import Layout
    from dcase_t6.runs.config import build_config
    from dcase_t6.training.augmentation import PairAugmenter
    from dcase_t6.training.data import TrainingData, load_pairs

    build_cache(Layout.at(tiny_data_root), CacheRequest(16000, ["synthetic"]))
    store = AudioCache(tiny_data_root, 16000)
    config = build_config(None, {"data_root": str(tiny_data_root), "datasets": "synthetic"})
    pairs = load_pairs(config, store)
    augmenter = PairAugmenter(config, pairs.captions, pairs.clip_ids, pairs.clip_names)

    def loader(device: str):
        data = TrainingData(pairs, store, augmenter, 32000, 8, 0, 0, World(device=torch.device(device)),
                            str(tiny_data_root))
        return data.loader(0, data.batches(0), 0)

    assert loader("cpu").pin_memory is False and loader("cuda").pin_memory is True
    if torch.cuda.is_available():
        batch = next(iter(loader("cpu")))
        pinned = batch.pin_memory()
        assert all(tensor.is_pinned() for tensor in (pinned.waveforms, pinned.lengths, pinned.clip_ids, pinned.pairs,
                                                     pinned.partners))


def test_loader_workers_default_to_0_on_a_cpu_and_to_the_free_cores_on_a_gpu(monkeypatch):
    from dcase_t6.runs.config import build_config
    from dcase_t6.training.builder import cache_workers, loader_workers

    assert build_config(None, {}).workers is None
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert loader_workers(None, World(device=cpu)) == 0 and loader_workers(3, World(device=cpu)) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert loader_workers(None, World(device=gpu)) == 8  # 16 cores, one process: 15, at most 8
    assert loader_workers(None, World(rank=1, size=4, device=gpu)) == 3  # 4 cores per process, one for itself
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 nodes of 2 processes: 8 cores per process on its node
    assert loader_workers(None, World(rank=3, size=4, device=gpu)) == 7
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    # the cache build at training start: the node's cores less one (the other processes wait), at most 32
    assert (cache_workers(None), cache_workers(3), cache_workers(0)) == (15, 3, 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert cache_workers(None) == 32
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    assert loader_workers(None, World(rank=0, size=4, device=gpu)) == 1 and loader_workers(0, World(device=gpu)) == 0
    assert cache_workers(None) == 1
