"""kill -9 at the worst moment: a real `package` or `embed` process is killed (SIGKILL) just before it renames
a finished temporary file into place. Nothing half-written is left where a reader looks, the registry
names no missing file, and running the same command again completes and removes the leftovers."""

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.retrieval.matrices import read_matrix
from dcase_t6.runs.config import build_config
from dcase_t6.runs.registry import Registry
from dcase_t6.training.trainer import train_new
from helpers.submission import PDF, make_system

# Runs the CLI in a fresh interpreter whose os.replace kills the process (SIGKILL) at the first rename of a
# file whose name ends with the given suffix: the moment an atomic write has finished writing.
KILLER = """
import os, signal, sys
suffix = sys.argv[1]
original = os.replace
def replace(source, target, *args, **kwargs):
    if str(target).endswith(suffix):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(source, target, *args, **kwargs)
os.replace = replace
from dcase_t6.cli import main
sys.argv = ["dcase-t6", *sys.argv[2:]]
main()
"""


def _killed_at_rename(suffix: str, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER, suffix, *arguments], capture_output=True, text=True,
                          timeout=300)


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if path.name.endswith(".tmp"))


def test_kill_9_of_package_just_before_the_zip_is_renamed(tmp_path):
    system = make_system(tmp_path, 1)
    (tmp_path / "report.pdf").write_bytes(PDF)
    out = tmp_path / "submission.zip"
    arguments = ["package", "-l", system.label, "-p", str(system.predictions), "-m", str(system.meta), "--report",
                 str(tmp_path / "report.pdf"), "--out", str(out)]
    killed = _killed_at_rename(".zip", *arguments)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists() and len(_leftovers(tmp_path)) == 1  # the finished temporary zip, never renamed
    again = CliRunner().invoke(main, arguments)
    assert again.exit_code == 0, again.output
    assert _leftovers(tmp_path) == []
    assert CliRunner().invoke(main, ["package", "--check", str(out)]).exit_code == 0


@pytest.fixture(scope="module")
def trained_run(tiny_data_root, tiny_training, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    return workdir, train_new(workdir, build_config(None, {**tiny_training, "name": "killed"})).run


def test_kill_9_of_embed_just_before_the_similarity_matrix_is_renamed(trained_run, tiny_data_root):
    workdir, run = trained_run
    arguments = ["--workdir", str(workdir), "embed", run, "--data-root", str(tiny_data_root), "--dataset", "synthetic"]
    killed = _killed_at_rename(".similarity.npz", *arguments)
    assert killed.returncode == -9, killed.stderr[-2000:]
    registry = Registry(workdir)
    outputs = workdir / "runs" / run / "outputs"
    assert not any(outputs.glob("*.similarity.npz")) and len(_leftovers(outputs)) == 1
    for record in registry.run(run).files:  # whatever the registry names is there and intact
        assert record.problem() is None, record.path
    assert registry.run(run).status == "finished"  # embed does not change the training run's status
    again = CliRunner().invoke(main, [*arguments, "--json"])
    assert again.exit_code == 0, again.output
    assert _leftovers(outputs) == []
    matrix = read_matrix(registry.file(run, "similarity", "synthetic/development-testing").path)
    assert matrix.scores.shape == (20, 4)
