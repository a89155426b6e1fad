"""The checkpoint registry: one SQLite database under the work directory, shared by all commands.

It records every training run (config, data fingerprint, code version, seed, per-epoch metrics,
status with the reason of a failure, and the host, process id and heartbeat of the process training
it), its checkpoints with SHA-256 hashes, and every embedding or similarity file with the run it
came from. Writes are short transactions in WAL mode, so several processes can write at once; a
checkpoint or artefact whose hash no longer matches is refused. A ``running`` run whose process is
gone (same host, process id no longer alive) or silent (no heartbeat for ``STALE_SECONDS``) is
reported as ``interrupted``. A model exported elsewhere and registered with ``runs import`` is a run of
status ``imported`` (:meth:`Registry.import_run`), with the epochs it was exported with.

Every run folder (``runs/<id>/run.json``) holds a copy of its record (config, status, epochs, and each
registered file with its kind, tag, info and SHA-256), rewritten atomically inside the transaction that
changes it, so :func:`rebuild` can recreate a damaged or lost registry from the run folders. A damaged
registry, or a missing/empty one beside run folders, is refused with one line saying how to recover.
``rm`` refuses a run that a live process is using (``train``, or ``embed`` through :meth:`Registry.using`),
and a process whose run was removed under it stops with one line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

from dcase_t6 import __version__
from dcase_t6.common.errors import UserError, file_system_error
from dcase_t6.common.jsonfile import write_json
from dcase_t6.common.outputs import NAME_LIMIT, check_name

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
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, command TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, heartbeat REAL NOT NULL);
"""
RECORD_NAME = "run.json"  # a run's record in its folder, for `runs rebuild`
REMOVED_RECORD_NAME = "run.removed.json"  # the record of a run `runs rm` forgot (its files kept)
_RECORD_FORMAT = 1
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
        self.path = self.workdir / DATABASE_NAME
        _make_workdir(self.workdir)
        if self.path.is_dir():
            raise UserError(f"{self.path}: a folder, not the run registry (an SQLite file); move the folder away, or "
                            "use another --workdir")
        _refuse_lost_registry(self.workdir)
        self._initialise()
        self._write_missing_records()

    def _initialise(self, attempts: int = 600) -> None:
        """Switch the database to WAL (persistent), check it is intact and create the tables; retried while
        another process does. A damaged database is a UserError saying how to recover."""
        for attempt in range(attempts):
            try:
                connection = self._open()
            except sqlite3.DatabaseError as err:
                if type(err) is sqlite3.DatabaseError:
                    raise _damaged(self.path, err) from None
                raise _unusable(self.path, err) or err from None
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    found = " ".join(" ".join(problems).replace("*** in database main ***", "").split())
                    raise _damaged(self.path, found[:200])
                connection.executescript(_SCHEMA)
                _add_columns(connection)
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or attempt == attempts - 1:
                    raise _unusable(self.path, err) or err from None
                time.sleep(0.1)
            except sqlite3.DatabaseError as err:
                raise _damaged(self.path, err) from None
            finally:
                connection.close()

    def _write_missing_records(self) -> None:
        """Write the record of every run whose folder exists without one (runs registered before records)."""
        with self._connect() as connection:
            ids = [row["id"] for row in connection.execute("SELECT id FROM runs")]
        for run_id in ids:
            folder = self.workdir / "runs" / run_id
            if folder.is_dir() and not (folder / RECORD_NAME).exists():
                with self._connect() as connection:
                    if connection.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                        self._write_record(connection, run_id)

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        connection.execute("PRAGMA foreign_keys=ON")
        connection.row_factory = sqlite3.Row
        return connection

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction, committed when the block succeeds; a damaged database is a UserError."""
        try:
            connection = self._open()
            try:
                connection.execute("BEGIN IMMEDIATE")
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    with contextlib.suppress(sqlite3.OperationalError):  # a failed disk: closing discards it too
                        connection.execute("ROLLBACK")
                raise
            finally:
                connection.close()
        except sqlite3.DatabaseError as err:
            if type(err) is sqlite3.DatabaseError:  # not a database, malformed: not locked, not a constraint
                raise _damaged(self.path, err) from None
            raise _unusable(self.path, err) or err from None

    def _require_run(self, connection: sqlite3.Connection, run_id: str) -> sqlite3.Row:
        """The run's row; a UserError when it is no longer registered (removed while this process used it)."""
        row = connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise UserError(f"{self.path}: run {run_id} was removed from the registry while this process was "
                            "using it (`dcase-t6 runs rm` or a rebuild); nothing more is recorded for it: start a "
                            "new run, or restore the registry and resume it")
        return row

    def _write_record(self, connection: sqlite3.Connection, run_id: str) -> None:
        """Rewrite ``runs/<id>/run.json`` from the run's rows (inside the transaction that changed them, so the
        record of concurrent writers is never older than the database)."""
        folder = self.workdir / "runs" / run_id
        row = self._require_run(connection, run_id)
        record = {"format": _RECORD_FORMAT, **{key: row[key] for key in row.keys() if key != "directory"}}
        record["config"] = json.loads(row["config"])
        record["epochs"] = [{"epoch": epoch["epoch"], "metrics": json.loads(epoch["metrics"])} for epoch in
                            connection.execute("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))]
        record["files"] = [{"kind": item["kind"], "tag": item["tag"], "path": _relative_to(item["path"], folder),
                            "sha256": item["sha256"], "info": json.loads(item["info"]), "created": item["created"]}
                           for item in connection.execute(
                               "SELECT * FROM files WHERE run_id = ? ORDER BY kind, tag", (run_id,))]
        write_json(record, folder / RECORD_NAME)

    def create_run(self, name: str, config: dict, data_fingerprint: str | None, seed: int | None) -> str:
        """Register a new run and return its id (``<name>-<6 hex>``); a UserError for a name that is not one safe
        folder name (see ``dcase_t6.common.outputs.check_name``)."""
        run_id = f"{check_name(name, 'run name')}-{secrets.token_hex(3)}"
        directory = self.workdir / "runs" / run_id
        existed = os.path.lexists(directory)
        try:
            with self._connect() as connection:
                connection.execute(
                    "INSERT INTO runs (id, name, status, created, config, data_fingerprint, code_version, seed, "
                    "directory, host, pid, heartbeat) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, name, _now(), json.dumps(config, sort_keys=True), data_fingerprint, code_version(),
                     seed, str(directory), socket.gethostname(), os.getpid(), time.time()))
                self._write_record(connection, run_id)
        except BaseException:  # not registered: no half-made run folder either
            if not existed:  # made just now for this new id: nothing else is in it
                shutil.rmtree(directory, ignore_errors=True)
            raise
        return run_id

    def import_run(self, preferred_id: str, name: str, config: dict, data_fingerprint: str | None, seed: int | None,
                   code_version: str | None, epochs: list[dict]) -> str:
        """Register a run trained elsewhere (``runs import``) with status ``imported`` and its per-epoch metrics.

        Args:
            preferred_id: the id it had where it was trained; kept unless a run here already has it, then the
                new id is ``<name>-<6 hex>``.
            name: the run's name.
            config: its training config.
            data_fingerprint: the fingerprint of the data it was trained on (None: unknown).
            seed: its seed.
            code_version: the dcase-t6 version that trained it.
            epochs: its epoch records (each with an ``epoch`` key, 0-based, and the metrics).

        Returns:
            The run's id here.
        """
        check_name(name, "run name")
        check_name(preferred_id, "run id", limit=NAME_LIMIT + 7)  # NAME-<6 hex>
        with self._connect() as connection:
            run_id = preferred_id
            while connection.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                run_id = f"{name}-{secrets.token_hex(3)}"
            connection.execute(
                "INSERT INTO runs (id, name, status, created, config, data_fingerprint, code_version, seed, directory)"
                " VALUES (?, ?, 'imported', ?, ?, ?, ?, ?, ?)",
                (run_id, name, _now(), json.dumps(config, sort_keys=True), data_fingerprint, code_version, seed,
                 str(self.workdir / "runs" / run_id)))
            connection.executemany("INSERT INTO epochs VALUES (?, ?, ?)", [
                (run_id, int(epoch["epoch"]), json.dumps({k: v for k, v in epoch.items() if k != "epoch"}))
                for epoch in epochs])
            self._write_record(connection, run_id)
        return run_id

    def set_status(self, run_id: str, status: str, reason: str | None = None, write_record: bool = True) -> None:
        """Set a run's status and the reason for it (cleared when None); ``write_record`` False leaves its
        ``run.json`` as it is (a run that failed on a full disk, where no file can be written)."""
        with self._connect() as connection:
            self._require_run(connection, run_id)
            connection.execute("UPDATE runs SET status = ?, reason = ? WHERE id = ?", (status, reason, run_id))
            if write_record:
                self._write_record(connection, run_id)

    def claim(self, run_id: str) -> "Heartbeat":
        """Mark a run ``running`` in this process (host, process id) and start beating its heartbeat; refused
        while another live process trains it."""
        host, pid = socket.gethostname(), os.getpid()
        with self._connect() as connection:
            row = self._require_run(connection, run_id)
            live = _run_from_row(row).status == "running"
            if live and (row["host"], row["pid"]) != (host, pid):
                raise UserError(f"run {run_id} is being trained right now by process {row['pid']} on {row['host']}; "
                                "wait for it, or stop that process and then resume")
            connection.execute("UPDATE runs SET status = 'running', reason = NULL, host = ?, pid = ?, heartbeat = ? "
                               "WHERE id = ?", (host, pid, time.time(), run_id))
            self._write_record(connection, run_id)
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
            self._require_run(connection, run_id)
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

    def set_fingerprint(self, run_id: str, fingerprint: str) -> None:
        """Record the fingerprint of the data a run trains on."""
        with self._connect() as connection:
            self._require_run(connection, run_id)
            connection.execute("UPDATE runs SET data_fingerprint = ? WHERE id = ?", (fingerprint, run_id))
            self._write_record(connection, run_id)

    def log_epoch(self, run_id: str, epoch: int, metrics: dict) -> None:
        """Record (or replace, after a resume) the metrics of one epoch."""
        with self._connect() as connection:
            self._require_run(connection, run_id)
            connection.execute("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?)", (run_id, epoch, json.dumps(metrics)))
            self._write_record(connection, run_id)

    def add_file(self, run_id: str, kind: str, tag: str, path: str | Path, info: dict | None = None) -> RegisteredFile:
        """Register a file (hashing it now); replaces an earlier file of the same run, kind and tag."""
        path = Path(path).resolve()
        record = RegisteredFile(run_id, kind, tag, path, sha256_of(path), info or {})
        with self._connect() as connection:
            self._require_run(connection, run_id)
            connection.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (run_id, kind, tag, str(path), record.sha256, json.dumps(record.info), _now()))
            self._write_record(connection, run_id)
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
        """Forget a run (and, with ``delete_files``, delete its registered files and its record); refused while a
        live process uses it. Without ``delete_files`` its record is kept as ``run.removed.json``, which
        ``rebuild`` leaves out."""
        run_id = self.resolve(reference)
        folder = self.workdir / "runs" / run_id
        with self._connect() as connection:
            row = self._require_run(connection, run_id)
            user = _live_user(connection, row)
            if user is not None:
                raise UserError(f"run {run_id} is in use right now: {user}; wait for it to end (or stop that "
                                f"process), then `dcase-t6 runs rm {run_id}` again")
            files = [_file_from_row(item) for item in connection.execute(
                "SELECT * FROM files WHERE run_id = ?", (run_id,))]
            outside = [record.path for record in files if not record.path.resolve().is_relative_to(
                self.workdir.resolve())]
            if delete_files and outside:
                raise UserError(f"run {run_id}: {len(outside)} of its files lie outside {self.workdir} (first: "
                                f"{outside[0]}), e.g. in the work directory this one was copied from; nothing was "
                                "removed: run `runs rm` without --delete-files here, or from that work directory")
            connection.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            if (folder / RECORD_NAME).exists():
                if delete_files:
                    (folder / RECORD_NAME).unlink()
                else:
                    os.replace(folder / RECORD_NAME, folder / REMOVED_RECORD_NAME)
        if delete_files:
            for record in files:
                record.path.unlink(missing_ok=True)
        return run_id


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
    return "running" if _alive(run.get("host"), run.get("pid"), run.get("heartbeat"), now) else "interrupted"


