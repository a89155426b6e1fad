"""The checkpoint registry: one SQLite database under the work directory, shared by all commands.

It records every training run (config, data fingerprint, code version, seed, per-epoch metrics,
status with the reason of a failure, and the host, process id and heartbeat of the process training
it), its checkpoints with SHA-256 hashes, and every embedding or similarity file with the run it
came from. Writes are short transactions in WAL mode, so several processes can write at once; a
checkpoint or artefact whose hash no longer matches is refused. A ``running`` run whose process is
gone (same host, process id no longer alive) or silent (no heartbeat for ``STALE_SECONDS``) is
reported as ``interrupted``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

from dcase_t6 import __version__
from dcase_t6.common.errors import UserError

DATABASE_NAME = "registry.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL,
    config TEXT NOT NULL, data_fingerprint TEXT, code_version TEXT, seed INTEGER, directory TEXT);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL, PRIMARY KEY (run_id, epoch));
CREATE TABLE IF NOT EXISTS files (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, kind TEXT NOT NULL, tag TEXT NOT NULL,
    path TEXT NOT NULL, sha256 TEXT NOT NULL, info TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (run_id, kind, tag));
"""
# Columns added after the first schema; an older database gets them on open.
_ADDED_COLUMNS = {"runs": {"reason": "TEXT", "host": "TEXT", "pid": "INTEGER", "heartbeat": "REAL"}}
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0


@dataclass(frozen=True)
class RegisteredFile:
    """A file the registry vouches for: checkpoint (tag best/last), embeddings or similarity (tag = split)."""

    run_id: str
    kind: str
    tag: str
    path: Path
    sha256: str
    info: dict

    def problem(self) -> str | None:
        """Why the file on disk is not the one registered (missing, or another SHA-256), or None when it is."""
        if not self.path.is_file():
            return (f"{self.path}: {self.kind} '{self.tag}' of run {self.run_id} is missing on disk; "
                    "restore it or re-create it (train/embed)")
        if sha256_of(self.path) != self.sha256:
            return (f"{self.path}: SHA-256 no longer matches what run {self.run_id} registered; "
                    "the file was changed or corrupted: restore it or re-create it (train/embed)")
        return None

    def as_json(self) -> dict:
        """As ``runs show --json`` lists it: kind, tag, path, sha256 and the info fields."""
        return {"kind": self.kind, "tag": self.tag, "path": str(self.path), "sha256": self.sha256, **self.info}


@dataclass(frozen=True)
class Run:
    """A registered run. ``status`` is the effective one (see :func:`effective_status`); ``epochs`` (each epoch's
    metrics) and ``files`` are loaded by :meth:`Registry.run` and are None in the list of :meth:`Registry.runs`."""

    id: str
    name: str
    status: str
    created: str
    config: dict
    data_fingerprint: str | None
    code_version: str | None
    seed: int | None
    directory: str | None
    reason: str | None
    host: str | None
    pid: int | None
    heartbeat: float | None
    epochs: list[dict] | None = None
    files: list[RegisteredFile] | None = None

    def as_json(self) -> dict:
        """The run as ``runs show --json`` prints it (without ``epochs`` and ``files`` when not loaded)."""
        out = {item.name: getattr(self, item.name) for item in fields(self)}
        for key in ("epochs", "files"):
            if out[key] is None:
                del out[key]
        if self.files is not None:
            out["files"] = [record.as_json() for record in self.files]
        return out


