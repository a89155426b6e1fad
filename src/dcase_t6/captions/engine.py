"""Running a generation plan like a tool that spends money, and writing what it produced.

A plan is a list of items (a caption to back-translate, a pair of clips to merge); an item asks one or more
requests in turn (back-translation: forward, then back), each checked for quality and journaled as it arrives.
The endpoint runner sends them from ``concurrency`` threads; ``max_requests`` caps the requests sent by one run;
a dry run only counts the requests still needed and estimates their tokens (about 4 characters a token, plus 7
a message for the chat format). After a run, whether complete, capped, interrupted or stopped by an error, the
CSV of every kept answer of the plan (in plan order) and its sidecar JSON are written atomically from the
journal.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import pandas as pd

from dcase_t6.captions.endpoint import ChatEndpoint, Reply, RequestFailed
from dcase_t6.captions.journal import FAILED, KEPT, REJECTED, Entry, Journal
from dcase_t6.captions.quality import Verdict
from dcase_t6.common.atomic import atomic_open
from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import write_json
from dcase_t6.common.reporting import SILENT, Reporter, Task

PENDING = "pending"
CHARACTERS_PER_TOKEN = 4
MESSAGE_TOKENS = 7  # chat format: about 4 tokens around a message and 3 that prime the reply


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` by the usual rule of thumb for English (4 characters a token)."""
    return max(1, math.ceil(len(text) / CHARACTERS_PER_TOKEN))


@dataclass(frozen=True)
class Request:
    """One request of an item: journal key, step name, prompt, the quality check of its answer, journaled facts."""

    key: str
    step: str
    prompt: str
    check: Callable[[str | None], Verdict]
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """Where an item stands: ``kept`` (with the caption), ``rejected`` (with the reason), ``failed`` (its last
    request got no answer: asked again next run) or ``pending`` (not asked yet)."""

    state: str
    text: str = ""
    reason: str | None = None


class Item(Protocol):
    """One unit of a plan (see the module docstring)."""

    def next_request(self, journal: Journal) -> Request | None:
        """The request still to ask, given what the journal holds; None when the item is finished."""

    def outcome(self, journal: Journal) -> Outcome:
        """Where the item stands, given what the journal holds."""

    def estimate(self, journal: Journal) -> list[tuple[int, int]]:
        """(prompt, completion) token estimates of the requests the item still needs."""

    def row(self, text: str) -> dict:
        """The output CSV row of a kept caption ``text``."""


def outcome_of(journal: Journal, keys: list[str]) -> Outcome:
    """The outcome of an item whose requests are ``keys`` in order (a rejected step ends the item)."""
    for key in keys:
        entry = journal.answered(key)
        if entry is None:
            failed = journal.entries.get(key)
            return Outcome(FAILED, reason=failed.reason) if failed is not None else Outcome(PENDING)
        if entry.verdict == REJECTED:
            return Outcome(REJECTED, reason=entry.reason)
    return Outcome(KEPT, text=journal.answered(keys[-1]).text)


@dataclass(frozen=True)
class SpendLimits:
    """How much one run may spend: ``dry_run`` (count and estimate only), ``max_requests`` (None: no cap),
    ``concurrency`` (requests in flight), ``failures_in_a_row`` (failed requests in a row that stop the run)."""

    dry_run: bool = False
    max_requests: int | None = None
    concurrency: int = 4
    failures_in_a_row: int = 5


@dataclass(frozen=True)
class OutputFiles:
    """The CSV, the journal (``<name>.journal.jsonl`` beside it unless given) and the sidecar (``<name>.meta.json``)."""

    csv: Path
    journal: Path
    metadata: Path

    @classmethod
    def beside(cls, out: str | Path, journal: str | Path | None = None) -> OutputFiles:
        """The files of output CSV ``out``; a UserError when it does not end in ``.csv``."""
        out = Path(out)
        if out.suffix.lower() != ".csv":
            raise UserError(f"--out {out}: the output is a CSV file; name it NAME.csv (the journal and the sidecar "
                            "go beside it as NAME.journal.jsonl and NAME.meta.json)")
        return cls(out, Path(journal) if journal else out.with_suffix(".journal.jsonl"),
                   out.with_suffix(".meta.json"))


@dataclass
class RunStats:
    """What one run did: requests sent (failed ones included), HTTP attempts, tokens, items kept/skipped/failed,
    failed requests in a row and the last failure, why it stopped early (``max-requests``, ``interrupted``,
    ``error``) and the error that stopped it."""

    requests: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    kept: int = 0
    skipped: int = 0
    failed: int = 0
    failed_in_a_row: int = 0
    last_failure: str | None = None
    stopped: str | None = None
    error: UserError | None = None
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, entry: Entry) -> None:
        with self.lock:
            self.requests += 1
            self.attempts += entry.attempts
            self.prompt_tokens += entry.prompt_tokens
            self.completion_tokens += entry.completion_tokens
            if entry.verdict == FAILED:
                self.failed_in_a_row, self.last_failure = self.failed_in_a_row + 1, entry.detail
            else:
                self.failed_in_a_row = 0

    @property
    def rate(self) -> float:
        return self.requests / max(time.monotonic() - self.started, 1e-9)