def _alive(host: str | None, pid: int | None, heartbeat: float | None, now: float | None = None) -> bool:
    """Whether a process that beats a heartbeat is alive: not silent for ``STALE_SECONDS``, not gone."""
    silent = heartbeat is not None and (now or time.time()) - heartbeat > STALE_SECONDS
    return not silent and not _process_gone(host, pid)


def _live_user(connection: sqlite3.Connection, row: sqlite3.Row) -> str | None:
    """Which other live process is using a run right now (``train``, or a lease such as ``embed``), as words; None
    when none is."""
    myself = (socket.gethostname(), os.getpid())
    if effective_status(dict(row)) == "running" and (row["host"], row["pid"]) != myself:
        return f"`train` by process {row['pid']} on {row['host']}"
    for lease in connection.execute("SELECT * FROM leases WHERE run_id = ? ORDER BY heartbeat DESC", (row["id"],)):
        if _alive(lease["host"], lease["pid"], lease["heartbeat"]) and (lease["host"], lease["pid"]) != myself:
            return f"`{lease['command']}` by process {lease['pid']} on {lease['host']}"
    return None


def _make_workdir(workdir: Path) -> None:
    """Create the work directory (and its parents); a UserError naming it when it cannot be a folder."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as err:
        problem = file_system_error(err, workdir)
        if problem is None:
            raise
        raise UserError(f"--workdir {workdir}: cannot be used as the work directory: {problem}") from None


def _unusable(path: Path, err: sqlite3.Error) -> UserError | None:
    """A UserError for a registry that SQLite cannot open or write (read-only, a full disk, a folder it may not
    create its journal in); None for other errors."""
    name = getattr(err, "sqlite_errorname", "") or ""
    text = " ".join(str(err).split())
    if _read_only_disk(path.parent) and not name.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
        fix = f"{path.parent} is on a read-only file system: use a --workdir on a writable disk"
    elif name.startswith("SQLITE_READONLY") or "readonly" in text:
        fix = (f"make it and its folder {path.parent} writable for this user (chmod u+w), or use a --workdir on a "
               "writable disk")
    elif name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        fix = (f"make {path.parent} a folder this user may read and write in (SQLite also writes "
               f"{path.name}-wal and -shm there), or use another --workdir")
    elif name.startswith(("SQLITE_FULL", "SQLITE_IOERR")) or "disk is full" in text or "disk I/O" in text:
        fix = ("its disk is full, over the file-size limit (`ulimit -f`) or failing: free space there (or raise the "
               "limit) and run the command again; nothing of it was recorded")
    elif name.startswith("SQLITE_PERM"):
        fix = "make it writable for this user, or use another --workdir"
    else:
        return None
    return UserError(f"{path}: the run registry cannot be opened or written ({text}); {fix}")


def _read_only_disk(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _damaged(path: Path, problem: object) -> UserError:
    return UserError(f"{path}: the run registry is damaged ({problem}); rebuild it from the run folders with "
                     f"`dcase-t6 --workdir {path.parent} runs rebuild` (the damaged file is kept beside it), or "
                     "restore it from a backup")


def _relative_to(path: str, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it (so a moved work directory still rebuilds), else as is."""
    try:
        return Path(path).relative_to(folder.resolve()).as_posix()
    except ValueError:
        return path


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


