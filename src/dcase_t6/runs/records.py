"""What the registry hands out: a run (``Run``) and a registered file (``RegisteredFile``, verified by its SHA-256),
built from database rows; ``sha256_of`` and ``code_version`` stamp them."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

from dcase_t6 import __version__
from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import write_json
from dcase_t6.runs.database import Database
from dcase_t6.runs.layout import RECORD_NAME, WorkLayout

RECORD_FORMAT = 1


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


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def file_from_row(row: sqlite3.Row) -> RegisteredFile:
    return RegisteredFile(row["run_id"], row["kind"], row["tag"], Path(row["path"]), row["sha256"],
                          json.loads(row["info"]))


def verify_file(record: RegisteredFile) -> None:
    problem = record.problem()
    if problem is not None:
        raise UserError(problem)


def relative_to(path: str, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it (so a moved work directory still rebuilds), else as is."""
    try:
        return Path(path).relative_to(folder.resolve()).as_posix()
    except ValueError:
        return path


def require_run(connection: sqlite3.Connection, database: Path, run_id: str) -> sqlite3.Row:
    """The run's row; a UserError when it is no longer registered (removed while this process used it)."""
    row = connection.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise UserError(f"{database}: run {run_id} was removed from the registry while this process was "
                        "using it (`dcase-t6 runs rm` or a rebuild); nothing more is recorded for it: start a "
                        "new run, or restore the registry and resume it")
    return row


def write_run_record(connection: sqlite3.Connection, layout: WorkLayout, run_id: str) -> None:
    """Rewrite ``runs/<id>/run.json`` from the run's rows (inside the transaction that changed them, so the
    record of concurrent writers is never older than the database)."""
    folder = layout.run(run_id)
    row = require_run(connection, layout.database, run_id)
    record = {"format": RECORD_FORMAT, **{key: row[key] for key in row.keys() if key != "directory"}}
    record["config"] = json.loads(row["config"])
    record["epochs"] = [{"epoch": epoch["epoch"], "metrics": json.loads(epoch["metrics"])} for epoch in
                        connection.execute("SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))]
    record["files"] = [{"kind": item["kind"], "tag": item["tag"], "path": relative_to(item["path"], folder),
                        "sha256": item["sha256"], "info": json.loads(item["info"]), "created": item["created"]}
                       for item in connection.execute(
                           "SELECT * FROM files WHERE run_id = ? ORDER BY kind, tag", (run_id,))]
    write_json(record, folder / RECORD_NAME)


def write_missing_records(database: Database) -> None:
    """Write the record of every run whose folder exists without one (runs registered before records)."""
    with database._connect() as connection:
        ids = [row["id"] for row in connection.execute("SELECT id FROM runs")]
    for run_id in ids:
        folder = database.layout.run(run_id)
        if folder.is_dir() and not (folder / RECORD_NAME).exists():
            with database._connect() as connection:
                if connection.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                    write_run_record(connection, database.layout, run_id)
