"""The registry read from run records (``runs.record_reader``): what the processes other than global rank 0 read
under torchrun, where only rank 0 opens ``registry.sqlite`` (SQLite's WAL mode does not work across the hosts
of a network file system).

- ``RunRecords.run`` / ``file`` / ``has_file`` give what ``Registry`` gives for a registered run (config, epochs,
  files, sha256), refuse a changed file with the registry's message, never connect to SQLite, and take full run
  ids only (a prefix is an internal error: the main process resolves references).
- Real torchrun processes (gloo, CPU): a training with ``init_from`` (a prefix), a distillation teacher embedded
  by both processes and k-means cluster labels, its ``--resume`` by a prefix, and ``embed`` by a prefix: the
  process of rank 1, watched by an audit hook, never connects to an SQLite file and reads run records instead.
"""

import json
import os
import subprocess
import sys

import pytest

from dcase_t6.common.errors import UserError
from dcase_t6.runs.config import build_config
from dcase_t6.runs.lookup import lookup_for, writable
from dcase_t6.runs.record_reader import RunLookup, RunRecords, read_record, recorded_id
from dcase_t6.runs.registry import Registry
from dcase_t6.runs.world import World
from helpers.cli import free_port

CONNECTED: list[str] = []  # the SQLite files this process connected to while WATCHING is set
WATCHING: list[bool] = []


def _watch(event: str, args: tuple) -> None:
    if WATCHING and event == "sqlite3.connect":
        CONNECTED.append(str(args[0]))


sys.addaudithook(_watch)  # an audit hook cannot be removed: it records only while a test watches


@pytest.fixture
def registered(tmp_path):
    """A run with two epochs and three files (one outside the work directory), in a fresh registry."""
    workdir = tmp_path / "work"
    registry = Registry(workdir)
    run_id = registry.create_run("small", {"lr": 0.001, "nested": {"a": [1, 2]}}, data_fingerprint="f00d", seed=3)
    folder = registry.layout.run(run_id)
    for name, text in (("best.pt", "weights"), ("last.pt", "more weights")):
        (folder / name).write_text(text)
    outside = tmp_path / "elsewhere.npz"
    outside.write_text("vectors")
    registry.add_file(run_id, "checkpoint", "best", folder / "best.pt", {"epoch": 1, "parameters": 12})
    registry.add_file(run_id, "checkpoint", "last", folder / "last.pt", {"epoch": 1, "step": 8})
    registry.add_file(run_id, "embeddings", "synthetic/development-training", outside, {"files": 4})
    registry.log_epoch(run_id, 0, {"val_map16": 0.25, "train_loss": 2.5})
    registry.log_epoch(run_id, 1, {"val_map16": 0.5, "train_loss": 1.5})
    registry.set_status(run_id, "finished")
    return workdir, run_id


def test_records_give_what_the_registry_gives_without_connecting_to_sqlite(registered):
    workdir, run_id = registered
    registry = Registry(workdir)
    expected = registry.run(run_id)
    tags = [("checkpoint", "best"), ("checkpoint", "last"), ("embeddings", "synthetic/development-training")]
    files = [registry.file(run_id, kind, tag) for kind, tag in tags]
    WATCHING.append(True)
    try:
        records = RunRecords(workdir)
        run = records.run(run_id)
        read = [records.file(run_id, kind, tag) for kind, tag in tags]
        listed = [records.has_file(run_id, kind, tag) for kind, tag in [*tags, ("similarity", "x/y")]]
    finally:
        WATCHING.clear()
    assert CONNECTED == []
    assert run == expected  # config, epochs, status, seed, fingerprint, directory, files with sha256
    assert run.epochs == [{"epoch": 0, "val_map16": 0.25, "train_loss": 2.5},
                          {"epoch": 1, "val_map16": 0.5, "train_loss": 1.5}]
    assert read == files and listed == [True, True, True, False]
    assert records.resolve(run_id) == run_id
    assert records.layout == registry.layout and records.workdir == registry.workdir
    assert [file.sha256 for file in expected.files] == [file.sha256 for file in read_record(
        registry.layout.run(run_id)).run.files]


