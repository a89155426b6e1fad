"""Who is using a run: the heartbeat a training or embedding process beats while it works, and the rule that decides
whether that process is alive (same host: its pid runs and is no zombie; any host: a heartbeat within
``STALE_SECONDS``). ``runs rm`` refuses a run in use; a ``running`` run whose process is gone is ``interrupted``."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Iterator

from dcase_t6.common.atomic import process_alive
from dcase_t6.common.errors import UserError
from dcase_t6.runs.records import require_run, write_run_record

if TYPE_CHECKING:  # for annotations only: the registry imports this module
    from dcase_t6.runs.registry import Registry


HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0


class Heartbeat:
    """Writes a run's heartbeat every ``HEARTBEAT_SECONDS`` from a daemon thread until ``stop``."""

    def __init__(self, registry: Registry, run_id: str, lease: str | None = None):
        self._registry, self._run_id, self._lease, self._stopped = registry, run_id, lease, threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_SECONDS):
            try:
                if self._lease is None:
                    self._registry.beat(self._run_id)
                else:
                    self._registry.beat_lease(self._lease)
            except (sqlite3.Error, UserError):
                pass  # a busy, briefly unavailable or damaged database: the next write of the run says so

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def process_gone(host: str | None, pid: int | None) -> bool:
    """True when ``pid`` on this host no longer runs (a zombie counts as gone: the one rule, ``process_alive``);
    unknown for other hosts: False."""
    if host != socket.gethostname() or not pid:
        return False
    return not process_alive(pid)


def effective_status(run: dict, now: float | None = None) -> str:
    """A run's stored status (``run`` is its database row as a dict), except that a ``running`` run whose process
    is gone or silent is ``interrupted``."""
    if run["status"] != "running":
        return run["status"]
    return "running" if alive(run.get("host"), run.get("pid"), run.get("heartbeat"), now) else "interrupted"


def alive(host: str | None, pid: int | None, heartbeat: float | None, now: float | None = None) -> bool:
    """Whether a process that beats a heartbeat is alive: not silent for ``STALE_SECONDS``, not gone."""
    silent = heartbeat is not None and (now or time.time()) - heartbeat > STALE_SECONDS
    return not silent and not process_gone(host, pid)


def live_user(connection: sqlite3.Connection, row: sqlite3.Row) -> str | None:
    """Which other live process is using a run right now (``train``, or a lease such as ``embed``), as words; None
    when none is."""
    myself = (socket.gethostname(), os.getpid())
    if effective_status(dict(row)) == "running" and (row["host"], row["pid"]) != myself:
        return f"`train` by process {row['pid']} on {row['host']}"
    for lease in connection.execute("SELECT * FROM leases WHERE run_id = ? ORDER BY heartbeat DESC", (row["id"],)):
        if alive(lease["host"], lease["pid"], lease["heartbeat"]) and (lease["host"], lease["pid"]) != myself:
            return f"`{lease['command']}` by process {lease['pid']} on {lease['host']}"
    return None


class RunLeases:
    """The registry's part that records who uses a run: ``claim`` (training: the run's own heartbeat) and
    ``using`` (a lease, e.g. ``embed``), each kept alive by a :class:`Heartbeat`. Mixed into ``Registry``."""

    def claim(self, run_id: str) -> "Heartbeat":
        """Mark a run ``running`` in this process (host, process id) and start beating its heartbeat; refused
        while another live process trains it."""
        host, pid = socket.gethostname(), os.getpid()
        with self._connect() as connection:
            row = require_run(connection, self.path, run_id)
            live = effective_status(dict(row)) == "running"
            if live and (row["host"], row["pid"]) != (host, pid):
                raise UserError(f"run {run_id} is being trained right now by process {row['pid']} on {row['host']}; "
                                "wait for it, or stop that process and then resume")
            connection.execute("UPDATE runs SET status = 'running', reason = NULL, host = ?, pid = ?, heartbeat = ? "
                               "WHERE id = ?", (host, pid, time.time(), run_id))
            write_run_record(connection, self.layout, run_id)
        return Heartbeat(self, run_id)

    def beat(self, run_id: str) -> None:
        with self._connect() as connection:
            connection.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time(), run_id))

    @contextlib.contextmanager
    def using(self, reference: str, command: str) -> Iterator[str]:
        """Hold an "in use" lease on a run (id or unique prefix) for the block, with a heartbeat, so that
        ``rm`` refuses it meanwhile; yields the run's full id."""
        run_id, lease = self.resolve(reference), secrets.token_hex(8)
        with self._connect() as connection:
            require_run(connection, self.path, run_id)
            connection.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?)",
                               (lease, run_id, command, socket.gethostname(), os.getpid(), time.time()))
        heartbeat = Heartbeat(self, run_id, lease=lease)
        try:
            yield run_id
        finally:
            heartbeat.stop()
            with self._connect() as connection:
                connection.execute("DELETE FROM leases WHERE id = ?", (lease,))

    def beat_lease(self, lease: str) -> None:
        with self._connect() as connection:
            connection.execute("UPDATE leases SET heartbeat = ? WHERE id = ?", (time.time(), lease))
