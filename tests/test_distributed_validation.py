"""gloo processes on CPU: validation split across the processes scores as one process does; a wait after a long
step of rank 0 that outlasts the process group's timeout fails with one line naming the step and the key;
processes that read different data stop together with one line naming the ranks."""

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dcase_t6.common.errors import UserError
from dcase_t6.data.split_index import Split
from dcase_t6.models import DualEncoder, ModelConfig
from dcase_t6.runs.node_folders import check_same_data
from dcase_t6.runs.world import World, init_world
from dcase_t6.training.validation import Validator, batch_shard
from helpers.cli import free_port

CONFIG = ModelConfig(backbone="tiny-cnn", text_model="tiny-random", embed_dim=8)
FILES = [f"clip{i}.wav" for i in range(7)]
QUERIES = [f"caption {i} of clip {i % 7}" for i in range(11)]
SPLIT = Split("toy", "validation", FILES, [Path(f) for f in FILES], QUERIES, [FILES[i % 7] for i in range(11)])
WAITED = ("training: the other processes waited more than 0.02 minutes for another process to build the audio "
          "cache; raise dist_timeout_minutes (config key) or build it first with `dcase-t6 prepare cache`")


class _Clips:
    """Stands in for the audio cache: a clip's samples drawn from its name."""

    def clip(self, path, max_samples=None, offset=0.0) -> np.ndarray:
        generator = np.random.default_rng(int(Path(path).stem[len("clip"):]))
        return generator.standard_normal(8000 + 1000 * int(Path(path).stem[len("clip"):]))[:max_samples].astype(
            np.float32)


def _model() -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(CONFIG, audio_weights=None)


def _join(rank: int, port: int, minutes: float) -> World:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    return init_world(timeout_minutes=minutes)


def _validating(rank: int, port: int, results) -> None:
    world = _join(rank, port, 2.0)
    model = _model()
    if rank == 1:  # batch-norm statistics of its own share, as DDP leaves them after an epoch's last forward
        for name, buffer in model.named_buffers():
            if "running" in name:
                buffer.add_(0.5)
    results[rank] = Validator(SPLIT, _Clips(), 12000, 2, world)(model)
    dist.destroy_process_group()


def _waiting(rank: int, port: int, results) -> None:
    world = _join(rank, port, 0.02)
    if rank == 0:
        time.sleep(4)  # builds the cache for longer than the timeout
        return
    started = time.perf_counter()
    try:
        world.wait("build the audio cache", "build it first with `dcase-t6 prepare cache`")
    except UserError as err:
        results[rank] = (str(err), time.perf_counter() - started)


def _spawn(worker) -> dict:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(free_port(), results), nprocs=2, join=True)
        return dict(results)


def test_shares_of_validation_start_on_batch_boundaries_and_cover_every_row():
    shares = [batch_shard(11, 2, World(rank, 2)) for rank in range(2)]
    assert shares == [range(0, 6), range(6, 11)] and batch_shard(11, 2, World()) == range(11)
    assert [batch_shard(3, 4, World(rank, 2)) for rank in range(2)] == [range(0, 3), range(3, 3)]


@pytest.mark.slow  # two processes that load a tiny model: about 10 s on two loaded cores
def test_validation_of_two_processes_scores_as_one_process():
    alone = Validator(SPLIT, _Clips(), 12000, 2, World())(_model())
    results = _spawn(_validating)
    assert results[1] == {} and results[0] == alone  # bit for bit: the same batches, the main one's statistics


@pytest.mark.slow  # two processes, one waiting for the timeout: a few seconds
def test_a_wait_past_the_timeout_fails_with_one_line_naming_the_step_and_the_key():
    message, waited = _spawn(_waiting)[1]
    assert message == WAITED and "\n" not in message and waited < 4


def _checking(rank: int, port: int, results) -> None:
    world = _join(rank, port, 2.0)
    same = {"training pairs": "abc", "validation split": "def"}
    check_same_data(world, same, "data")
    other = same if rank == 0 else {**same, "validation split": "xyz"}
    try:
        check_same_data(world, other, "data")
    except UserError as err:
        results[rank] = str(err)
    dist.destroy_process_group()


def test_processes_that_read_other_data_stop_together_with_one_line():
    results = _spawn(_checking)
    host = socket.gethostname()
    expected = (f"data: the processes did not read the same data: the validation split of rank(s) 1 ({host}) differ "
                f"from rank 0's ({host}); give every node the same prepared data (copy one node's data root, audio "
                "cache included, to the others) or one shared --data-root")
    assert results == {0: expected, 1: expected}
