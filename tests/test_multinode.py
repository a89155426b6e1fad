"""Two nodes on this machine (two torchrun launchers, one process each, gloo on CPU), as a cluster runs them.

- ``runs.node_folders.folder_writer``: one process per group of nodes that see the same folder writes it (global
  rank 0 on a shared folder, every node's first process on node-local ones); the markers are removed.
- ``train`` on two nodes whose data roots are node-local (the same relative path ``data`` under each node's own
  working directory: the same path on different disks, as on a cluster's ``$TMPDIR``) and whose work directory
  is shared: each node builds its own audio cache. Node 1 is then killed mid-run (SIGKILL to its launcher and
  its worker: the node is gone), the run is left resumable in the registry, and ``train --resume`` on two nodes
  finishes it with the weights of an uninterrupted two-node run. ``embed`` on two nodes rebuilds node 1's cache.
  A node whose data root drifted (one caption differs) stops both nodes with one line (exit code 2).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from dcase_t6.data.layout import Layout
from dcase_t6.data.synthetic import SyntheticConfig, prepare_synthetic
from dcase_t6.models import audio as audio_backbones
from dcase_t6.runs.node_folders import MARKER_PREFIX, folder_writer
from dcase_t6.runs.registry import Registry
from dcase_t6.training.distributed import init_world
from helpers.cli import free_port

# `dcase-t6 ARGS...` that, with KILL_AT_STEP set, kills its node (its torchrun launcher, then itself, SIGKILL) once
# this process has taken that many optimizer steps: mid-training, after the main process saved a `last` checkpoint.
NODE = """
import os, signal, sys
from torch.optim.optimizer import register_optimizer_step_post_hook
kill_at = int(os.environ.get("KILL_AT_STEP", "0"))
steps = []
def count(optimizer, args, kwargs):
    steps.append(1)
    if len(steps) == kill_at:
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
if kill_at:
    register_optimizer_step_post_hook(count)
