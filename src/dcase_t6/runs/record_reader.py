"""The registry read from the run records (``runs/<id>/run.json``) alone, without opening ``registry.sqlite``.

Under torchrun only global rank 0 opens the SQLite registry: on several nodes the work directory is on a network
file system, where SQLite's WAL mode does not work across hosts (its ``-shm`` index is shared memory, not coherent
between machines), so another host could read stale data. Every change to a run rewrites its record atomically
(a rename) inside the transaction that makes it, and a rename is what network file systems show consistently
(close-to-open), so the other processes read runs and files from the records (:class:`RunRecords`), after rank 0
has written what they read (they wait for it at a barrier or a broadcast). Both offer :class:`RunLookup`, the read
API that training and ``embed`` use.

:func:`read_record` is the one reader of the record format; ``runs rebuild`` registers runs again with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from dcase_t6.common.errors import UserError
from dcase_t6.runs.layout import RECORD_NAME, WorkLayout
from dcase_t6.runs.leases import effective_status
from dcase_t6.runs.records import RegisteredFile, Run, verify_file


class RunLookup(Protocol):
    """What a process of a command reads about runs: :class:`~dcase_t6.runs.registry.Registry` (the SQLite
    file; the main process) and :class:`RunRecords` (the run records; the other processes under torchrun)."""

    workdir: Path
    layout: WorkLayout

    def resolve(self, reference: str) -> str:
        """The full id of the run ``reference`` names."""
        ...

    def run(self, reference: str) -> Run:
        """One run with its epochs and files."""
        ...

    def has_file(self, reference: str, kind: str, tag: str) -> bool:
        """Whether the run registered a file of that kind and tag."""
        ...

    def file(self, run_id: str, kind: str, tag: str, verify: bool = True) -> RegisteredFile:
        """A registered file, its SHA-256 checked against the file on disk unless ``verify`` is False."""
        ...


@dataclass(frozen=True)
class RunRecord:
    """A run as its record holds it: ``run`` with the stored status (not the effective one), its epochs and files
    (paths resolved against its folder) and ``directory`` its folder; ``epoch_metrics`` each epoch's number and
    metrics as recorded; ``file_times`` when each of ``run.files`` was registered (None: not recorded), in order."""

    run: Run
    epoch_metrics: list[tuple[int, dict]]
    file_times: list[str | None]


def read_record(folder: Path) -> RunRecord:
    """The run recorded in ``folder/run.json``.

    Args:
        folder: the run's folder.

    Returns:
        The run, its epochs and files as recorded.

    Raises:
        UserError: no record there, or one that is not a run record (saying how to recover).
    """
    path = folder / RECORD_NAME
    if not path.is_file():
        raise UserError(f"no {RECORD_NAME} (the run was registered by a dcase-t6 that kept no run records); "
                        "its checkpoints can still be used as files")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        run_id = record["id"]
        metrics = [(int(epoch["epoch"]), epoch["metrics"]) for epoch in record.get("epochs", [])]
        epochs = [{"epoch": number, **values} for number, values in metrics]  # as ``Registry.run`` gives them
        files = [RegisteredFile(run_id, item["kind"], item["tag"], _located(folder, item["path"]), item["sha256"],
                                item.get("info", {})) for item in record.get("files", [])]
        times = [item.get("created") for item in record.get("files", [])]
        run = Run(id=run_id, name=record["name"], status=record["status"], created=record["created"],
                  config=record["config"], data_fingerprint=record.get("data_fingerprint"),
                  code_version=record.get("code_version"), seed=record.get("seed"), directory=str(folder),
                  reason=record.get("reason"), host=record.get("host"), pid=record.get("pid"),
                  heartbeat=record.get("heartbeat"), epochs=epochs, files=files)
        if not isinstance(run.config, dict) or not all(isinstance(file.info, dict) for file in files):
            raise TypeError("config and file info must be JSON objects")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise UserError(f"{path}: not a run record ({type(err).__name__}: {err}); restore it from a "
                        "backup") from None
    return RunRecord(run, metrics, times)


def _located(folder: Path, stored: str) -> Path:
    """A recorded file's path: relative ones (inside the run's folder) against ``folder``, resolved."""
    return (Path(stored) if Path(stored).is_absolute() else folder / stored).resolve()


class RunRecords:
    """The runs of a work directory read from their records (see the module docstring); nothing is written.

    Runs are named by their full ids only: the processes that read records get their run ids from the main
    process, which resolves what the user typed. A prefix is refused as an internal error. ``run(...).status``
    is the effective status of the recorded row; a heartbeat is not recorded, so a run trained on another host
    for more than ``STALE_SECONDS`` reads as ``interrupted`` here: decide on statuses on the main process.
    """

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.layout = WorkLayout(self.workdir)

    def resolve(self, reference: str) -> str:
        """``reference`` itself when it is the id of a recorded run.

        Args:
            reference: a full run id.

        Returns:
            The same id.

        Raises:
            RuntimeError: ``reference`` is not a full run id (an internal error: the main process resolves).
            UserError: the run has no record (yet: the main process writes missing ones when it opens the registry).
        """
        if not _one_name(reference):
            raise RuntimeError(f"internal error: run reference {reference!r} reached a process that reads run "
                               "records; only the main process resolves references, the others get full run ids")
        if self.layout.record(reference).is_file():
            return reference
        prefixed = _recorded_with_prefix(self.layout, reference)
        if prefixed:
            raise RuntimeError(f"internal error: run reference '{reference}' is a prefix of {', '.join(prefixed[:3])}"
                               " but reached a process that reads run records, which takes full run ids only; the "
                               "main process must resolve it and share the id")
        raise UserError(f"{self.layout.record(reference)}: run {reference} has no record that this process can "
                        f"read; run `dcase-t6 --workdir {self.workdir} runs list` once (it writes missing records), "
                        "and make the work directory one folder that every node sees")

    def record(self, run_id: str) -> RunRecord:
        """The record of a run (full id), as :func:`read_record` reads it."""
        return read_record(self.layout.run(self.resolve(run_id)))

    def run(self, reference: str) -> Run:
        """One run with its epochs and files, as ``Registry.run`` gives it (the effective status, see the class)."""
        recorded = self.record(reference).run
        values = {"status": recorded.status, "host": recorded.host, "pid": recorded.pid,
                  "heartbeat": recorded.heartbeat}
        return replace(recorded, status=effective_status(values))

    def has_file(self, reference: str, kind: str, tag: str) -> bool:
        """Whether the run's record lists a file of that kind and tag (intact or not: :meth:`file` checks that)."""
        return self._find(reference, kind, tag) is not None

    def file(self, run_id: str, kind: str, tag: str, verify: bool = True) -> RegisteredFile:
        """A recorded file, its hash checked against the file on disk unless ``verify`` is False; the refusals are
        ``Registry.file``'s.

        Args:
            run_id: the run's full id.
            kind: checkpoint, embeddings, similarity or clusters.
            tag: e.g. ``best`` or ``<dataset>/<split>``.
            verify: check the file's SHA-256.

        Returns:
            The file.
        """
        found = self._find(run_id, kind, tag)
        if found is None:
            raise UserError(f"run {run_id} has no {kind} '{tag}' in {self.layout.database}; "
                            f"see `dcase-t6 runs show {run_id}` for what it has")
        if verify:
            verify_file(found)
        return found

    def _find(self, run_id: str, kind: str, tag: str) -> RegisteredFile | None:
        files = self.record(run_id).run.files or []
        return next((item for item in files if item.kind == kind and item.tag == tag), None)


