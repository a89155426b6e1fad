"""`runs rebuild`: recreate a damaged or lost registry from the records in the run folders (``runs/<id>/run.json``),
keeping the old file beside it."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.runs.database import SCHEMA, add_columns, registered_runs, run_folders
from dcase_t6.runs.layout import DATABASE_NAME, RECORD_NAME, WorkLayout
from dcase_t6.runs.record_reader import read_record
from dcase_t6.runs.records import now
from dcase_t6.runs.registry import Registry


@dataclass
class RecoveredRun:
    """A run registered again from its folder: its epochs and files, and the files missing or changed since."""

    id: str
    folder: Path
    epochs: int
    files: int
    problems: list[str]
    status: str = ""  # the effective status, read back from the rebuilt registry

    def as_json(self) -> dict:
        return {"id": self.id, "folder": str(self.folder), "epochs": self.epochs, "files": self.files,
                "problems": self.problems, "status": self.status}


@dataclass(frozen=True)
class SkippedFolder:
    """A run folder that could not be registered, and why (one line with the fix)."""

    folder: Path
    reason: str


@dataclass(frozen=True)
class RebuildOutcome:
    """The rebuilt registry, where the previous file went (None: there was none), what was recovered, skipped."""

    registry: Path
    previous: Path | None
    runs: list[RecoveredRun]
    skipped: list[SkippedFolder]

    def as_json(self) -> dict:
        """What ``runs rebuild --json`` prints."""
        return {"registry": str(self.registry), "previous": str(self.previous) if self.previous else None,
                "runs": [run.as_json() for run in self.runs],
                "skipped": [{"folder": str(item.folder), "reason": item.reason} for item in self.skipped]}


def rebuild(workdir: str | Path, force: bool = False) -> RebuildOutcome:
    """Recreate the registry from the run folders' ``run.json`` records, re-hashing every recorded file.

    A damaged, empty or missing registry is replaced (a damaged one is kept as ``registry.sqlite.damaged-<time>``);
    an intact one holding runs only with ``force`` (kept as ``registry.sqlite.replaced-<time>``). The new registry
    is written to a temporary file and renamed into place.

    Args:
        workdir: the work directory.
        force: replace an intact registry too.

    Returns:
        The new registry, where the old file was moved (or None), each recovered run (epochs, files, and the
        files missing or changed since they were registered) and each folder skipped with why.
    """
    workdir = Path(workdir)
    path = WorkLayout.at(workdir).database
    registered = registered_runs(path)
    if registered and not force:
        raise UserError(f"{path} is intact and holds {registered} run(s); `dcase-t6 --workdir {workdir} runs "
                        "rebuild --force` replaces it with one rebuilt from the run folders (the current one is kept "
                        f"as {DATABASE_NAME}.replaced-<time>)")
    temporary = workdir / f".{DATABASE_NAME}.rebuild-{secrets.token_hex(4)}.tmp"
    recovered, skipped = [], []
    connection = sqlite3.connect(temporary, isolation_level=None)
    try:
        connection.executescript(SCHEMA)
        add_columns(connection)
        connection.execute("BEGIN")
        for folder in run_folders(workdir):
            try:
                recovered.append(_insert_record(connection, folder, {run.id for run in recovered}))
            except UserError as err:
                skipped.append(SkippedFolder(folder, str(err)))
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
        run.status = registry.run(run.id).status
    return RebuildOutcome(path, previous, recovered, skipped)


def _insert_record(connection: sqlite3.Connection, folder: Path, seen: set[str]) -> RecoveredRun:
    """Register the run recorded in ``folder/run.json`` (rows as they were, files re-hashed and their problems
    listed); a UserError saying why the folder cannot be registered."""
    recorded = read_record(folder)
    run = recorded.run
    if run.id in seen:
        raise UserError(f"{folder / RECORD_NAME}: run {run.id} is already recorded in another folder")
    connection.execute("INSERT INTO runs (id, name, status, created, config, data_fingerprint, code_version, seed, "
                       "directory, reason, host, pid, heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (run.id, run.name, run.status, run.created, json.dumps(run.config, sort_keys=True),
                        run.data_fingerprint, run.code_version, run.seed, str(folder), run.reason, run.host, run.pid,
                        run.heartbeat))
    epochs = recorded.epoch_metrics
    connection.executemany("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?)",
                           [(run.id, number, json.dumps(metrics)) for number, metrics in epochs])
    problems = []
    for record, created in zip(run.files or [], recorded.file_times):
        problem = record.problem()
        if problem is not None:
            problems.append(problem)
        connection.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (run.id, record.kind, record.tag, str(record.path), record.sha256, json.dumps(record.info),
                            created or now()))
    return RecoveredRun(run.id, folder, len(epochs), len(run.files or []), problems)