@dataclass(frozen=True)
class AugmentRun:
    """How the caller runs one generation command: ``files`` (where the CSV, journal and sidecar go), ``limits``
    (what the run may spend) and ``reporter`` (where its progress goes)."""

    files: OutputFiles
    limits: SpendLimits
    reporter: Reporter = SILENT


@dataclass(frozen=True)
class AugmentJob:
    """One generation run under way: its ``kind`` (``back-translation``, ``llm-mix``), how it runs (``run``), the
    open ``journal`` of its answers and what it did so far (``stats``)."""

    kind: str
    run: AugmentRun
    journal: Journal
    stats: RunStats

    @property
    def limits(self) -> SpendLimits:
        return self.run.limits


class Budget:
    """The requests a run may still send (thread-safe); None: no cap."""

    def __init__(self, limit: int | None):
        self.left, self.lock = limit, threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left is None:
                return True
            if self.left <= 0:
                return False
            self.left -= 1
            return True

    @property
    def spent(self) -> bool:
        return self.left is not None and self.left <= 0


class ProgressSink:
    """Advances a task's bar (and the run's counts) as items finish; the description shows the request rate and
    the kept / skipped / failed counts."""

    def __init__(self, task: Task, label: str, stats: RunStats):
        self.task, self.label, self.stats = task, label, stats

    def done(self, outcome: Outcome) -> None:
        stats = self.stats
        with stats.lock:
            if outcome.state == KEPT:
                stats.kept += 1
            elif outcome.state == REJECTED:
                stats.skipped += 1
            elif outcome.state == FAILED:
                stats.failed += 1
        if outcome.state != PENDING:
            self.task.advance()
        self.task.describe(f"{self.label}  {stats.rate:.1f} req/s  kept {stats.kept}  skipped {stats.skipped}  "
                           f"failed {stats.failed}")


def answer_verdict(reply: Reply, check: Callable[[str | None], Verdict]) -> Verdict:
    """The quality verdict of a reply: malformed bodies, refusals and answers cut off at the token limit are
    refused before the text itself is checked."""
    if reply.finish_reason == "malformed":
        return Verdict("", "malformed response", "no choices[0].message.content in the body")
    if reply.refusal:
        return Verdict(reply.refusal, "refusal", "the model's refusal field")
    verdict = check(reply.text)
    if verdict.kept and reply.finish_reason == "length":
        return Verdict(verdict.text, "cut off at max tokens", "finish_reason length")
    return verdict


def ask_all(job: AugmentJob, items: list[Item], endpoint: ChatEndpoint, label: str) -> None:
    """Ask every request the unfinished ``items`` still need, ``job.limits.concurrency`` at a time, journaling each
    answer as it arrives. Stops early at the request cap, on Ctrl-C, on a fatal endpoint error or after
    ``job.limits.failures_in_a_row`` failed requests in a row; ``job.stats`` says which (the caller writes the
    outputs)."""
    journal, limits, stats = job.journal, job.limits, job.stats
    todo = [item for item in items if item.outcome(journal).state in (PENDING, FAILED)]
    budget, stop = Budget(limits.max_requests), threading.Event()

    def work(item: Item) -> Outcome:
        while not stop.is_set():
            request = item.next_request(journal)
            if request is None or not budget.take():
                break
            try:
                reply = endpoint.ask(request.prompt)
            except RequestFailed as err:
                entry = Entry(request.key, request.step, FAILED, reason="no answer", detail=str(err),
                              attempts=err.attempts, info=request.info)
                journal.append(entry)
                stats.count(entry)
                if stats.failed_in_a_row >= limits.failures_in_a_row:
                    _stop_for(UserError(f"{endpoint.settings.api_base}: {stats.failed_in_a_row} requests in a row got "
                                        f"no answer (last: {stats.last_failure}); the answers so far are in "
                                        f"{journal.path}: fix the endpoint and run the same command again to "
                                        "resume"))
                return Outcome(FAILED, reason=str(err))
            except UserError as err:
                _stop_for(err)
                break
            verdict = answer_verdict(reply, request.check)
            entry = Entry(request.key, request.step, KEPT if verdict.kept else REJECTED, verdict.text, verdict.reason,
                          verdict.detail, reply.prompt_tokens, reply.completion_tokens, reply.attempts, request.info)
            journal.append(entry)
            stats.count(entry)
        return item.outcome(journal)

    def _stop_for(error: UserError) -> None:
        with stats.lock:
            if stats.error is None:
                stats.error, stats.stopped = error, "error"
        stop.set()

    with job.run.reporter.task(label, len(todo)) as task, ThreadPoolExecutor(max(1, limits.concurrency)) as pool:
        sink = ProgressSink(task, label, stats)
        queue, running = iter(todo), set()
        try:
            while True:
                while not stop.is_set() and not budget.spent and len(running) < 2 * max(1, limits.concurrency):
                    item = next(queue, None)
                    if item is None:
                        break
                    running.add(pool.submit(work, item))
                if not running:
                    break
                finished, running = wait(running, timeout=0.25, return_when=FIRST_COMPLETED)
                for future in finished:
                    sink.done(future.result())
        except KeyboardInterrupt:
            stats.stopped = "interrupted"
            stop.set()
            wait(running)
    if stats.stopped is None and budget.spent and any(item.outcome(journal).state in (PENDING, FAILED)
                                                      for item in todo):
        stats.stopped = "max-requests"


