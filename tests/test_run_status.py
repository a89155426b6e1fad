"""Honest run status: failures anywhere end as `failed` with the reason, a process that died without a word
shows as `interrupted`, and `train --resume` continues either."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from dcase_t6.cli import main
from dcase_t6.common.errors import UserError
from dcase_t6.runs import leases
from dcase_t6.runs.registry import Registry


def _train(workdir, tiny_data_root, *extra: str):
    return CliRunner().invoke(main, ["--workdir", str(workdir), "train", "--datasets", "synthetic", "--backbone",
                                     "tiny-cnn", "--embed-dim", "8", "--epochs", "1", "--batch-size", "8",
                                     "--audio-seconds", "2", "--data-root", str(tiny_data_root), *extra])


@pytest.mark.parametrize(("extra", "reason"), [
    (("--data-root", "/nonexistent/data"), "/nonexistent/data"),
    (("--text-model", "/nonexistent/text-model"), "cannot load text model '/nonexistent/text-model'"),
    (("--audio-weights", "/nonexistent/weights.pt"), "weights file not found"),
])
def test_a_run_that_fails_anywhere_ends_failed_with_its_reason(tmp_path, tiny_data_root, extra, reason):
    result = _train(tmp_path, tiny_data_root, "--text-model", "tiny-random", *extra)
    assert result.exit_code == 2 and reason in result.output
    listed = CliRunner().invoke(main, ["--workdir", str(tmp_path), "runs", "list", "--json"])
    [run] = json.loads(listed.output)
    assert run["status"] == "failed" and reason in run["reason"]
    shown = json.loads(CliRunner().invoke(main, ["--workdir", str(tmp_path), "runs", "show", run["id"],
                                                 "--json"]).output)
    assert shown["status"] == "failed" and reason in shown["reason"]


@pytest.mark.slow
def test_a_killed_process_shows_as_interrupted_and_resume_continues_it(tmp_path, tiny_data_root):
    command = [sys.executable, "-m", "dcase_t6", "--workdir", str(tmp_path), "train", "--datasets", "synthetic",
               "--data-root", str(tiny_data_root), "--backbone", "tiny-cnn", "--text-model", "tiny-random",
               "--embed-dim", "8", "--epochs", "200", "--batch-size", "8", "--audio-seconds", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    registry = Registry(tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the first epoch (and its last checkpoint) to be recorded
        runs = registry.runs()
        if runs and registry.run(runs[0].id).epochs:
            break
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the training process recorded no epoch within 120 s")
    assert registry.runs()[0].status == "running"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    [run] = registry.runs()
    assert run.status == "interrupted"

    step = registry.file(run.id, "checkpoint", "last").info["step"]
    result = CliRunner().invoke(main, ["--workdir", str(tmp_path), "train", "--resume", run.id[:8],
                                       "--max-steps", str(step + 8), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "stopped" and summary["step"] == step + 8
    assert registry.run(run.id).status == "stopped"


def test_a_run_without_a_checkpoint_resumes_from_the_start(tmp_path, tiny_data_root):
    failed = _train(tmp_path, tiny_data_root, "--text-model", "/nonexistent/text-model")
    assert failed.exit_code == 2
    [run] = Registry(tmp_path).runs()
    # the same run, now with a text model that loads (as a user would after fixing a folder)
    registry = Registry(tmp_path)
    with sqlite3.connect(registry.path) as connection:  # as another process would write it
        config = {**run.config, "model": {**run.config["model"], "text_model": "tiny-random"}}
        connection.execute("UPDATE runs SET config = ? WHERE id = ?", (json.dumps(config), run.id))
    resumed = CliRunner().invoke(main, ["--workdir", str(tmp_path), "train", "--resume", run.id, "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert registry.run(run.id).status == "finished" and registry.run(run.id).reason is None


def test_silent_runs_on_other_hosts_are_interrupted_and_live_ones_cannot_be_claimed(tmp_path):
    registry = Registry(tmp_path)
    run_id = registry.create_run("elsewhere", {}, None, 0)
    now = time.time()
    with sqlite3.connect(registry.path) as connection:
        connection.execute("UPDATE runs SET host = 'another-host', pid = 1, heartbeat = ? WHERE id = ?",
                           (now - 10, run_id))
    assert registry.run(run_id).status == "running"
    with pytest.raises(UserError, match="being trained right now by process 1 on another-host"):
        registry.claim(run_id)
    with sqlite3.connect(registry.path) as connection:
        connection.execute("UPDATE runs SET heartbeat = ? WHERE id = ?",
                           (now - leases.STALE_SECONDS - 1, run_id))
    assert registry.run(run_id).status == "interrupted"
    heartbeat = registry.claim(run_id)  # a silent run can be taken over
    heartbeat.stop()
    assert registry.run(run_id).status == "running"
