"""The SQLite run registry: records, hashes, prefixes and concurrent writers."""

import multiprocessing

import pytest

from dcase_t6.common.errors import UserError
from dcase_t6.runs.registry import Registry


def test_run_lifecycle_with_epochs_and_verified_files(tmp_path):
    registry = Registry(tmp_path)
    run_id = registry.create_run("demo", {"lr": 0.1}, "abc", seed=3)
    registry.log_epoch(run_id, 0, {"mAP@10": 0.25})
    registry.log_epoch(run_id, 0, {"mAP@10": 0.5})  # a resumed epoch replaces its record
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    registry.add_file(run_id, "checkpoint", "best", checkpoint, {"epoch": 1})
    run = registry.run(run_id[:6])
    assert run.config == {"lr": 0.1} and run.seed == 3 and run.data_fingerprint == "abc"
    assert run.epochs == [{"epoch": 0, "mAP@10": 0.5}]
    assert registry.file(run_id, "checkpoint", "best").info == {"epoch": 1}


def test_changed_checkpoint_is_refused(tmp_path):
    registry = Registry(tmp_path)
    run_id = registry.create_run("demo", {}, None, None)
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    registry.add_file(run_id, "checkpoint", "best", checkpoint)
    checkpoint.write_bytes(b"tampered")
    with pytest.raises(UserError, match="SHA-256 no longer matches"):
        registry.file(run_id, "checkpoint", "best")
    checkpoint.unlink()
    with pytest.raises(UserError, match="missing on disk"):
        registry.file(run_id, "checkpoint", "best")
    with pytest.raises(UserError, match="has no checkpoint 'last'"):
        registry.file(run_id, "checkpoint", "last")


def test_ambiguous_and_unknown_references(tmp_path):
    registry = Registry(tmp_path)
    first = registry.create_run("demo", {}, None, None)
    registry.create_run("demo", {}, None, None)
    with pytest.raises(UserError, match="2 runs"):
        registry.resolve("demo")
    with pytest.raises(UserError, match="no run match 'other'"):
        registry.resolve("other")
    assert registry.resolve(first) == first
    assert registry.remove(first) == first and len(registry.runs()) == 1


def _write_epochs(workdir, run_id, offset):
    registry = Registry(workdir)
    for epoch in range(offset, offset + 40):
        registry.log_epoch(run_id, epoch, {"value": epoch})


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    run_id = Registry(tmp_path).create_run("demo", {}, None, None)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_epochs, args=(tmp_path, run_id, offset)) for offset in (0, 40)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert [epoch["value"] for epoch in Registry(tmp_path).run(run_id).epochs] == list(range(80))


def _open_and_write(workdir, name):
    registry = Registry(workdir)
    registry.create_run(name, {}, None, None)


def test_processes_creating_the_registry_at_once_all_succeed(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_open_and_write, args=(tmp_path, f"p{i}")) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert sorted(run.name for run in Registry(tmp_path).runs()) == ["p0", "p1", "p2", "p3"]


def test_find_is_none_only_when_no_run_matches_and_has_file_asks_without_raising(tmp_path):
    registry = Registry(tmp_path)
    first = registry.create_run("demo", {}, None, None)
    registry.create_run("demo", {}, None, None)
    assert registry.find("other") is None
    assert registry.find(first).id == first and registry.find(first).epochs == []
    with pytest.raises(UserError, match="2 runs"):
        registry.find("demo")  # ambiguous: an error, not "no such run"
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    registry.add_file(first, "checkpoint", "best", checkpoint)
    assert registry.has_file(first, "checkpoint", "best") and not registry.has_file(first, "checkpoint", "last")
    checkpoint.write_bytes(b"tampered")
    assert "SHA-256 no longer matches" in registry.file(first, "checkpoint", "best", verify=False).problem()
    assert set(registry.run(first).as_json()) >= {"id", "status", "config", "epochs", "files"}
    assert "epochs" not in registry.runs()[0].as_json()
