"""Running ``dcase-t6`` in a test: in process or as a real process, and the one-line refusals it must give."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from dcase_t6.cli import main


def run_dcase(*args):
    """``dcase-t6 ARGS...`` in process (arguments made text); an exception it raises reaches the test."""
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def run_dcase_process(workdir, *arguments: str, processes: int = 0) -> subprocess.CompletedProcess:
    """``dcase-t6 --workdir WORKDIR ARGUMENTS...`` as a real process (one OpenMP thread), or under torchrun with
    ``processes`` processes; its output captured."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
                 str(free_port()), "-m", "dcase_t6"] if processes else [sys.executable, "-m", "dcase_t6"])
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, "--workdir", str(workdir), *arguments], capture_output=True, text=True,
                          timeout=900, env=environment)


def cli(workdir: Path, *args) -> dict | str:
    """``dcase-t6 --workdir WORKDIR ARGS...`` in process; it must succeed. Its parsed JSON with ``--json``, else
    its output."""
    result = CliRunner().invoke(main, ["--workdir", str(workdir), *[str(arg) for arg in args]])
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def cli_error(workdir: Path, *args) -> str:
    """Run ``dcase-t6 --workdir WORKDIR ARGS...``; it must exit 2 with one ``error:`` line, which is returned."""
    result = CliRunner().invoke(main, ["--workdir", str(workdir), *[str(arg) for arg in args]])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def refused(result, *fragments: str) -> str:
    """Exit 2 through SystemExit, one ``error:`` line holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for torch.distributed rendezvous in tests)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
