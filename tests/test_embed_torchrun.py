"""`embed` under torchrun and after a real SIGTERM, as the user runs it (real processes, gloo on CPU).

- ``torchrun --nproc_per_node 2`` writes the files one process writes: bit for bit when the shards start on batch
  boundaries, to float rounding (measured about 6e-8, asserted 1e-6) when they do not; the real PaSST architecture
  (random weights) with a RoBERTa, through ``embed RUN`` and ``embed --model``.
- A SIGTERM after some chunks (to the process alone; under torchrun to the launcher, which stops every process, as
  a scheduler does) and the same command again: it embeds only the chunks that were not finished, and the files
  equal those of an uninterrupted run. Restarted with another number of processes it starts over instead.
- Distillation teachers: every training process embeds its shard of a teacher's missing embeddings.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training.builder import build_training
from dcase_t6.training.checkpointing import Position
from dcase_t6.training.distributed import World
from dcase_t6.training.trainer import register_run
from helpers.cli import free_port, run_dcase

SPLIT = "synthetic.development-testing"

# Runs `dcase-t6 ARGS...` with os.replace watched: every chunk renamed into place is logged, and at the n-th one
# (0: never) a real SIGTERM goes to this process alone or, under torchrun, to the launcher (which then stops every
# process); the process that sent it waits there to be stopped.
KILLER = """
import os, re, signal, sys, time
stop_after, log = int(sys.argv[1]), sys.argv[2]
chunk, original, committed = re.compile(r"(audio|text)-[0-9]{9}-[0-9]{9}[.]npz"), os.replace, []
def replace(source, target, *args, **kwargs):
    result = original(source, target, *args, **kwargs)
    if chunk.fullmatch(os.path.basename(str(target))):
        committed.append(target)
        with open(log, "a") as handle:
            handle.write(os.environ.get("RANK", "0") + " " + os.path.basename(str(target)) + "\\n")
        if len(committed) == stop_after:
            torchrun = "TORCHELASTIC_RUN_ID" in os.environ
            os.kill(os.getppid() if torchrun else os.getpid(), signal.SIGTERM)
            time.sleep(300)
    return result
os.replace = replace
from dcase_t6.cli import main
sys.argv = ["dcase-t6", *sys.argv[3:]]
main()
"""


def launch(tmp_path, workdir, arguments, processes: int = 0, stop_after: int = 0, log=None):
    """``dcase-t6 --workdir WORKDIR ARGUMENTS...`` in a real process (one OpenMP thread), under torchrun with
    ``processes`` processes, with the KILLER's watch."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER, encoding="utf-8")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                 str(free_port())] if processes else [sys.executable])
    log = log or tmp_path / "unused.log"
    command = [*launcher, str(script), str(stop_after), str(log), "--workdir", str(workdir), *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ,
                                                                                      "OMP_NUM_THREADS": "1"})


def random_run(workdir, overrides: dict) -> str:
    """A registered run whose ``best`` checkpoint holds the model as built (random weights), without training."""
    config = build_config(None, {**overrides, "log": "none"})
    registry = Registry(workdir)
    run_id = register_run(registry, config)
    setup = build_training(config, registry, run_id, World())
    setup.checkpointer.save_best(setup.model, Position(), {})
    return run_id


def arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def outputs(workdir, run):
    return workdir / "runs" / run / "outputs"


def assert_same_files(actual_folder, expected_folder, tolerance: float = 0.0) -> float:
    """The embeddings and similarity files of two folders hold the same arrays (floats to ``tolerance``); the
    largest float difference."""
    worst = 0.0
    for name in (f"{SPLIT}.embeddings.npz", f"{SPLIT}.similarity.npz"):
        actual, expected = arrays(actual_folder / name), arrays(expected_folder / name)
        assert actual.keys() == expected.keys()
        for key, value in expected.items():
            assert actual[key].shape == value.shape and actual[key].dtype == value.dtype, (name, key)
            if value.dtype.kind == "f":
                worst = max(worst, float(np.abs(actual[key] - value).max()))
            else:
                assert np.array_equal(actual[key], value), (name, key)
    assert worst <= tolerance
    return worst


def assert_clean(folder) -> None:
    """No partial folder and no temporary file left once the output is written."""
    assert not list(folder.glob("*.partial")) and not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow  # four embeddings of the real PaSST on two loaded cores: a few minutes
