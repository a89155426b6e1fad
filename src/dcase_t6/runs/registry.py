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

import json
import os
import secrets
import shutil
import socket
import sqlite3
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.outputs import NAME_LIMIT, check_name
from dcase_t6.runs.database import Database
from dcase_t6.runs.layout import RECORD_NAME, REMOVED_RECORD_NAME, WorkLayout
from dcase_t6.runs.leases import RunLeases, effective_status, live_user
from dcase_t6.runs.records import (
    RegisteredFile,
    Run,
    code_version,
    file_from_row,
    now,
    require_run,
    sha256_of,
    verify_file,
    write_missing_records,
    write_run_record,
)


@dataclass(frozen=True)
class ImportedRun:
    """A run trained elsewhere, as its exported folder records it (``runs import``).

    Args:
        preferred_id: the id it had where it was trained; kept unless a run here already has it.
        name: the run's name.
        config: its training config.
        data_fingerprint: the fingerprint of the data it was trained on (None: unknown).
        seed: its seed.
        code_version: the dcase-t6 version that trained it.
        epochs: its epoch records (each with an ``epoch`` key, 0-based, and the metrics).
    """

    preferred_id: str
    name: str
    config: dict
    data_fingerprint: str | None = None
    seed: int | None = None
    code_version: str | None = None
    epochs: list[dict] = field(default_factory=list)


