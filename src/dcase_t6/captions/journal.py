"""The append-only journal of a generation run: every answer is written (and flushed to disk) as it arrives.

The journal is JSON lines: a header naming what produces the answers (model, prompts, generation settings),
then one line per answer with the request key, the step, the verdict (``kept``, ``rejected`` or ``failed``),
the cleaned text, the reason of a rejection and the tokens used. A request key is a hash of everything that
defines the request (seed, dataset, clip, caption index, pivot language or pair, step, source text), so a
second run over the same journal skips every request already answered (kept or rejected) and never pays
twice; ``failed`` requests (no usable HTTP answer after the retries) are asked again.

Only what a resume needs is stored: a kept answer whole (the quality check bounds its length), a rejected one
as its reason and an excerpt of at most EXCERPT characters with the length of the whole (a misbehaving server's
5 MB answer costs the journal about 300 bytes). A line that is not an entry of the expected types is refused
with its line number.

A process killed while writing leaves at most a torn last line: it is cut off when the journal is opened
again. One process at a time writes a journal (an exclusive ``flock``; released by the kernel even after
``kill -9``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import MISSING, file_problem, fix_of

FORMAT = "dcase-t6 augment journal 1"
KEPT, REJECTED, FAILED = "kept", "rejected", "failed"
EXCERPT = 200  # characters of a rejected answer (or a failure's detail) kept in the journal
_TEXT_FIELDS, _OPTIONAL_TEXT_FIELDS = ("key", "step", "text"), ("reason", "detail")
_COUNT_FIELDS = ("prompt_tokens", "completion_tokens", "attempts")


def request_key(*parts: object) -> str:
    """A deterministic key (24 hex digits) of the parts that define one request."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Entry:
    """One answer: request key, step (forward, back, mix), verdict, cleaned text, reason of a rejection (a fixed
    category) or failure, its detail, tokens used (0 when the server did not say), attempts, and facts about the
    request (clip, language)."""

    key: str
    step: str
    verdict: str
    text: str = ""
    reason: str | None = None
    detail: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    info: dict = field(default_factory=dict)

    @property
    def answered(self) -> bool:
        """An answer was received (kept or rejected): the request is never asked again."""
        return self.verdict in (KEPT, REJECTED)


