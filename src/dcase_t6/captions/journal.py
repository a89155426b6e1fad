"""The append-only journal of a generation run: every answer is written (and flushed to disk) as it arrives.

The journal is JSON lines: a header naming what produces the answers (model, prompts, generation settings),
then one line per answer with the request key, the step, the verdict (``kept``, ``rejected`` or ``failed``),
the cleaned text, the reason of a rejection and the tokens used. A request key is a hash of everything that
defines the request (seed, dataset, clip, caption index, pivot language or pair, step, source text), so a
second run over the same journal skips every request already answered (kept or rejected) and never pays
twice; ``failed`` requests (no usable HTTP answer after the retries) are asked again.

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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dcase_t6.common.errors import UserError

FORMAT = "dcase-t6 augment journal 1"
KEPT, REJECTED, FAILED = "kept", "rejected", "failed"


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
        self._check_generator(header.get("generator") or {})
        for number, line in enumerate(lines[1:], start=2):
            record = self._parse(line, number)
            try:
                entry = Entry(**record)
            except TypeError:
                raise self._damaged(number) from None
            if entry.answered or entry.key not in self.entries:
                self.entries[entry.key] = entry

    def _parse(self, line: str, number: int) -> dict:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise self._damaged(number) from None
        if not isinstance(record, dict):
            raise self._damaged(number)
        return record

    def _damaged(self, number: int) -> UserError:
        return UserError(f"{self.path}: line {number} is not a journal entry (the file was edited or damaged); "
                         "delete that line (its request is asked again) or the whole journal to start over")

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


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