def test_a_changed_or_missing_file_is_refused_with_the_registrys_message(registered):
    workdir, run_id = registered
    registry, records = Registry(workdir), RunRecords(workdir)
    (registry.layout.run(run_id) / "best.pt").write_text("tampered")
    for lookup in (registry, records):
        assert lookup.file(run_id, "checkpoint", "best", verify=False).path.name == "best.pt"
    messages = []
    for lookup in (registry, records):
        with pytest.raises(UserError) as refused:
            lookup.file(run_id, "checkpoint", "best")
        messages.append(str(refused.value))
    assert messages[0] == messages[1] and "SHA-256 no longer matches" in messages[0]
    (registry.layout.run(run_id) / "last.pt").unlink()
    missing = []
    for lookup in (registry, records):
        for kind, tag in (("checkpoint", "last"), ("similarity", "x/y")):
            with pytest.raises(UserError) as refused:
                lookup.file(run_id, kind, tag)
            missing.append(str(refused.value))
    assert missing[:2] == missing[2:] and "is missing on disk" in missing[0] and "has no similarity 'x/y'" in missing[1]


def test_records_take_full_ids_only_and_only_the_main_process_gets_the_registry(registered):
    workdir, run_id = registered
    records = RunRecords(workdir)
    for reference in (run_id[:7], "", "../work", "."):
        with pytest.raises(RuntimeError, match="internal error"):
            records.resolve(reference)
    with pytest.raises(UserError, match="has no record"):
        records.run("other-abcdef")
    assert recorded_id(workdir, run_id[:7]) == run_id == recorded_id(workdir, run_id)  # train --resume, unjoined
    with pytest.raises(UserError, match="no run record matches 'nothing'"):
        recorded_id(workdir, "nothing")
    main, other = lookup_for(World(rank=0, size=2), workdir), lookup_for(World(rank=1, size=2), workdir)
    assert isinstance(main, Registry) and isinstance(other, RunRecords)
    assert writable(main) is main
    with pytest.raises(RuntimeError, match="internal error"):
        writable(other)
    lookups: list[RunLookup] = [main, other]  # both offer the read API
    assert lookups[0].run(run_id[:7]) == lookups[1].run(run_id)  # the registry also takes a prefix


# `dcase-t6 ARGS...` that, on a process other than rank 0, records every SQLite file it connects to (the audit
# event Python raises with the database's path) and every run record it opens.
WATCHER = """
import os, sys
rank, log = os.environ.get("RANK", "0"), sys.argv[1]
def watch(event, args):
    if event == "sqlite3.connect" or (event == "open" and str(args[0]).endswith("run.json")):
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{rank} {event} {args[0]}\\n")
if rank != "0":
    sys.addaudithook(watch)
from dcase_t6.cli import main
sys.argv = ["dcase-t6", *sys.argv[2:]]
main()
"""


def _launch(tmp_path, log, *arguments: str) -> subprocess.CompletedProcess:
    script = tmp_path / "watcher.py"
    script.write_text(WATCHER, encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(script), str(log), "--workdir", str(tmp_path / "work"), *map(str, arguments)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


@pytest.mark.slow  # four two-process torchrun commands of a tiny model: about a minute on two loaded cores
def test_under_torchrun_only_rank_0_opens_the_registry_the_others_read_run_records(tiny_training, tmp_path):
    from dcase_t6.training.trainer import train_new

    workdir, log = tmp_path / "work", tmp_path / "events.log"
    base = train_new(workdir, build_config(None, {**tiny_training, "name": "base", "log": "none"}), World()).run
    tiny = ["--data-root", tiny_training["data_root"], "--datasets", "synthetic", "--backbone", "tiny-cnn",
            "--text-model", "tiny-random", "--embed-dim", "16", "--batch-size", "8", "--audio-seconds", "2",
            "--epochs", "1"]
    trained = _launch(tmp_path, log, "train", *tiny, "--name", "student", "--init-from", base[:7],
                      "--distill-from", base[:8], "--set", "clusters.method=kmeans", "--set", "clusters.count=3",
                      "--set", "log=none", "--json")
    run = json.loads(trained.stdout)["run"]
    registry = Registry(workdir)
    student = registry.run(run)
    assert student.status == "finished" and student.config["init_from"] == base
    assert registry.has_file(run, "clusters", "synthetic/development-training")
    assert registry.has_file(base, "embeddings", "synthetic/development-training")  # embedded by both processes
    resumed = _launch(tmp_path, log, "train", "--resume", run[:9], "--json")
    assert json.loads(resumed.stdout)["run"] == run
    embedded = _launch(tmp_path, log, "embed", run[:9], "--data-root", tiny_training["data_root"], "--dataset",
                       "synthetic", "--json")
    assert json.loads(embedded.stdout)["run"] == run
    events = [line.split(" ", 2) for line in log.read_text(encoding="utf-8").splitlines()]
    assert {rank for rank, _, _ in events} == {"1"}  # the hook watches rank 1 only
    assert [path for _, event, path in events if event == "sqlite3.connect"] == []
    read = {os.path.basename(os.path.dirname(path)) for _, event, path in events if event == "open"}
    assert read == {base, run}  # the teacher's and the student's records
