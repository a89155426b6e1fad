"""Hostile cases for the run registry: a damaged, truncated, emptied or deleted registry.sqlite, its rebuild from
the run folders, and `runs rm` of a run that a live process is training or embedding."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.embedding.checkpoints import SplitRequest
from dcase_t6.runs import leases
from dcase_t6.runs.layout import DATABASE_NAME
from dcase_t6.runs.records import sha256_of
from dcase_t6.runs.registry import Registry


def _cli(workdir: Path, *args: str):
    return CliRunner().invoke(main, ["--workdir", str(workdir), *args])


def _one_line_error(result) -> str:
    """The single error line of a refused command (exit code 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _populate(workdir: Path) -> dict[str, str]:
    """Two runs as train/embed leave them: one finished with epochs, checkpoints, outputs and clusters, one failed."""
    registry = Registry(workdir)
    done = registry.create_run("done", {"lr": 0.001, "epochs": 2}, None, seed=7)
    registry.set_fingerprint(done, "fingerprint-1")
    folder = workdir / "runs" / done
    for epoch in range(2):
        registry.log_epoch(done, epoch, {"train_loss": 2.0 - epoch, "mAP@10": 0.25 * (epoch + 1)})
    (folder / "best.pt").write_bytes(b"best weights")
    registry.add_file(done, "checkpoint", "best", folder / "best.pt", {"epoch": 2, "step": 16, "parameters": 1234})
    (folder / "last.pt").write_bytes(b"last weights and optimizer")
    registry.add_file(done, "checkpoint", "last", folder / "last.pt", {"epoch": 2, "step": 16})
    (folder / "outputs").mkdir()
    for kind in ("embeddings", "similarity"):
        path = folder / "outputs" / f"clotho.development-testing.{kind}.npz"
        path.write_bytes(f"{kind} arrays".encode())
        registry.add_file(done, kind, "clotho/development-testing", path, {"dataset": "clotho", "queries": 4})
    (folder / "clusters.csv").write_text("file_name,caption,label\na.wav,a dog,3\n")
    registry.add_file(done, "clusters", "clotho/development", folder / "clusters.csv", {"method": "kmeans"})
    registry.set_status(done, "finished")
    failed = registry.create_run("broken", {"lr": 0.1}, None, seed=1)
    registry.set_status(failed, "failed", reason="cannot load text model 'x'")
    return {"done": done, "failed": failed}


def _shown(workdir: Path, run_id: str) -> dict:
    return Registry(workdir).run(run_id).as_json()


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 64)


def _truncated(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _page_overwritten(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[2 * page:3 * page] = b"\xab" * page  # the third page: the header is fine, a table is not
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "problem"), [
    (_garbage, "file is not a database"),
    (_truncated, "database disk image is malformed"),
    (_page_overwritten, "Page 3"),
], ids=["garbage", "truncated", "page-overwritten"])
@pytest.mark.parametrize("command", [("runs", "list"), ("runs", "show", "done"), ("runs", "rm", "done")],
                         ids=["list", "show", "rm"])
def test_a_damaged_registry_is_one_line_saying_how_to_recover(tmp_path, damage, problem, command):
    _populate(tmp_path)
    registry = tmp_path / DATABASE_NAME
    damage(registry)
    damaged = registry.read_bytes()
    line = _one_line_error(_cli(tmp_path, *command))
    assert f"{registry}: the run registry is damaged ({problem}" in line
    assert f"`dcase-t6 --workdir {tmp_path} runs rebuild`" in line and "backup" in line
    assert registry.read_bytes() == damaged  # left as it was for a rebuild or a restore


@pytest.mark.parametrize("lose", ["empty", "missing"])
def test_an_empty_or_missing_registry_beside_run_folders_is_not_no_runs(tmp_path, lose):
    _populate(tmp_path)
    registry = tmp_path / DATABASE_NAME
    for leftover in (registry, Path(f"{registry}-wal"), Path(f"{registry}-shm")):
        leftover.unlink(missing_ok=True)
    if lose == "empty":
        registry.write_bytes(b"")
    line = _one_line_error(_cli(tmp_path, "runs", "list"))
    state = "is empty (0 bytes)" if lose == "empty" else "does not exist"
    assert f"{registry} {state}, but {tmp_path / 'runs'} holds 2 run folder(s)" in line
    assert "runs rebuild`" in line
    assert (registry.stat().st_size == 0) if lose == "empty" else not registry.exists()  # nothing created in its place


