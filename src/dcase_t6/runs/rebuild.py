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
from dcase_t6.runs.records import RegisteredFile, now
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
                           (run_id, kind, tag, str(path.resolve()), sha256, json.dumps(info), created or now()))
    return RecoveredRun(run_id, folder, len(epochs), len(files), problems)