def run_folders(workdir: str | Path) -> list[Path]:
    """The folders under ``WORKDIR/runs`` that hold a run: its ``run.json``, or (a run registered before run
    records, not removed) a checkpoint."""
    runs = Path(workdir) / "runs"
    if not runs.is_dir():
        return []
    return [folder for folder in sorted(runs.iterdir()) if folder.is_dir() and (
        (folder / RECORD_NAME).is_file() or (not (folder / REMOVED_RECORD_NAME).exists()
                                             and any((folder / name).is_file() for name in ("best.pt", "last.pt"))))]


def _refuse_lost_registry(workdir: Path) -> None:
    """A UserError when the registry is missing or empty (0 bytes) while run folders exist: creating an empty
    one would hide every run."""
    path = workdir / DATABASE_NAME
    if path.exists() and (path.is_dir() or path.stat().st_size > 0):
        return
    folders = run_folders(workdir)
    if folders:
        names = ", ".join(folder.name for folder in folders[:3]) + (", ..." if len(folders) > 3 else "")
        state = "is empty (0 bytes)" if path.exists() else "does not exist"
        raise UserError(f"{path} {state}, but {workdir / 'runs'} holds {len(folders)} run folder(s) ({names}) that "
                        f"an empty registry would hide; rebuild it from them with `dcase-t6 --workdir {workdir} runs "
                        "rebuild`, or restore registry.sqlite from a backup")