def test_rebuild_recovers_runs_status_epochs_and_files_with_hashes(tmp_path):
    ids = _populate(tmp_path)
    before = {name: _shown(tmp_path, run_id) for name, run_id in ids.items()}
    registry = tmp_path / DATABASE_NAME
    _garbage(registry)
    result = _cli(tmp_path, "runs", "rebuild")
    assert result.exit_code == 0, result.output
    assert "2 run(s) recovered, 0 folder(s) skipped" in result.output
    assert f"{ids['done']}  finished  2 epoch(s)  5 file(s) (all verified)" in result.output
    assert f"{ids['failed']}  failed  0 epoch(s)  0 file(s)" in result.output
    [kept] = tmp_path.glob(f"{DATABASE_NAME}.damaged-*")
    assert kept.read_bytes() == bytes(range(256)) * 64  # the damaged file is kept, not deleted
    after = {name: _shown(tmp_path, run_id) for name, run_id in ids.items()}
    assert after == before
    assert after["done"]["status"] == "finished" and after["done"]["data_fingerprint"] == "fingerprint-1"
    assert [epoch["mAP@10"] for epoch in after["done"]["epochs"]] == [0.25, 0.5]
    assert after["failed"]["status"] == "failed" and after["failed"]["reason"] == "cannot load text model 'x'"
    rebuilt = Registry(tmp_path)
    best = rebuilt.file(ids["done"], "checkpoint", "best")  # verified against the file on disk
    assert best.sha256 == sha256_of(tmp_path / "runs" / ids["done"] / "best.pt") and best.info["parameters"] == 1234
    assert rebuilt.parameter_count(ids["done"][:6]) == 1234
    assert {(item["kind"], item["tag"]) for item in after["done"]["files"]} == {
        ("checkpoint", "best"), ("checkpoint", "last"), ("clusters", "clotho/development"),
        ("embeddings", "clotho/development-testing"), ("similarity", "clotho/development-testing")}


def test_rebuild_reports_files_changed_or_missing_since_they_were_registered(tmp_path):
    ids = _populate(tmp_path)
    folder = tmp_path / "runs" / ids["done"]
    (folder / "last.pt").write_bytes(b"tampered")
    (folder / "outputs" / "clotho.development-testing.similarity.npz").unlink()
    (tmp_path / DATABASE_NAME).unlink()
    result = _cli(tmp_path, "runs", "rebuild")
    assert result.exit_code == 0, result.output
    assert "5 file(s) (2 missing or changed)" in result.output
    assert "last.pt: SHA-256 no longer matches" in result.output
    assert "similarity 'clotho/development-testing' of run" in result.output and "missing on disk" in result.output
    registry = Registry(tmp_path)
    with pytest.raises(UserError, match="SHA-256 no longer matches"):  # still refused, as before the loss
        registry.file(ids["done"], "checkpoint", "last")
    assert registry.file(ids["done"], "checkpoint", "best").info["epoch"] == 2


def test_rebuild_refuses_an_intact_registry_unless_forced(tmp_path):
    ids = _populate(tmp_path)
    registry = tmp_path / DATABASE_NAME
    line = _one_line_error(_cli(tmp_path, "runs", "rebuild"))
    assert f"{registry} is intact and holds 2 run(s)" in line and "--force" in line
    assert not list(tmp_path.glob(f"{DATABASE_NAME}.*-2*"))
    forced = _cli(tmp_path, "runs", "rebuild", "--force", "--json")
    assert forced.exit_code == 0, forced.output
    summary = json.loads(forced.stdout)
    assert sorted(run["id"] for run in summary["runs"]) == sorted(ids.values())
    assert Path(summary["previous"]).name.startswith(f"{DATABASE_NAME}.replaced-")
    old = sqlite3.connect(summary["previous"])  # the replaced registry is kept whole
    assert old.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    old.close()