@dataclass(frozen=True)
class AugmentReport:
    """What a generation command did (its ``--json`` output).

    ``items``: captions (back-translation) or pairs (LLM mix) of the plan; ``kept``/``rejected`` (by reason)/
    ``failed``/``pending``: where they stand after this run, earlier runs included; ``requests``, ``attempts``,
    ``tokens``: what this run sent and used; ``total_tokens``: the whole journal; ``estimate``: a dry run's count
    of the requests still needed and their tokens; ``stopped``: ``max-requests``, ``interrupted`` or ``error``.
    """

    kind: str
    dry_run: bool
    output: str | None
    metadata: str | None
    journal: str
    items: int
    kept: int
    rejected: dict[str, int]
    failed: int
    pending: int
    requests: int
    attempts: int
    tokens: dict[str, int]
    total_tokens: dict[str, int]
    estimate: dict | None
    stopped: str | None
    seconds: float

    def as_json(self) -> dict:
        """The ``--json`` output."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def estimate(items: list[Item], journal: Journal, limits: SpendLimits) -> dict:
    """The requests the items still need (capped by ``limits.max_requests``) and their estimated tokens."""
    needed = [request for item in items for request in item.estimate(journal)]
    capped = needed if limits.max_requests is None else needed[:limits.max_requests]
    return {"requests": len(capped), "requests_needed": len(needed),
            "prompt_tokens": sum(prompt for prompt, _ in capped),
            "completion_tokens": sum(completion for _, completion in capped),
            "method": f"{CHARACTERS_PER_TOKEN} characters a token + {MESSAGE_TOKENS} a message"}


def finish(job: AugmentJob, items: list[Item], columns: list[str], metadata: dict) -> AugmentReport:
    """Write the CSV of the kept captions and its sidecar (unless a dry run) and report where the plan stands.

    Args:
        job: the run: its kind, where it writes, its spend limits, the journal holding the answers, what it did.
        items: the plan.
        columns: the CSV columns (the keys of each item's row).
        metadata: what the sidecar records besides the counts (source, generator, prompts, settings).

    Returns:
        The report.
    """
    journal, files, limits, stats = job.journal, job.run.files, job.limits, job.stats
    outcomes = [item.outcome(journal) for item in items]
    states = Counter(outcome.state for outcome in outcomes)
    rejected = dict(sorted(Counter(o.reason for o in outcomes if o.state == REJECTED).items(),
                           key=lambda pair: (-pair[1], pair[0])))
    answered = [entry for entry in journal.entries.values() if entry.answered]
    total_tokens = {"prompt": sum(entry.prompt_tokens for entry in answered),
                    "completion": sum(entry.completion_tokens for entry in answered)}
    report = AugmentReport(
        kind=job.kind, dry_run=limits.dry_run, output=None if limits.dry_run else str(files.csv),
        metadata=None if limits.dry_run else str(files.metadata), journal=str(files.journal), items=len(items),
        kept=states[KEPT], rejected=rejected, failed=states[FAILED], pending=states[PENDING],
        requests=stats.requests, attempts=stats.attempts,
        tokens={"prompt": stats.prompt_tokens, "completion": stats.completion_tokens}, total_tokens=total_tokens,
        estimate=estimate(items, journal, limits) if limits.dry_run else None, stopped=stats.stopped,
        seconds=round(time.monotonic() - stats.started, 3))
    if limits.dry_run:
        return report
    rows = [item.row(outcome.text) for item, outcome in zip(items, outcomes) if outcome.state == KEPT]
    with atomic_open(files.csv, "w", encoding="utf-8", newline="") as handle:
        pd.DataFrame(rows, columns=columns).to_csv(handle, index=False)
    counts = {key: value for key, value in report.as_json().items()
              if key in ("items", "kept", "rejected", "failed", "pending")}
    journal_path = os.path.relpath(files.journal, files.csv.parent)
    write_json({**metadata, "csv": files.csv.name, "journal": journal_path, "counts": counts,
                "tokens": total_tokens, "answers_in_journal": len(answered),
                "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}, files.metadata)
    return report
