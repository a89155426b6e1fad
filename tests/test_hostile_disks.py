"""Hostile disks: full, over the file-size limit, read-only, unwritable, a file or a link loop where a folder
belongs.

Every case runs a real command on real files and must end in exit code 2 with one ``error:`` line naming the file
and the fix, no traceback, nothing half-written (no output, no temporary file) and an honest registry: a run that
could not be registered leaves no record and no run folder, a run that hit a full disk is ``failed`` with a
one-line reason.

How the disks are made hostile, as root or not:
- a full disk: the file-size limit (``RLIMIT_FSIZE``, ``ulimit -f``) lowered for the block (Python ignores
  SIGXFSZ, so a write past it fails with EFBIG), or a tiny tmpfs in a private mount namespace (ENOSPC);
- read-only: a read-only bind mount in a private mount namespace (EROFS), or file modes, which root obeys once the
  capabilities that override them are off (``ordinary_user``);
- a registry path that is a folder, a work directory below a file, symbolic link loops: as they are.
The mount-namespace cases are skipped where ``unshare`` may not mount (and fail under CI, which must run them).
"""

import contextlib
import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.retrieval.matrices import SimilarityMatrix, write_matrix
from dcase_t6.runs.layout import DATABASE_NAME
from dcase_t6.runs.records import sha256_of
from dcase_t6.runs.registry import Registry
from helpers.cli import refused
from helpers.data import snapshot

