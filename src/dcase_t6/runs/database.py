"""The registry file itself: its schema (and the columns later versions added), making the work directory, and
turning SQLite's failures into one line (damaged, read-only, full disk); a missing or empty registry beside run
folders is refused with the way to recover it (``runs rebuild``)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from dcase_t6.common.errors import UserError, file_system_error
from dcase_t6.runs.layout import RECORD_NAME, REMOVED_RECORD_NAME, WorkLayout

SCHEMA = """
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


# Columns added after the first schema; an older database gets them on open.
ADDED_COLUMNS = {"runs": {"reason": "TEXT", "host": "TEXT", "pid": "INTEGER", "heartbeat": "REAL"}}


def add_columns(connection: sqlite3.Connection) -> None:
    for table, columns in ADDED_COLUMNS.items():
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in present:
                try:
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError as err:
                    if "duplicate column" not in str(err):  # another process added it just now
                        raise


def make_workdir(workdir: Path) -> None:
    """Create the work directory (and its parents); a UserError naming it when it cannot be a folder."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as err:
        problem = file_system_error(err, workdir)
        if problem is None:
            raise
        raise UserError(f"--workdir {workdir}: cannot be used as the work directory: {problem}") from None


def unusable(path: Path, err: sqlite3.Error) -> UserError | None:
    """A UserError for a registry that SQLite cannot open or write (read-only, a full disk, a folder it may not
    create its journal in); None for other errors."""
    name = getattr(err, "sqlite_errorname", "") or ""
    text = " ".join(str(err).split())
    if read_only_disk(path.parent) and not name.startswith(("SQLITE_FULL", "SQLITE_IOERR")):
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


def read_only_disk(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def damaged(path: Path, problem: object) -> UserError:
    return UserError(f"{path}: the run registry is damaged ({problem}); rebuild it from the run folders with "
                     f"`dcase-t6 --workdir {path.parent} runs rebuild` (the damaged file is kept beside it), or "
                     "restore it from a backup")


def run_folders(workdir: str | Path) -> list[Path]:
    """The folders under ``WORKDIR/runs`` that hold a run: its ``run.json``, or (a run registered before run
    records, not removed) a checkpoint."""
    runs = WorkLayout.at(workdir).runs
    if not runs.is_dir():
        return []
    return [folder for folder in sorted(runs.iterdir()) if folder.is_dir() and (
        (folder / RECORD_NAME).is_file() or (not (folder / REMOVED_RECORD_NAME).exists()
                                             and any((folder / name).is_file() for name in ("best.pt", "last.pt"))))]


def refuse_lost_registry(workdir: Path) -> None:
    """A UserError when the registry is missing or empty (0 bytes) while run folders exist: creating an empty
    one would hide every run."""
    path = WorkLayout.at(workdir).database
    if path.exists() and (path.is_dir() or path.stat().st_size > 0):
        return
    folders = run_folders(workdir)
    if folders:
        names = ", ".join(folder.name for folder in folders[:3]) + (", ..." if len(folders) > 3 else "")
        state = "is empty (0 bytes)" if path.exists() else "does not exist"
        runs = WorkLayout.at(workdir).runs
        raise UserError(f"{path} {state}, but {runs} holds {len(folders)} run folder(s) ({names}) that "
                        f"an empty registry would hide; rebuild it from them with `dcase-t6 --workdir {workdir} runs "
                        "rebuild`, or restore registry.sqlite from a backup")


def registered_runs(path: Path) -> int | None:
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


class Database:
    """The registry's SQLite file of a work directory: made (WAL, schema, added columns) and checked when opened,
    one IMMEDIATE transaction per ``_connect`` block; every failure one line (``damaged`` / ``unusable``)."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.layout = WorkLayout(self.workdir)
        self.path = self.layout.database
        make_workdir(self.workdir)
        if self.path.is_dir():
            raise UserError(f"{self.path}: a folder, not the run registry (an SQLite file); move the folder away, or "
                            "use another --workdir")
        refuse_lost_registry(self.workdir)
        self._initialise()

    def _initialise(self, attempts: int = 600) -> None:
        """Switch the database to WAL (persistent), check it is intact and create the tables; retried while
        another process does. A damaged database is a UserError saying how to recover."""
        for attempt in range(attempts):
            try:
                connection = self._open()
            except sqlite3.DatabaseError as err:
                if type(err) is sqlite3.DatabaseError:
                    raise damaged(self.path, err) from None
                raise unusable(self.path, err) or err from None
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    found = " ".join(" ".join(problems).replace("*** in database main ***", "").split())
                    raise damaged(self.path, found[:200])
                connection.executescript(SCHEMA)
                add_columns(connection)
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or attempt == attempts - 1:
                    raise unusable(self.path, err) or err from None
                time.sleep(0.1)
            except sqlite3.DatabaseError as err:
                raise damaged(self.path, err) from None
            finally:
                connection.close()

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
                raise damaged(self.path, err) from None
            raise unusable(self.path, err) or err from None