def _registered_runs(path: Path) -> int | None:
    """How many runs an intact registry holds (0 when missing or empty); None when it is damaged."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    try:
        connection = sqlite3.connect(path, timeout=60)
        try:
            if [row[0] for row in connection.execute("PRAGMA quick_check")] != ["ok"]:
                return None
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        finally:
            connection.close()
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError:
        return None


def rebuild(workdir: str | Path, force: bool = False) -> dict:
    """Recreate the registry from the run folders' ``run.json`` records, re-hashing every recorded file.

    A damaged, empty or missing registry is replaced (a damaged one is kept as ``registry.sqlite.damaged-<time>``);
    an intact one holding runs only with ``force`` (kept as ``registry.sqlite.replaced-<time>``). The new registry
    is written to a temporary file and renamed into place.

    Args:
        workdir: the work directory.
        force: replace an intact registry too.

    Returns:
        ``registry``, ``previous`` (where the old file was moved, or None), ``runs`` (per recovered run: id, status,
        epochs, files, problems: files missing or changed since they were registered) and ``skipped`` (folder,
        reason).
    """
    workdir = Path(workdir)
    path = workdir / DATABASE_NAME
    registered = _registered_runs(path)
    if registered and not force:
        raise UserError(f"{path} is intact and holds {registered} run(s); `dcase-t6 --workdir {workdir} runs "
                        "rebuild --force` replaces it with one rebuilt from the run folders (the current one is kept "
                        f"as {DATABASE_NAME}.replaced-<time>)")
    temporary = workdir / f".{DATABASE_NAME}.rebuild-{secrets.token_hex(4)}.tmp"
    recovered, skipped = [], []
    connection = sqlite3.connect(temporary, isolation_level=None)
    try:
        connection.executescript(_SCHEMA)
        _add_columns(connection)
        connection.execute("BEGIN")
        for folder in run_folders(workdir):
            try:
                recovered.append(_insert_record(connection, folder, {run["id"] for run in recovered}))
            except UserError as err:
                skipped.append({"folder": str(folder), "reason": str(err)})
        connection.execute("COMMIT")
    except BaseException:
        connection.close()
        temporary.unlink(missing_ok=True)
        raise
    connection.close()
    previous = None
    if any(Path(f"{path}{suffix}").exists() for suffix in ("", "-wal", "-shm")):
        label = "replaced" if registered else "damaged" if registered is None else "empty"
        previous = workdir / f"{DATABASE_NAME}.{label}-{dt.datetime.now().strftime('%Y%m%dT%H%M%S')}"
        for suffix in ("", "-wal", "-shm"):  # the -wal of the old file must never be replayed onto the new one
            if Path(f"{path}{suffix}").exists():
                os.replace(f"{path}{suffix}", f"{previous}{suffix}")
    os.replace(temporary, path)
    registry = Registry(workdir)
    for run in recovered:
        run["status"] = registry.run(run["id"]).status
    return {"registry": str(path), "previous": str(previous) if previous else None, "runs": recovered,
            "skipped": skipped}


def _insert_record(connection: sqlite3.Connection, folder: Path, seen: set[str]) -> dict:
    """Register the run recorded in ``folder/run.json`` (rows as they were, files re-hashed and their problems
    listed); a UserError saying why the folder cannot be registered."""
    record_path = folder / RECORD_NAME
    if not record_path.is_file():
        raise UserError(f"no {RECORD_NAME} (the run was registered by a dcase-t6 that kept no run records); "
                        "its checkpoints can still be used as files")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        run_id = record["id"]
        config = json.dumps(record["config"], sort_keys=True)
        row = (run_id, record["name"], record["status"], record["created"], config, record.get("data_fingerprint"),
               record.get("code_version"), record.get("seed"), str(folder),
               record.get("reason"), record.get("host"), record.get("pid"), record.get("heartbeat"))
        epochs = [(run_id, int(epoch["epoch"]), json.dumps(epoch["metrics"])) for epoch in record.get("epochs", [])]
        files = [(item["kind"], item["tag"], item["path"], item["sha256"], item.get("info", {}), item.get("created"))
                 for item in record.get("files", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise UserError(f"{record_path}: not a run record ({type(err).__name__}: {err}); restore it from a "
                        "backup") from None
    if run_id in seen:
        raise UserError(f"{record_path}: run {run_id} is already recorded in another folder")
    connection.execute("INSERT INTO runs (id, name, status, created, config, data_fingerprint, code_version, seed, "
                       "directory, reason, host, pid, heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    connection.executemany("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?)", epochs)
    problems = []
    for kind, tag, stored, sha256, info, created in files:
        path = (folder / stored) if not Path(stored).is_absolute() else Path(stored)
        problem = RegisteredFile(run_id, kind, tag, path.resolve(), sha256, info).problem()
        if problem is not None:
            problems.append(problem)
        connection.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (run_id, kind, tag, str(path.resolve()), sha256, json.dumps(info), created or _now()))
    return {"id": run_id, "folder": str(folder), "epochs": len(epochs), "files": len(files), "problems": problems}