_CAPABILITY_VERSION_3 = 0x20080522
_FILE_PERMISSION_OVERRIDES = (1 << 1) | (1 << 2) | (1 << 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def run(*args):
    return CliRunner().invoke(main, [str(arg) for arg in args])


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past ``limit`` bytes fail with EFBIG while the block runs (as on a disk that is full)."""
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN  # Python's default: EFBIG instead of a kill
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _cannot(reason: str) -> None:
    """Skip on a developer's machine that does not allow it; fail under CI (CI=true), which must run every case."""
    if os.environ.get("CI"):
        pytest.fail(f"hostile disk case cannot run in CI: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def ordinary_user():
    """File modes apply to this thread while the block runs, also for root: the capabilities that override them are
    off in its effective set (and back on afterwards). Nothing to do for a user who is not root."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        _cannot("capget failed: cannot make root obey file modes here")
    saved = data[0].effective
    data[0].effective &= ~_FILE_PERMISSION_OVERRIDES
    if libc.capset(ctypes.byref(header), data) != 0:
        _cannot("capset failed: cannot make root obey file modes here")
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0


def in_mount_namespace(tmp_path: Path, mounts: str, *args, after: str = "true") -> subprocess.CompletedProcess:
    """``python -m dcase_t6 ARGS`` in a private mount namespace where the shell commands ``mounts`` ran first (then
    ``after``, while the mounts still exist); skipped where this machine does not allow it."""
    unshare = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    probe_dir = tmp_path / "mount-probe"
    probe_dir.mkdir()
    if shutil.which("unshare") is None or subprocess.run(
            [*unshare, "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs {probe_dir}"], capture_output=True).returncode:
        _cannot("no private mount namespace here (unshare --mount is not permitted)")
    script = f'{mounts} || exit 99; "$0" -m dcase_t6 "$@"; code=$?; {after}; exit $code'
    done = subprocess.run([*unshare, "sh", "-c", script, sys.executable, *[str(arg) for arg in args]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 99, done.stderr
    return done


def one_line(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """A subprocess's refusal: exit 2, one ``error:`` line holding every fragment, no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stdout + done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def refused_after_notes(result, *fragments: str) -> str:
    """``refused``, after the notes training prints first (random initialisation, precision)."""
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.output.strip().endswith(errors[0]), result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def scored(tmp_path) -> dict:
    """Two systems' matrices (400 queries x 40 files) and the captions they are scored against."""
    rng = np.random.default_rng(0)
    files = [f"clip{i}.wav" for i in range(40)]
    queries = [f"caption {j} of clip {i}" for i in range(40) for j in range(10)]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a", "b"):
        write_matrix(SimilarityMatrix(queries, files, rng.random((len(queries), len(files)))), inputs / f"{name}.csv")
    lines = ["file_name," + ",".join(f"caption_{j + 1}" for j in range(10))]
    lines += [f"clip{i}.wav," + ",".join(f"caption {j} of clip {i}" for j in range(10)) for i in range(40)]
    (inputs / "captions.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    return {"a": inputs / "a.csv", "b": inputs / "b.csv", "captions": inputs / "captions.csv", "out": out,
            "tmp": tmp_path}


def evaluate_args(case: dict, per_query: Path) -> list:
    return ["evaluate", "-p", case["a"], "-c", case["captions"], "--per-query", per_query]


def train_args(workdir: Path, tiny_training: dict, **changes) -> list:
    settings = [item for key, value in {**tiny_training, **changes}.items() for item in ("--set", f"{key}={value}")]
    return ["--workdir", workdir, "train", *settings]


# --- full disks: nothing half-written, the run failed with its reason --------------------------------------------

def test_evaluate_per_query_over_the_file_size_limit_writes_nothing(scored):
    before = snapshot(scored["tmp"])
    with file_size_limit(4096):
        result = run(*evaluate_args(scored, scored["out"] / "per-query.csv"))
    refused(result, f"{scored['out'] / 'per-query.csv'}: file too large", "ulimit -f")
    assert snapshot(scored["tmp"]) == before  # no per-query file, no temporary file


def test_evaluate_per_query_on_a_full_disk_writes_nothing(scored):
    listing = scored["tmp"] / "listing.txt"
    done = in_mount_namespace(scored["tmp"], f"mount -t tmpfs -o size=4k tmpfs {scored['out']}",
                              *evaluate_args(scored, scored["out"] / "per-query.csv"),
                              after=f"ls -A {scored['out']} > {listing}")
    one_line(done, f"{scored['out'] / 'per-query.csv'}: no space left on its disk", "free space")
    assert listing.read_text() == ""  # the full disk holds nothing of it


def test_ensemble_out_over_the_file_size_limit_keeps_the_previous_output(scored):
    weights, out = scored["out"] / "weights.json", scored["out"] / "ensemble.csv"
    searched = run("ensemble", "--search", "-s", f"a={scored['a']}", "-s", f"b={scored['b']}", "-c", scored["captions"],
                   "--step", "0.5", "--out", weights)
    assert searched.exit_code == 0, searched.output
    out.write_text("the ensemble of last week\n")
    before = snapshot(scored["tmp"])
    with file_size_limit(64 * 1024):
        result = run("ensemble", "--apply", "-w", weights, "-s", f"a={scored['a']}", "-s", f"b={scored['b']}",
                     "--out", out)
    refused(result, f"{out}: file too large", "raise the limit")
    assert snapshot(scored["tmp"]) == before


def cached(data_root) -> None:
    """The data root's audio cache built (before a limit: the cache is not what these cases try)."""
    built = run("prepare", "cache", "--root", data_root, "--rate", "16000")
    assert built.exit_code == 0, built.output


def test_prepare_cache_over_the_file_size_limit_names_the_shard(tmp_path, tiny_data_root):
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root, root, ignore=shutil.ignore_patterns("cache"))
    with file_size_limit(64 * 1024):  # less than one clip of 2-3 s at 16 kHz in float32
        result = run("prepare", "cache", "--root", root, "--rate", "16000", "--workers", "1")
    refused_after_notes(result, str(root / "cache" / "16000"), ".f32: file too large", "raise the limit")


def test_a_run_that_fills_the_disk_ends_failed_with_a_one_line_reason(tmp_path, tiny_training):
    cached(tiny_training["data_root"])
    with file_size_limit(200 * 1024):  # the registry and run.json fit, a checkpoint does not
        result = run(*train_args(tmp_path, tiny_training, max_steps=1))  # one step, then its checkpoint
    line = refused_after_notes(result, "file too large", "raise the limit")
    [listed] = Registry(tmp_path).runs()
    assert listed.status == "failed"
    assert listed.reason == line.removeprefix("error: ") and ".pt: file too large" in listed.reason
    assert "\n" not in listed.reason
    folder = tmp_path / "runs" / listed.id
    assert not list(folder.glob("*.pt")) and not list(folder.glob(".*.tmp"))  # no checkpoint, whole or half
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "failed" and record["reason"] == listed.reason


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory, tiny_data_root, tiny_training) -> dict:
    """A run stopped after one step with 2048-dimensional embeddings (the validation split's fill 200 KB)."""
    workdir = tmp_path_factory.mktemp("wide-run")
    trained = run(*train_args(workdir, tiny_training, max_steps=1, **{"model.embed_dim": 2048}))
    assert trained.exit_code == 0, trained.output
    return {"workdir": workdir, "run": Registry(workdir).runs()[0].id, "data": tiny_data_root}