def test_torchrun_with_two_processes_writes_what_one_process_writes_with_the_real_passt(
        tiny_data_root, roberta_with_pooler, tmp_path):
    overrides = {"data_root": str(tiny_data_root), "datasets": "synthetic", "model.backbone": "passt",
                 "audio_weights": "random", "model.text_model": str(roberta_with_pooler), "model.embed_dim": 16,
                 "batch_size": 2, "audio_seconds": 3.0}
    run = random_run(tmp_path / "one", overrides)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    arguments = ["embed", run, "--data-root", tiny_data_root, "--dataset", "synthetic", "--json"]
    # batches of 2: 4 clips and 20 captions split into shards of 2 and 10 start on batch boundaries
    single = launch(tmp_path, tmp_path / "one", [*arguments, "--batch-size", "2"])
    double = launch(tmp_path, tmp_path / "two", [*arguments, "--batch-size", "2"], processes=2)
    assert single.returncode == 0, single.stderr[-3000:]
    assert double.returncode == 0, double.stderr[-3000:]
    assert json.loads(double.stdout) == json.loads(single.stdout) | {
        "embeddings": str(outputs(tmp_path / "two", run) / f"{SPLIT}.embeddings.npz"),
        "similarity": str(outputs(tmp_path / "two", run) / f"{SPLIT}.similarity.npz")}  # rank 0 alone printed
    assert assert_same_files(outputs(tmp_path / "two", run), outputs(tmp_path / "one", run)) == 0.0
    assert_clean(outputs(tmp_path / "two", run))
    record = Registry(tmp_path / "two").file(run, "embeddings", "synthetic/development-testing")
    assert record.problem() is None and record.info["files"] == 4 and record.info["queries"] == 20
    # an exported model in batches of 3: shards of 2 and 10 rows are batched otherwise than 4 and 20
    assert run_dcase("--workdir", tmp_path / "one", "export", run, "--out", tmp_path / "exported").exit_code == 0
    model = ["embed", "--model", tmp_path / "exported", "--data-root", tiny_data_root, "--dataset", "synthetic",
             "--batch-size", "3"]
    single = launch(tmp_path, tmp_path / "none", [*model, "--out", tmp_path / "out-one"])
    double = launch(tmp_path, tmp_path / "none", [*model, "--out", tmp_path / "out-two"], processes=2)
    assert single.returncode == 0, single.stderr[-3000:]
    assert double.returncode == 0, double.stderr[-3000:]
    assert assert_same_files(tmp_path / "out-two", tmp_path / "out-one", tolerance=1e-6) < 1e-6
    assert_clean(tmp_path / "out-two")


@pytest.fixture(scope="module")
def tiny_run(tiny_data_root, tiny_training, tmp_path_factory):
    """A tiny run (random weights) and the files of its uninterrupted embeddings, alone and by two processes, in
    batches of 2 and chunks of one batch: 12 chunks either way (4 clips, 20 captions)."""
    base = tmp_path_factory.mktemp("embed-resume")
    run = random_run(base / "work", tiny_training)
    arguments = ["embed", run, "--data-root", tiny_data_root, "--dataset", "synthetic", "--batch-size", "2",
                 "--chunk-batches", "1"]
    for name, processes in (("one", 0), ("two", 2)):
        shutil.copytree(base / "work", base / name)
        finished = launch(base, base / name, arguments, processes=processes)
        assert finished.returncode == 0, finished.stderr[-3000:]
    return base, run, arguments


def _killed_and_resumed(tmp_path, tiny_run, processes: int, stop_after: int, restarted_with: int):
    """Kill an embedding after ``stop_after`` chunks (per process), run it again with ``restarted_with``
    processes: the chunks left by the kill, those the second run embedded, and its stderr."""
    base, run, arguments = tiny_run
    workdir = tmp_path / "work"
    shutil.copytree(base / "work", workdir)
    killed = launch(tmp_path, workdir, arguments, processes=processes, stop_after=stop_after,
                    log=tmp_path / "killed.log")
    assert killed.returncode != 0 and not (outputs(workdir, run) / f"{SPLIT}.embeddings.npz").exists()
    if not processes:
        assert killed.returncode == -15  # SIGTERM's own default: the process ended there
    folder = outputs(workdir, run) / f"{SPLIT}.embeddings.partial"
    left = sorted(path.name for path in folder.glob("*.npz"))
    resumed = launch(tmp_path, workdir, arguments, processes=restarted_with, log=tmp_path / "resumed.log")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    embedded = sorted(line.split()[1] for line in (tmp_path / "resumed.log").read_text().splitlines())
    assert_clean(outputs(workdir, run))
    return left, embedded, resumed.stderr, outputs(workdir, run)