class Registry(Database, RunLeases):
    """Runs, epochs and files of one work directory (the connection: ``Database``; who uses a run: ``RunLeases``)."""

    def __init__(self, workdir: str | Path):
        super().__init__(workdir)
        write_missing_records(self)

    def create_run(self, name: str, config: dict, data_fingerprint: str | None, seed: int | None) -> str:
        """Register a new run and return its id (``<name>-<6 hex>``); a UserError for a name that is not one safe
        folder name (see ``dcase_t6.common.outputs.check_name``)."""
        run_id = f"{check_name(name, 'run name')}-{secrets.token_hex(3)}"
        directory = self.layout.run(run_id)
        existed = os.path.lexists(directory)
        try:
            with self._connect() as connection:
                connection.execute(
                    "INSERT INTO runs (id, name, status, created, config, data_fingerprint, code_version, seed, "
                    "directory, host, pid, heartbeat) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, name, now(), json.dumps(config, sort_keys=True), data_fingerprint, code_version(),
                     seed, str(directory), socket.gethostname(), os.getpid(), time.time()))
                write_run_record(connection, self.layout, run_id)
        except BaseException:  # not registered: no half-made run folder either
            if not existed:  # made just now for this new id: nothing else is in it
                shutil.rmtree(directory, ignore_errors=True)
            raise
        return run_id

    def import_run(self, imported: ImportedRun) -> str:
        """Register a run trained elsewhere (``runs import``) with status ``imported`` and its per-epoch metrics.

        Args:
            imported: the run as exported; it keeps its ``preferred_id`` unless a run here already has it, then
                the new id is ``<name>-<6 hex>``.

        Returns:
            The run's id here.
        """
        name = imported.name
        check_name(name, "run name")
        check_name(imported.preferred_id, "run id", limit=NAME_LIMIT + 7)  # NAME-<6 hex>
        with self._connect() as connection:
            run_id = imported.preferred_id
            while connection.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                run_id = f"{name}-{secrets.token_hex(3)}"
            connection.execute(
                "INSERT INTO runs (id, name, status, created, config, data_fingerprint, code_version, seed, directory)"
                " VALUES (?, ?, 'imported', ?, ?, ?, ?, ?, ?)",
                (run_id, name, now(), json.dumps(imported.config, sort_keys=True), imported.data_fingerprint,
                 imported.code_version, imported.seed, str(self.layout.run(run_id))))
            connection.executemany("INSERT INTO epochs VALUES (?, ?, ?)", [
                (run_id, int(epoch["epoch"]), json.dumps({k: v for k, v in epoch.items() if k != "epoch"}))
                for epoch in imported.epochs])
            write_run_record(connection, self.layout, run_id)
        return run_id

    def set_status(self, run_id: str, status: str, reason: str | None = None, write_record: bool = True) -> None:
        """Set a run's status and the reason for it (cleared when None); ``write_record`` False leaves its
        ``run.json`` as it is (a run that failed on a full disk, where no file can be written)."""
        with self._connect() as connection:
            require_run(connection, self.path, run_id)
            connection.execute("UPDATE runs SET status = ?, reason = ? WHERE id = ?", (status, reason, run_id))
            if write_record:
                write_run_record(connection, self.layout, run_id)

    def set_fingerprint(self, run_id: str, fingerprint: str) -> None:
        """Record the fingerprint of the data a run trains on."""
        with self._connect() as connection:
            require_run(connection, self.path, run_id)
            connection.execute("UPDATE runs SET data_fingerprint = ? WHERE id = ?", (fingerprint, run_id))
            write_run_record(connection, self.layout, run_id)

    def log_epoch(self, run_id: str, epoch: int, metrics: dict) -> None:
        """Record (or replace, after a resume) the metrics of one epoch."""
        with self._connect() as connection:
            require_run(connection, self.path, run_id)
            connection.execute("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?)", (run_id, epoch, json.dumps(metrics)))
            write_run_record(connection, self.layout, run_id)

    def add_file(self, run_id: str, kind: str, tag: str, path: str | Path, info: dict | None = None) -> RegisteredFile:
        """Register a file (hashing it now); replaces an earlier file of the same run, kind and tag."""
        path = Path(path).resolve()
        record = RegisteredFile(run_id, kind, tag, path, sha256_of(path), info or {})
        with self._connect() as connection:
            require_run(connection, self.path, run_id)
            connection.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (run_id, kind, tag, str(path), record.sha256, json.dumps(record.info), now()))
            write_run_record(connection, self.layout, run_id)
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
        record = file_from_row(row)
        if verify:
            verify_file(record)
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
        return [run_from_row(row) for row in rows]

    def run(self, reference: str) -> Run:
        """One run with its epochs and files."""
        run_id = self.resolve(reference)
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            epochs = [{"epoch": row["epoch"], **json.loads(row["metrics"])} for row in connection.execute(
                "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))]
            files = [file_from_row(row) for row in connection.execute(
                "SELECT * FROM files WHERE run_id = ? ORDER BY kind, tag", (run_id,))]
        return run_from_row(row, epochs, files)

    def remove(self, reference: str, delete_files: bool = False) -> str:
        """Forget a run (and, with ``delete_files``, delete its registered files and its record); refused while a
        live process uses it. Without ``delete_files`` its record is kept as ``run.removed.json``, which
        ``rebuild`` leaves out."""
        run_id = self.resolve(reference)
        folder = self.layout.run(run_id)
        with self._connect() as connection:
            row = require_run(connection, self.path, run_id)
            user = live_user(connection, row)
            if user is not None:
                raise UserError(f"run {run_id} is in use right now: {user}; wait for it to end (or stop that "
                                f"process), then `dcase-t6 runs rm {run_id}` again")
            files = [file_from_row(item) for item in connection.execute(
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


def _like_prefix(reference: str) -> str:
    escaped = reference.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def resolve_matrix(reference: str, workdir: str | Path, kind: str = "similarity") -> str:
    """A similarity-matrix argument as a path: ``RUN:DATASET/SPLIT`` is looked up in the registry (its file of
    ``kind``: ``similarity``, or ``bank`` for a QB-Norm bank), anything else (an existing file, or a missing one
    that the reader will report) is returned as is."""
    run, separator, tag = reference.partition(":")
    if Path(reference).exists() or not separator:
        return reference
    if not WorkLayout.at(workdir).database.is_file():
        raise UserError(f"{reference}: no such file, and no run registry in {workdir} to look up RUN:DATASET/SPLIT; "
                        "pass --workdir or a matrix file (.csv/.npz)")
    return str(Registry(workdir).file(run, kind, tag).path)


def run_from_row(row: sqlite3.Row, epochs: list[dict] | None = None,
                  files: list[RegisteredFile] | None = None) -> Run:
    stored = dict(row)
    values = {item.name: stored.get(item.name) for item in fields(Run) if item.name not in ("epochs", "files")}
    return Run(**{**values, "config": json.loads(stored["config"]), "status": effective_status(stored)},
               epochs=epochs, files=files)