def test_embed_over_the_file_size_limit_keeps_the_registered_outputs(wide_run):
    args = ["--workdir", wide_run["workdir"], "embed", wide_run["run"], "--data-root", wide_run["data"], "--dataset",
            "synthetic", "--split", "development-validation", "--checkpoint", "last"]
    embedded = run(*args)
    assert embedded.exit_code == 0, embedded.output
    registry = Registry(wide_run["workdir"])
    registered = registry.file(wide_run["run"], "embeddings", "synthetic/development-validation")
    outputs = registered.path.parent
    before = snapshot(outputs)
    with file_size_limit(128 * 1024):
        result = run(*args)
    refused(result, f"{registered.path}: file too large")
    assert snapshot(outputs) == before  # the embeddings of the last embed, as registered; no temporary file
    assert sha256_of(registered.path) == registered.sha256
    assert registry.run(wide_run["run"]).status == "stopped"


# --- read-only and unwritable: nothing registered, nothing made ---------------------------------------------------

def test_train_with_a_read_only_registry_registers_nothing(tmp_path, tiny_training):
    Registry(tmp_path)
    database = tmp_path / DATABASE_NAME
    database.chmod(0o444)
    before = snapshot(tmp_path)
    try:
        with ordinary_user():
            result = run(*train_args(tmp_path, tiny_training))
    finally:
        database.chmod(0o644)
    refused_after_notes(result, f"{database}: the run registry cannot be opened or written", "readonly", "writable")
    assert not (tmp_path / "runs").exists()  # no run folder
    assert snapshot(tmp_path)[DATABASE_NAME] == before[DATABASE_NAME]  # (SQLite may leave its -wal and -shm)
    assert Registry(tmp_path).runs() == []


def test_train_with_an_unwritable_runs_folder_leaves_no_record(tmp_path, tiny_training):
    Registry(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    try:
        with ordinary_user():
            result = run(*train_args(tmp_path, tiny_training))
    finally:
        runs.chmod(0o755)
    refused_after_notes(result, f"{runs}/", "permission denied", "chmod")
    assert Registry(tmp_path).runs() == [] and list(runs.iterdir()) == []


def test_a_work_directory_without_write_permission_is_one_line(tmp_path):
    workdir = tmp_path / "work"
    Registry(workdir).create_run("kept", {"lr": 0.1}, None, seed=1)
    before = snapshot(workdir)
    workdir.chmod(0o555)
    try:
        with ordinary_user():
            result = run("--workdir", workdir, "runs", "list")
    finally:
        workdir.chmod(0o755)
    refused(result, f"{workdir / DATABASE_NAME}: the run registry cannot be opened or written", str(workdir))
    assert snapshot(workdir) == before


def test_evaluate_per_query_in_an_unwritable_folder_writes_nothing(scored):
    scored["out"].chmod(0o555)
    try:
        with ordinary_user():
            result = run(*evaluate_args(scored, scored["out"] / "per-query.csv"))
    finally:
        scored["out"].chmod(0o755)
    refused(result, f"{scored['out'] / 'per-query.csv'}", "permission denied")
    assert list(scored["out"].iterdir()) == []


def test_a_work_directory_on_a_read_only_file_system_is_one_line(tmp_path):
    workdir = tmp_path / "work"
    Registry(workdir).create_run("kept", {"lr": 0.1}, None, seed=1)
    before = snapshot(workdir)
    done = in_mount_namespace(tmp_path, f"mount --bind {workdir} {workdir} && mount -o remount,bind,ro {workdir}",
                              "--workdir", workdir, "runs", "list")
    one_line(done, f"{workdir / DATABASE_NAME}: the run registry cannot be opened or written",
             f"{workdir} is on a read-only file system", "writable disk")
    assert snapshot(workdir) == before


def test_evaluate_per_query_on_a_read_only_file_system_says_so(scored):
    out = scored["out"]
    done = in_mount_namespace(scored["tmp"], f"mount --bind {out} {out} && mount -o remount,bind,ro {out}",
                              *evaluate_args(scored, out / "per-query.csv"))
    one_line(done, f"{out} is on a read-only file system", "writable disk")
    assert list(out.iterdir()) == []


# --- a file or a link loop where a folder or a file belongs ------------------------------------------------------

def test_a_registry_path_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / DATABASE_NAME).mkdir()
    before = snapshot(tmp_path)
    refused(run("--workdir", tmp_path, "runs", "list"), f"{tmp_path / DATABASE_NAME}: a folder, not the run registry")
    assert snapshot(tmp_path) == before