def recorded_id(workdir: str | Path, reference: str) -> str:
    """The id of the one recorded run whose id equals or starts with ``reference``, for a process that must know a
    run before it can ask the main process (``train --resume`` under torchrun: the processes join with the run's
    ``dist_timeout_minutes``); everywhere else the main process resolves references (``runs.lookup``).

    Args:
        workdir: the work directory.
        reference: a run id or a unique prefix of one.

    Returns:
        The full id.

    Raises:
        UserError: no recorded run, or several, match (the registry's refusals, about the records).
    """
    layout = WorkLayout.at(workdir)
    if _one_name(reference) and layout.record(reference).is_file():
        return reference
    runs = layout.runs
    ids = _recorded_with_prefix(layout, reference) if _one_name(reference) else []
    if len(ids) == 1:
        return ids[0]
    if ids:
        raise UserError(f"{runs}: {len(ids)} runs ({', '.join(ids[:5])}) match '{reference}'; list runs with "
                        "`dcase-t6 runs list`")
    raise UserError(f"{runs}: no run record matches '{reference}'; list runs with `dcase-t6 runs list`")


def _one_name(reference: str) -> bool:
    """Whether ``reference`` can name a run's folder (one path component)."""
    return bool(reference) and reference not in (".", "..") and "/" not in reference and "\\" not in reference


def _recorded_with_prefix(layout: WorkLayout, prefix: str) -> list[str]:
    """The ids of the recorded runs whose id starts with ``prefix`` (one path component), sorted."""
    if not layout.runs.is_dir():
        return []
    return sorted(folder.name for folder in layout.runs.iterdir()
                  if folder.name.startswith(prefix) and (folder / RECORD_NAME).is_file())