@pytest.mark.slow  # real processes: about 30 s
def test_a_sigterm_then_the_same_command_embeds_only_the_unfinished_chunks(tmp_path, tiny_run):
    base, run, _ = tiny_run
    left, embedded, stderr, folder = _killed_and_resumed(tmp_path, tiny_run, 0, stop_after=5, restarted_with=0)
    assert len(left) == 5 and len(embedded) == 12 - 5 and not set(left) & set(embedded)
    assert "resuming an interrupted embedding, 5 of 12 chunks already embedded" in " ".join(stderr.split())
    assert_same_files(folder, outputs(base / "one", run))


@pytest.mark.slow  # real torchrun launches: about a minute
def test_a_sigterm_to_torchrun_then_the_same_command_resumes_every_process(tmp_path, tiny_run):
    base, run, _ = tiny_run
    left, embedded, stderr, folder = _killed_and_resumed(tmp_path, tiny_run, 2, stop_after=3, restarted_with=2)
    assert 3 <= len(left) < 12 and len(embedded) == 12 - len(left) and not set(left) & set(embedded)
    assert f"{len(left)} of 12 chunks already embedded" in " ".join(stderr.split())
    assert_same_files(folder, outputs(base / "two", run))


@pytest.mark.slow  # real torchrun launches: about a minute
def test_restarted_with_another_number_of_processes_it_starts_over_and_mixes_nothing(tmp_path, tiny_run):
    base, run, _ = tiny_run
    left, embedded, stderr, folder = _killed_and_resumed(tmp_path, tiny_run, 2, stop_after=3, restarted_with=0)
    assert len(left) >= 3 and len(embedded) == 12  # every chunk embedded anew, by the one process
    assert re.search(r"removed the finished chunks of audio and text made with other", " ".join(stderr.split()))
    assert_same_files(folder, outputs(base / "one", run))


def _teacher_worker(rank: int, port: int, workdir: str, overrides: dict, teacher: str, results):
    from dcase_t6.embedding import sharded
    from dcase_t6.runs.world import init_world
    from dcase_t6.training.distillation import ensure_embeddings

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    world = init_world(timeout_minutes=5)
    counted = {"clips": 0, "captions": 0}
    embed_audio, embed_text = sharded.embed_audio, sharded.embed_text

    def count_audio(model, clips, *args):
        counted["clips"] += len(clips.paths)
        return embed_audio(model, clips, *args)

    def count_text(model, captions, *args):
        counted["captions"] += len(captions)
        return embed_text(model, captions, *args)

    sharded.embed_audio, sharded.embed_text = count_audio, count_text
    ensure_embeddings(Registry(workdir), teacher, build_config(None, overrides), world=world)
    results[rank] = counted
    dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes: about 30 s
def test_every_training_process_embeds_its_shard_of_a_teachers_training_split(tiny_training, tmp_path):
    teacher = random_run(tmp_path / "two", tiny_training)
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_teacher_worker, args=(free_port(), str(tmp_path / "two"), tiny_training, teacher, results),
                 nprocs=2, join=True)
        results = dict(results)
    # the training split: 12 clips and 60 captions, half each
    assert results == {0: {"clips": 6, "captions": 30}, 1: {"clips": 6, "captions": 30}}
    from dcase_t6.training.distillation import ensure_embeddings

    ensure_embeddings(Registry(tmp_path / "one"), teacher, build_config(None, tiny_training))
    tag = "synthetic/development-training"
    two = arrays(Registry(tmp_path / "two").file(teacher, "embeddings", tag).path)
    one = arrays(Registry(tmp_path / "one").file(teacher, "embeddings", tag).path)
    for key in ("files", "paths", "queries", "checkpoint"):
        assert np.array_equal(two[key], one[key])
    for key in ("audio", "text"):  # batches of 8 over 12 clips and 60 captions, or over shards of 6 and 30
        assert np.abs(two[key] - one[key]).max() <= 1e-6
    assert not list(outputs(tmp_path / "two", teacher).glob("*.partial"))