def test_removed_runs_stay_removed_through_a_rebuild(tmp_path):
    ids = _populate(tmp_path)
    assert _cli(tmp_path, "runs", "rm", ids["failed"]).exit_code == 0
    assert (tmp_path / "runs" / ids["failed"] / "run.removed.json").is_file()
    assert _cli(tmp_path, "runs", "rm", ids["done"], "--delete-files").exit_code == 0
    assert not (tmp_path / "runs" / ids["done"] / "run.json").exists()
    assert not (tmp_path / "runs" / ids["done"] / "best.pt").exists()
    (tmp_path / DATABASE_NAME).unlink()
    listed = _cli(tmp_path, "runs", "list", "--json")  # no run folder is left to hide: a new registry is fine
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []
    result = _cli(tmp_path, "runs", "rebuild")
    assert result.exit_code == 0 and "0 run(s) recovered" in result.output


def test_a_damaged_run_record_is_skipped_by_name_and_the_others_recovered(tmp_path):
    ids = _populate(tmp_path)
    (tmp_path / "runs" / ids["failed"] / "run.json").write_text('{"id": "broken-1"')
    (tmp_path / DATABASE_NAME).unlink()
    result = _cli(tmp_path, "runs", "rebuild", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [run["id"] for run in summary["runs"]] == [ids["done"]]
    [skipped] = summary["skipped"]
    assert skipped["folder"] == str(tmp_path / "runs" / ids["failed"]) and "not a run record" in skipped["reason"]


def test_records_are_written_for_runs_registered_before_records_existed(tmp_path):
    ids = _populate(tmp_path)
    record = tmp_path / "runs" / ids["done"] / "run.json"
    expected = json.loads(record.read_text())
    record.unlink()
    Registry(tmp_path)  # opening the registry writes the missing record
    assert json.loads(record.read_text()) == expected
    assert [item["path"] for item in expected["files"]] == [
        "best.pt", "last.pt", "clusters.csv", "outputs/clotho.development-testing.embeddings.npz",
        "outputs/clotho.development-testing.similarity.npz"]


def _train_command(workdir: Path, data_root: Path) -> list[str]:
    return [sys.executable, "-m", "dcase_t6", "--workdir", str(workdir), "train", "--datasets", "synthetic",
            "--data-root", str(data_root), "--backbone", "tiny-cnn", "--text-model", "tiny-random",
            "--embed-dim", "8", "--epochs", "200", "--batch-size", "8", "--audio-seconds", "2"]


def _first_epoch(process: subprocess.Popen, registry: Registry) -> str:
    """The id of the run ``process`` trains, once its first epoch and checkpoints are registered."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = registry.runs()
        if runs and registry.run(runs[0].id).epochs and len(registry.run(runs[0].id).files) == 2:
            return runs[0].id
        if process.poll() is not None:
            pytest.fail(f"training ended early: {process.communicate()}")
        time.sleep(0.2)
    process.kill()
    pytest.fail("the training process recorded no epoch within 120 s")


def test_rm_is_refused_while_a_live_process_trains_the_run(tmp_path, tiny_data_root):
    process = subprocess.Popen(_train_command(tmp_path, tiny_data_root), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        run_id = _first_epoch(process, Registry(tmp_path))
        line = _one_line_error(_cli(tmp_path, "runs", "rm", run_id, "--delete-files"))
        assert line == (f"error: run {run_id} is in use right now: `train` by process {process.pid} on "
                        f"{socket.gethostname()}; wait for it to end (or stop that process), then "
                        f"`dcase-t6 runs rm {run_id}` again")
        registry = Registry(tmp_path)
        assert registry.run(run_id).status == "running"
        assert registry.file(run_id, "checkpoint", "best").path.is_file()  # nothing deleted
    finally:
        process.send_signal(signal.SIGINT)  # a graceful stop: the run ends `stopped`
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert Registry(tmp_path).run(run_id).status == "stopped"
    assert _cli(tmp_path, "runs", "rm", run_id, "--delete-files").exit_code == 0  # once it has ended
    assert not (tmp_path / "runs" / run_id / "best.pt").exists()


def test_rm_is_refused_while_another_process_embeds_the_run(tmp_path):
    ids = _populate(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom dcase_t6.runs.registry import Registry\n"
         f"with Registry({str(tmp_path)!r}).using({ids['done']!r}, 'embed'):\n"
         "    print('held', flush=True)\n    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _one_line_error(_cli(tmp_path, "runs", "rm", ids["done"][:6], "--delete-files"))
        assert f"run {ids['done']} is in use right now: `embed` by process {holder.pid} on" in line
        assert (tmp_path / "runs" / ids["done"] / "best.pt").is_file()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert _cli(tmp_path, "runs", "rm", ids["done"][:6]).exit_code == 0  # the lease is gone with the process


def test_a_dead_embed_lease_does_not_block_rm(tmp_path):
    ids = _populate(tmp_path)
    holder = subprocess.run([sys.executable, "-c", "import os\nfrom dcase_t6.runs.registry import Registry\n"
                             f"lease = Registry({str(tmp_path)!r}).using({ids['done']!r}, 'embed')\n"
                             "lease.__enter__()\n"
                             "os._exit(9)\n"])  # killed while holding the lease: it is never released
    assert holder.returncode == 9
    with sqlite3.connect(tmp_path / DATABASE_NAME) as connection:
        assert connection.execute("SELECT command FROM leases").fetchall() == [("embed",)]
    assert _cli(tmp_path, "runs", "rm", ids["done"]).exit_code == 0


def test_embed_holds_an_in_use_lease_while_it_runs(tmp_path, monkeypatch):
    from dcase_t6.embedding import checkpoints

    ids = _populate(tmp_path)
    seen = []

    def load_model(registry, run, tag="best", device="cpu"):
        with sqlite3.connect(registry.path) as connection:
            seen.extend(connection.execute("SELECT run_id, command, pid FROM leases").fetchall())
        raise UserError("stop here")

    monkeypatch.setattr(checkpoints, "load_model", load_model)
    with pytest.raises(UserError, match="stop here"):
        checkpoints.embed_run(tmp_path, ids["done"][:6],
                              SplitRequest(tmp_path / "data", "clotho", "development-testing"))
    assert seen == [(ids["done"], "embed", os.getpid())]
    with sqlite3.connect(tmp_path / DATABASE_NAME) as connection:
        assert connection.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0  # released


@pytest.mark.parametrize("operation", ["log_epoch", "add_file", "set_status", "set_fingerprint", "claim", "using"])
def test_writing_to_a_run_removed_under_the_process_is_one_clear_error(tmp_path, operation):
    registry = Registry(tmp_path)
    run_id = registry.create_run("gone", {}, None, 0)
    checkpoint = tmp_path / "runs" / run_id / "best.pt"
    checkpoint.write_bytes(b"weights")
    with sqlite3.connect(registry.path) as connection:  # as `runs rm` from another host would
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    calls = {"log_epoch": lambda: registry.log_epoch(run_id, 0, {"loss": 1.0}),
             "add_file": lambda: registry.add_file(run_id, "checkpoint", "best", checkpoint),
             "set_status": lambda: registry.set_status(run_id, "failed", "x"),
             "set_fingerprint": lambda: registry.set_fingerprint(run_id, "f"),
             "claim": lambda: registry.claim(run_id),
             "using": lambda: registry.using(run_id, "embed").__enter__()}
    expected = ("no run match" if operation == "using" else  # resolved first: it names no run any more
                f"run {run_id} was removed from the registry while this process was using it")
    with pytest.raises(UserError, match=expected):
        calls[operation]()


def test_training_whose_run_is_removed_from_another_host_stops_with_one_line(tmp_path, tiny_data_root):
    process = subprocess.Popen(_train_command(tmp_path, tiny_data_root), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        run_id = _first_epoch(process, Registry(tmp_path))
        stale = time.time() - leases.STALE_SECONDS - 60
        with sqlite3.connect(tmp_path / DATABASE_NAME) as connection:  # it looks like a silent run on another host
            connection.execute("UPDATE runs SET host = 'another-host', heartbeat = ? WHERE id = ?", (stale, run_id))
        assert _cli(tmp_path, "runs", "rm", run_id).exit_code == 0
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr and "IntegrityError" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"run {run_id} was removed from the registry while this process" in last
    assert Registry(tmp_path).runs() == []


def test_rm_delete_files_in_a_copied_work_directory_leaves_the_originals(tmp_path):
    """The registry holds absolute paths: a copy of a work directory must not delete the original's files."""
    import shutil

    original, copy = tmp_path / "original", tmp_path / "copy"
    runs = _populate(original)
    shutil.copytree(original, copy)
    line = _one_line_error(_cli(copy, "runs", "rm", runs["done"], "--delete-files"))
    assert "lie outside" in line and "nothing was removed" in line
    assert (original / "runs" / runs["done"] / "best.pt").read_bytes() == b"best weights"
    assert Registry(copy).run(runs["done"]).status == "finished"  # still registered in the copy
