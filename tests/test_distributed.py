"""Two gloo processes on CPU: the loss and gradients equal those of one process on the combined batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from dcase_t6.models import DualEncoder, ModelConfig
from dcase_t6.training.distributed import World, gather
from dcase_t6.training.losses import multi_positive_infonce

CONFIG = ModelConfig(backbone="tiny-cnn", text_model="tiny-random", embed_dim=8)
CAPTIONS = ["a dog barks", "rain falls", "a dog barks loudly", "a bell", "wind blows", "a bell rings"]
CLIP_IDS = torch.tensor([0, 1, 0, 2, 3, 2])


def batch():
    generator = torch.Generator().manual_seed(1)
    waveforms = torch.randn(6, 8000, generator=generator)
    lengths = torch.tensor([8000, 6000, 8000, 4000, 8000, 7000])
    return waveforms, lengths


def model() -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(CONFIG, audio_weights=None).eval()  # eval: batch-norm statistics don't depend on the shard


def loss_and_gradients(world: World, network: torch.nn.Module, encoder: DualEncoder):
    waveforms, lengths = batch()
    rows = world.shard(list(range(6)))
    audio, text = network(waveforms[rows], lengths[rows], [CAPTIONS[i] for i in rows])
    ids = CLIP_IDS[rows]
    loss = multi_positive_infonce(gather(audio, world), gather(text, world), gather(ids, world), gather(ids, world),
                                  encoder.temperature)
    (loss * world.size).backward()
    return loss.detach(), {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    encoder = model()
    network = torch.nn.parallel.DistributedDataParallel(encoder)
    loss, gradients = loss_and_gradients(World(rank=rank, size=2), network, encoder)
    results[rank] = (loss, gradients)
    dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_combined_batch():
    encoder = model()
    single_loss, single_gradients = loss_and_gradients(World(), encoder, encoder)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(free_port(), results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        loss, gradients = results[rank]
        assert torch.allclose(loss, single_loss, atol=1e-6)
        assert gradients.keys() == single_gradients.keys()
        for name, gradient in gradients.items():
            # shards pad captions to different lengths: equal up to float rounding
            assert torch.allclose(gradient, single_gradients[name], atol=1e-5, rtol=1e-3), name


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
    from dcase_t6.registry import Registry

    runs = Registry(tmp_path).runs()
    assert [run.id for run in runs] == [summary["run"]] and runs[0].status == "finished"