def test_a_work_directory_below_a_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    refused(run("--workdir", tmp_path / "notes.txt" / "work", "runs", "list"),
            f"--workdir {tmp_path / 'notes.txt' / 'work'}", "is a file, not a folder")
    assert snapshot(tmp_path) == before


def test_a_work_directory_that_is_a_link_loop_is_one_line(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    refused(run("--workdir", tmp_path / "loop", "runs", "list"), f"--workdir {tmp_path / 'loop'}",
            "a broken or looping link")
    assert os.readlink(tmp_path / "loop") == "loop"


def test_ensemble_weights_that_are_a_link_loop_is_one_line(scored):
    loop = scored["tmp"] / "weights.json"
    loop.symlink_to("weights.json")
    before = snapshot(scored["tmp"])
    refused(run("ensemble", "--apply", "-w", loop, "-s", f"a={scored['a']}", "-s", f"b={scored['b']}", "--out",
                scored["out"] / "ensemble.csv"), "weights.json", "symbolic link loop", "real path")
    assert snapshot(scored["tmp"]) == before


@pytest.fixture
def finished(tmp_path) -> dict:
    workdir = tmp_path / "work"
    registry = Registry(workdir)
    run_id = registry.create_run("done", {"lr": 0.1}, None, seed=1)
    registry.log_epoch(run_id, 0, {"train_loss": 1.0, "mAP@10": 0.2})
    registry.set_status(run_id, "finished")
    return {"workdir": workdir, "run": run_id, "tmp": tmp_path}


def test_runs_compare_plot_that_is_a_link_loop_keeps_the_link(finished):
    loop = finished["tmp"] / "curves.png"
    loop.symlink_to("curves.png")
    refused(run("--workdir", finished["workdir"], "runs", "compare", finished["run"], "--plot", loop),
            f"--plot {loop}", "symbolic link loop")
    assert os.readlink(loop) == "curves.png"


def test_runs_compare_plot_below_a_file_is_one_line(finished):
    (finished["tmp"] / "notes.txt").write_text("mine\n")
    before = snapshot(finished["tmp"])
    refused(run("--workdir", finished["workdir"], "runs", "compare", finished["run"], "--plot",
                finished["tmp"] / "notes.txt" / "curves.png"), "notes.txt is a file, not a folder")
    assert snapshot(finished["tmp"]) == before


def test_runs_rm_of_a_run_whose_checkpoint_became_a_link_loop_is_one_line(finished):
    registry = Registry(finished["workdir"])
    checkpoint = finished["workdir"] / "runs" / finished["run"] / "best.pt"
    checkpoint.write_bytes(b"weights")
    registry.add_file(finished["run"], "checkpoint", "best", checkpoint)
    checkpoint.unlink()
    checkpoint.symlink_to("best.pt")
    refused(run("--workdir", finished["workdir"], "runs", "rm", finished["run"], "--delete-files"),
            f"{checkpoint}", "symbolic link loop", "real path")
    assert Registry(finished["workdir"]).run(finished["run"]).status == "finished"


def test_evaluate_per_query_with_a_name_too_long_writes_nothing(scored):
    per_query = scored["out"] / ("q" * 300 + ".csv")
    refused(run(*evaluate_args(scored, per_query)), "file name too long", "shorter")
    assert list(scored["out"].iterdir()) == []