class Journal:
    """An open journal: the answers read from it, and :meth:`append` for new ones (thread-safe).

    Args:
        path: the JSONL file (created, with its header line, when absent or empty).
        kind: ``back-translation`` or ``llm-mix``.
        generator: what produces the answers (backend, model, prompts, generation settings); a journal written
            with another generator is refused, naming the first difference.
        write: open for appending (locked, created when absent); False only reads what is there (a dry run:
            nothing is created or changed).
    """

    def __init__(self, path: str | Path, kind: str, generator: dict, write: bool = True):
        self.path, self.kind, self.generator = Path(path), kind, generator
        self._lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        self._handle = None
        problem = file_problem(self.path)
        if problem not in (None, MISSING):  # never opened: a pipe would block, a device never ends
            raise UserError(f"{self.path}: {problem}; {fix_of(problem)}, or choose another --out (or --journal)")
        if not write:
            if self.path.is_file():
                self._read(self.path.read_bytes())
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+b")  # noqa: SIM115 (held open for the run, closed by close())
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise UserError(f"{self.path}: another dcase-t6 augment process is writing this journal; wait for it "
                            "to end, or choose another --out") from None
        try:
            self._handle.seek(0)
            self._read(self._handle.read())
        except BaseException:
            self._handle.close()
            raise

    def _read(self, data: bytes) -> None:
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) < len(data) and self._handle is not None:  # a writer killed mid-line: cut the torn line
            self._handle.truncate(len(complete))
        lines = complete.decode("utf-8", errors="replace").splitlines()
        if not lines:
            if self._handle is not None:
                self._write({"format": FORMAT, "kind": self.kind, "generator": self.generator,
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            return
        header = self._parse(lines[0], 1)
        if header.get("format") != FORMAT or header.get("kind") != self.kind:
            raise UserError(f"{self.path}: not a {self.kind} journal of dcase-t6 augment; choose another --out "
                            "(or --journal)")
        generator = header.get("generator") or {}
        if not isinstance(generator, dict):
            raise self._damaged(1, f"its generator is {_kind(generator)}, not an object")
        self._check_generator(generator)
        for number, line in enumerate(lines[1:], start=2):
            entry = _entry(self._parse(line, number), lambda problem, n=number: self._damaged(n, problem))
            if entry.answered or entry.key not in self.entries:
                self.entries[entry.key] = entry

    def _parse(self, line: str, number: int) -> dict:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise self._damaged(number, "not JSON") from None
        if not isinstance(record, dict):
            raise self._damaged(number, f"{_kind(record)}, not a JSON object")
        return record

    def _damaged(self, number: int, problem: str) -> UserError:
        if number == 1:
            return UserError(f"{self.path}: line 1 is not the header of a journal ({problem}; the file was edited "
                             "or damaged); the header cannot be rebuilt: move the journal away (or delete it) to "
                             "start over, or choose another --out (or --journal)")
        return UserError(f"{self.path}: line {number} is not a journal entry ({problem}; the file was edited or "
                         "damaged); delete that line (its request is asked again) or the whole journal to start over")

    def _check_generator(self, stored: dict) -> None:
        for key in sorted(set(stored) | set(self.generator)):
            if stored.get(key) != self.generator.get(key):
                raise UserError(f"{self.path}: this journal was written with {key} = {_short(stored.get(key))}, "
                                f"now {_short(self.generator.get(key))}; resume with the same settings, or choose "
                                "another --out to start a new file")

    def answered(self, key: str) -> Entry | None:
        """The answer (kept or rejected) of request ``key``, or None when it still has to be asked."""
        entry = self.entries.get(key)
        return entry if entry is not None and entry.answered else None

    def append(self, entry: Entry) -> None:
        """Write ``entry`` at the end and flush it to disk before returning."""
        self.extend([entry])

    def extend(self, entries: list[Entry]) -> None:
        """Write several entries at the end (one flush to disk: a batch of a local model)."""
        entries = [_bounded(entry) for entry in entries]
        with self._lock:
            self._write(*(asdict(entry) for entry in entries))
            for entry in entries:
                if entry.answered or entry.key not in self.entries:
                    self.entries[entry.key] = entry

    def _write(self, *records: dict) -> None:
        self._handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode())
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Release the journal (and its lock)."""
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _entry(record: dict, damaged) -> Entry:
    """The Entry of a parsed journal line; ``damaged(problem)`` is raised for a field of the wrong type."""
    unknown = sorted(set(record) - set(Entry.__dataclass_fields__))
    if unknown:
        raise damaged(f"unknown field {_short(unknown[0])}")
    missing = [name for name in ("key", "step", "verdict") if name not in record]
    if missing:
        raise damaged(f"no {missing[0]}")
    for name in _TEXT_FIELDS + _OPTIONAL_TEXT_FIELDS:
        value = record.get(name, "")
        if not isinstance(value, str) and not (value is None and name in _OPTIONAL_TEXT_FIELDS):
            raise damaged(f"{name} is {_kind(value)}, not a text")
    if record["verdict"] not in (KEPT, REJECTED, FAILED):
        raise damaged(f"verdict is {_short(record['verdict'])}, none of {KEPT}, {REJECTED}, {FAILED}")
    for name in _COUNT_FIELDS:
        value = record.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise damaged(f"{name} is {_kind(value)}, not a whole number >= 0")
    if not isinstance(record.get("info", {}), dict):
        raise damaged(f"info is {_kind(record['info'])}, not an object")
    return Entry(**record)


def _bounded(entry: Entry) -> Entry:
    """``entry`` as journaled: a rejected or failed answer's text and detail cut to EXCERPT characters (with the
    length of the whole); a kept answer whole."""
    text = entry.text if entry.verdict == KEPT else _excerpt(entry.text)
    detail = None if entry.detail is None else _excerpt(entry.detail)
    return entry if (text, detail) == (entry.text, entry.detail) else replace(entry, text=text, detail=detail)


def _excerpt(text: str) -> str:
    if len(text) <= EXCERPT + 40:
        return text
    return f"{text[:EXCERPT]} [... {len(text):,} characters in all, the rest not journaled]"


def _kind(value: object) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"the number {_short(value)}"
    return {str: "a text", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