def sha256_of(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_version() -> str:
    """Package version plus the git commit (and '-dirty') when running from a checkout."""
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                   cwd=Path(__file__).parent, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{described}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Registry:
    """Runs, epochs and files of one work directory."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / DATABASE_NAME
        self._initialise()

    def _initialise(self, attempts: int = 600) -> None:
        """Switch the database to WAL (persistent) and create the tables; retried while another process does."""
        for attempt in range(attempts):
            connection = self._open()
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(_SCHEMA)
                _add_columns(connection)
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or attempt == attempts - 1:
                    raise
                time.sleep(0.1)
            finally:
                connection.close()

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        connection.execute("PRAGMA foreign_keys=ON")
        connection.row_factory = sqlite3.Row
        return connection

    def _connect(self) -> "_Transactional":
        return _Transactional(self._open())

    def create_run(self, name: str, config: dict, data_fingerprint: str | None, seed: int | None) -> str:
        """Register a new run and return its id (``<name>-<6 hex>``)."""
        run_id = f"{name}-{secrets.token_hex(3)}"
        directory = self.workdir / "runs" / run_id
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO runs (id, name, status, created, config, data_fingerprint, code_version, seed, directory,"
                " host, pid, heartbeat) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, name, _now(), json.dumps(config, sort_keys=True), data_fingerprint, code_version(),
                 seed, str(directory), socket.gethostname(), os.getpid(), time.time()))
        directory.mkdir(parents=True, exist_ok=True)
        return run_id

    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Set a run's status and the reason for it (cleared when None)."""
        with self._connect() as connection:
            connection.execute("UPDATE runs SET status = ?, reason = ? WHERE id = ?", (status, reason, run_id))

    def claim(self, run_id: str) -> "Heartbeat":
        """Mark a run ``running`` in this process (host, process id) and start beating its heartbeat; refused
        while another live process trains it."""
        host, pid = socket.gethostname(), os.getpid()
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            live = row is not None and _run_from_row(row).status == "running"
            if live and (row["host"], row["pid"]) != (host, pid):
                raise UserError(f"run {run_id} is being trained right now by process {row['pid']} on {row['host']}; "
                                "wait for it, or stop that process and then resume")
            connection.execute("UPDATE runs SET status = 'running', reason = NULL, host = ?, pid = ?, heartbeat = ? "
                               "WHERE id = ?", (host, pid, time.time(), run_id))
        return Heartbeat(self, run_id)

    def beat(self, run_id: str) -> None:
        with self._connect() as connection:
            connection.execute("UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time(), run_id))

    def set_fingerprint(self, run_id: str, fingerprint: str) -> None:
        """Record the fingerprint of the data a run trains on."""
        with self._connect() as connection:
            connection.execute("UPDATE runs SET data_fingerprint = ? WHERE id = ?", (fingerprint, run_id))

    def log_epoch(self, run_id: str, epoch: int, metrics: dict) -> None:
        """Record (or replace, after a resume) the metrics of one epoch."""
        with self._connect() as connection:
            connection.execute("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?)", (run_id, epoch, json.dumps(metrics)))

    def add_file(self, run_id: str, kind: str, tag: str, path: str | Path, info: dict | None = None) -> RegisteredFile:
        """Register a file (hashing it now); replaces an earlier file of the same run, kind and tag."""
        path = Path(path).resolve()
        record = RegisteredFile(run_id, kind, tag, path, sha256_of(path), info or {})
        with self._connect() as connection:
            connection.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (run_id, kind, tag, str(path), record.sha256, json.dumps(record.info), _now()))
        return record

    def has_file(self, reference: str, kind: str, tag: str) -> bool:
        """Whether the run (id or unique prefix; a UserError if none or several match) registered a file of that
        kind and tag (intact or not: :meth:`file` checks that)."""
        run_id = self.resolve(reference)
        with self._connect() as connection:
            row = connection.execute("SELECT 1 FROM files WHERE run_id = ? AND kind = ? AND tag = ?",
                                     (run_id, kind, tag)).fetchone()
        return row is not None

    def file(self, run_id: str, kind: str, tag: str, verify: bool = True) -> RegisteredFile:
        """A registered file, its hash checked against the file on disk unless ``verify`` is False."""
        run_id = self.resolve(run_id)
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM files WHERE run_id = ? AND kind = ? AND tag = ?",
                                     (run_id, kind, tag)).fetchone()
        if row is None:
            raise UserError(f"run {run_id} has no {kind} '{tag}' in {self.path}; "
                            f"see `dcase-t6 runs show {run_id}` for what it has")
        record = _file_from_row(row)
        if verify:
            _verify(record)
        return record

    def parameter_count(self, reference: str) -> int:
        """The model size of a run, as recorded with its best checkpoint."""
        record = self.file(reference, "checkpoint", "best", verify=False)
        if "parameters" not in record.info:
            raise UserError(f"run {record.run_id} recorded no parameter count with its best checkpoint; "
                            "fill system.complexity.total_parameters by hand")
        return int(record.info["parameters"])

    def resolve(self, reference: str) -> str:
        """The full id of the run whose id equals or uniquely starts with ``reference``; a UserError otherwise."""
        run_id = self._match(reference)
        if run_id is None:
            raise UserError(f"{self.path}: no run match '{reference}'; list runs with `dcase-t6 runs list`")
        return run_id

    def find(self, reference: str) -> Run | None:
        """The run (with epochs and files) whose id equals or uniquely starts with ``reference``; None when no run
        matches, and a UserError when several do."""
        run_id = self._match(reference)
        return None if run_id is None else self.run(run_id)

    def _match(self, reference: str) -> str | None:
        """The id ``reference`` names, None if it names no run; a UserError if it is a prefix of several."""
        with self._connect() as connection:
            ids = [row["id"] for row in connection.execute(
                "SELECT id FROM runs WHERE id = ? OR id LIKE ? ESCAPE '\\' ORDER BY id",
                (reference, _like_prefix(reference)))]
        if reference in ids:
            return reference
        if len(ids) > 1:
            raise UserError(f"{self.path}: {len(ids)} runs ({', '.join(ids[:5])}) match '{reference}'; "
                            "list runs with `dcase-t6 runs list`")
        return ids[0] if ids else None

    def runs(self) -> list[Run]:
        """All runs, newest first, with their best validation metric when known."""
        with self._connect() as connection:
            rows = connection.execute("SELECT * FROM runs ORDER BY created DESC, id").fetchall()
        return [_run_from_row(row) for row in rows]

    def run(self, reference: str) -> Run:
        """One run with its epochs and files."""
        run_id = self.resolve(reference)
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            epochs = [{"epoch": row["epoch"], **json.loads(row["metrics"])} for row in connection.execute(
                "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))]
            files = [_file_from_row(row) for row in connection.execute(
                "SELECT * FROM files WHERE run_id = ? ORDER BY kind, tag", (run_id,))]
        return _run_from_row(row, epochs, files)

    def remove(self, reference: str, delete_files: bool = False) -> str:
        """Forget a run (and, with ``delete_files``, delete its registered files)."""
        run = self.run(reference)
        with self._connect() as connection:
            connection.execute("DELETE FROM runs WHERE id = ?", (run.id,))
        if delete_files:
            for record in run.files:
                record.path.unlink(missing_ok=True)
        return run.id


class Heartbeat:
    """Writes a run's heartbeat every ``HEARTBEAT_SECONDS`` from a daemon thread until ``stop``."""

    def __init__(self, registry: Registry, run_id: str):
        self._registry, self._run_id, self._stopped = registry, run_id, threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {run_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(HEARTBEAT_SECONDS):
            try:
                self._registry.beat(self._run_id)
            except sqlite3.Error:
                pass  # a busy or briefly unavailable database: the next beat tries again

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _add_columns(connection: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in present:
                try:
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError as err:
                    if "duplicate column" not in str(err):  # another process added it just now
                        raise


def _process_gone(host: str | None, pid: int | None) -> bool:
    """True when ``pid`` on this host no longer exists (unknown for other hosts: False)."""
    if host != socket.gethostname() or not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def effective_status(run: dict, now: float | None = None) -> str:
    """A run's stored status (``run`` is its database row as a dict), except that a ``running`` run whose process
    is gone or silent is ``interrupted``."""
    if run["status"] != "running":
        return run["status"]
    silent = run.get("heartbeat") is not None and (now or time.time()) - run["heartbeat"] > STALE_SECONDS
    return "interrupted" if silent or _process_gone(run.get("host"), run.get("pid")) else "running"


class _Transactional:
    """A connection whose ``with`` block is one IMMEDIATE transaction and which closes afterwards."""

    def __init__(self, connection: sqlite3.Connection):
        self._connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self._connection.execute("BEGIN IMMEDIATE")
        return self._connection

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self._connection.execute("ROLLBACK" if kind else "COMMIT")
        finally:
            self._connection.close()


def _like_prefix(reference: str) -> str:
    escaped = reference.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _run_from_row(row: sqlite3.Row, epochs: list[dict] | None = None,
                  files: list[RegisteredFile] | None = None) -> Run:
    stored = dict(row)
    values = {item.name: stored.get(item.name) for item in fields(Run) if item.name not in ("epochs", "files")}
    return Run(**{**values, "config": json.loads(stored["config"]), "status": effective_status(stored)},
               epochs=epochs, files=files)


def _file_from_row(row: sqlite3.Row) -> RegisteredFile:
    return RegisteredFile(row["run_id"], row["kind"], row["tag"], Path(row["path"]), row["sha256"],
                          json.loads(row["info"]))


def _verify(record: RegisteredFile) -> None:
    problem = record.problem()
    if problem is not None:
        raise UserError(problem)


def resolve_matrix(reference: str, workdir: str | Path) -> str:
    """A similarity-matrix argument as a path: ``RUN:DATASET/SPLIT`` is looked up in the registry,
    anything else (an existing file, or a missing one that the reader will report) is returned as is."""
    run, separator, tag = reference.partition(":")
    if Path(reference).exists() or not separator:
        return reference
    if not (Path(workdir) / DATABASE_NAME).is_file():
        raise UserError(f"{reference}: no such file, and no run registry in {workdir} to look up RUN:DATASET/SPLIT; "
                        "pass --workdir or a matrix file (.csv/.npz)")
    return str(Registry(workdir).file(run, "similarity", tag).path)