from dcase_t6.cli import main
sys.argv = ["dcase-t6", *sys.argv[1:]]
main()
"""

TIMEOUT = 300  # seconds a two-node command may take before the test fails instead of hanging


def _writer(rank: int, port: int, folders: list[str], local_ranks: list[int], results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(local_ranks[rank]))
    world = init_world(timeout_minutes=2)
    results[rank] = (world.local_rank, folder_writer(world, folders[rank]))
    torch.distributed.destroy_process_group()


def writers(folders: list, local_ranks: list[int]) -> dict:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_writer, args=(free_port(), [str(f) for f in folders], local_ranks, results), nprocs=2, join=True)
        return dict(results)


@pytest.mark.slow
def test_one_writer_per_group_of_nodes_that_see_the_same_folder(tmp_path):
    one, other = tmp_path / "one", tmp_path / "other"
    one.mkdir()
    other.mkdir()
    assert writers([one, one], [0, 0]) == {0: (0, True), 1: (0, False)}  # two nodes, one shared folder
    assert writers([one, other], [0, 0]) == {0: (0, True), 1: (0, True)}  # two nodes, each its own folder
    assert writers([one, one], [0, 1]) == {0: (0, True), 1: (1, False)}  # one node, two processes
    assert writers([tmp_path / "missing", other], [0, 0]) == {0: (0, True), 1: (0, True)}  # rank 0: no marker
    assert not [p for p in tmp_path.rglob(f"{MARKER_PREFIX}*")]


def launch_nodes(tmp_path, arguments: list[str], kill_node_1_at: int = 0) -> list[subprocess.CompletedProcess]:
    """``dcase-t6 --workdir WORK ARGUMENTS...`` on two torchrun "nodes" (one process each, static rendezvous on
    127.0.0.1), node N in folder nodeN (its node-local ``data``); node 1 killed at an optimizer step if asked."""
    port, script = free_port(), tmp_path / "node.py"
    script.write_text(NODE, encoding="utf-8")
    launchers = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port), str(script),
                   "--workdir", str(tmp_path / "work"), *arguments]
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT_STEP": str(kill_node_1_at if node else 0)}
        launchers.append(subprocess.Popen(command, cwd=tmp_path / f"node{node}", env=environment, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
    results = []
    for launcher in launchers:
        try:
            stdout, stderr = launcher.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for other in launchers:
                if other.poll() is None:
                    os.killpg(other.pid, signal.SIGKILL)
            pytest.fail(f"two-node `{' '.join(arguments[:2])}` hung for {TIMEOUT} s")
        results.append(subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr))
    return results


def succeeded(results: list[subprocess.CompletedProcess]) -> dict:
    for node, result in enumerate(results):
        assert result.returncode == 0, (node, result.stderr[-6000:])
    return json.loads(results[0].stdout)


def last_weights(tmp_path, run: str) -> dict[str, torch.Tensor]:
    record = Registry(tmp_path / "work").file(run, "checkpoint", "last")
    return torch.load(record.path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow  # four two-node commands of a tiny model: about a minute on two loaded cores
def test_two_nodes_with_node_local_data_train_resume_after_a_node_dies_and_embed(tmp_path):
    prepare_synthetic(Layout.at(tmp_path / "node0" / "data"), SyntheticConfig(development=12, validation=4,
                                                                               evaluation=4, min_duration=2.0,
                                                                               max_duration=3.0))
    shutil.copytree(tmp_path / "node0" / "data", tmp_path / "node1" / "data")  # node 1's own copy, no cache yet
    train = ["train", "--data-root", "data", "--datasets", "synthetic", "--backbone", "tiny-cnn", "--text-model",
             "tiny-random", "--embed-dim", "16", "--batch-size", "4", "--epochs", "2", "--lr", "1e-3",
             "--audio-seconds", "2.0", "--checkpoint-every", "2", "--set", "dist_timeout_minutes=2", "--json"]
    rate = audio_backbones.sample_rate("tiny-cnn")

    whole = succeeded(launch_nodes(tmp_path, [*train, "--name", "whole"]))
    assert whole["status"] == "finished" and whole["step"] == 30  # 60 pairs, global batches of 4, 2 epochs
    for node in (0, 1):  # each node built the cache in its own data root; no marker left
        assert list(Layout.at(tmp_path / f"node{node}" / "data").cache_dir(rate).iterdir()), node
        assert not list((tmp_path / f"node{node}" / "data").glob(f"{MARKER_PREFIX}*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.py", "node0", "node1", "work"]
    assert [p.name for p in (tmp_path / "node1").iterdir()] == ["data"]  # nothing but its data on node 1

    killed = launch_nodes(tmp_path, [*train, "--name", "killed"], kill_node_1_at=5)
    assert killed[1].returncode != 0 and killed[0].returncode != 0
    registry = Registry(tmp_path / "work")
    run = next(r for r in registry.runs() if r.name == "killed")
    # rank 0 lost its peer mid-step: the run says so and keeps its last checkpoint (step 4), resumable
    assert run.status in {"failed", "stopped", "interrupted"}, run.status
    last = registry.file(run.id, "checkpoint", "last")
    assert last.info["step"] == 4, last.info

    resumed = succeeded(launch_nodes(tmp_path, ["train", "--resume", run.id, "--json"]))
    assert resumed["status"] == "finished" and resumed["step"] == 30
    expected, actual = last_weights(tmp_path, whole["run"]), last_weights(tmp_path, run.id)
    assert expected.keys() == actual.keys()
    for key, value in expected.items():  # resume is bit for bit on gloo CPU
        assert torch.equal(actual[key], value), key

    shutil.rmtree(Layout.at(tmp_path / "node1" / "data").cache_dir(rate))  # embed builds node 1's cache again
    embedded = succeeded(launch_nodes(tmp_path, ["embed", run.id, "--data-root", "data", "--dataset", "synthetic",
                                                 "--json"]))
    assert embedded["queries"] > 0 and embedded["files"] > 0
    assert list(Layout.at(tmp_path / "node1" / "data").cache_dir(rate).iterdir())
    assert Registry(tmp_path / "work").file(run.id, "embeddings", "synthetic/development-testing").path.is_file()

    index = tmp_path / "node1" / "data" / "index" / "synthetic.csv"  # node 1's copy drifts: one caption differs
    table = pd.read_csv(index, keep_default_na=False)
    table.loc[table.index[table["split"] == "development-training"][0], "caption"] += " twice"
    table.to_csv(index, index=False)
    drifted = launch_nodes(tmp_path, [*train, "--name", "drifted"])
    for node, result in enumerate(drifted):  # each node's process says it in one line (torchrun then exits 1)
        assert result.returncode == 1, (node, result.stderr[-3000:])
        assert result.stderr.count("error: data: the processes did not read the same data: the training pairs of "
                                   "rank(s) 1 (") == 1, (node, result.stderr[-3000:])
    run = next(r for r in Registry(tmp_path / "work").runs() if r.name == "drifted")
    assert run.status == "failed" and "did not read the same data" in Registry(tmp_path / "work").run(run.id).reason


def test_the_slurm_example_parses_as_bash_and_names_what_the_docs_name():
    root = Path(__file__).resolve().parents[1]
    sbatch = root / "examples" / "slurm-2nodes.sbatch"
    checked = subprocess.run(["bash", "-n", str(sbatch)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    text, docs = sbatch.read_text(encoding="utf-8"), (root / "docs" / "training.md").read_text(encoding="utf-8")
    assert "examples/slurm-2nodes.sbatch" in docs and "**Several nodes.**" in docs
    for key in ("OMP_NUM_THREADS", "NCCL_SOCKET_IFNAME", "NCCL_DEBUG", "dist_timeout_minutes", "--workdir",
                "--data-root", "$TMPDIR", "--nnodes", "--nproc_per_node", "--rdzv_backend c10d", "--rdzv_endpoint",
                "train --resume RUN", "LOCAL_RANK", "--log-file"):
        assert key in docs, key
        assert key.replace(" RUN", "") in text or key == "LOCAL_RANK", key
    assert 'srun --ntasks-per-node=1 torchrun' in text and '--nnodes "$SLURM_NNODES"' in text
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in text
