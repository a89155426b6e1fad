"""What a command says, also as plain lines of the standard :mod:`logging` (a cluster job's greppable log file).

:class:`LoggingReporter` wraps another :class:`~dcase_t6.common.reporting.Reporter` (the console keeps showing
everything) and writes to a :class:`logging.Logger` (the library's is ``logging.getLogger("dcase_t6")``, which
prints nothing until its user configures logging):

* ``info`` -> an INFO record, ``warning`` -> a WARNING record;
* a task -> one INFO record when it starts ("caching audio at 32000 Hz: started, 1,200 items") and one when it
  ends (the count done, the seconds taken and the rate); a task left by an exception -> one WARNING record
  saying where it stopped (done/total), and the exception goes on. Nothing per ``advance``: a bar over 400,000
  clips writes two lines;
* a task's ``describe`` (the running loss of a training epoch) -> an INFO record at most once every
  ``describe_every`` seconds (default 60; None: never), and its last text in the end record.

The ``--log-file`` option's file: :func:`check_log_file` (what may be appended to) and :func:`log_file_handler`.

Example:
    >>> import logging
    >>> from dcase_t6.common.reporting import SILENT
    >>> reporter = LoggingReporter(SILENT, logging.getLogger(LOGGER_NAME))
    >>> with reporter.task("caching audio", total=3) as task:
    ...     task.advance(3)
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import BYTES, ITEMS, Reporter, Task

LOGGER_NAME = "dcase_t6"
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DESCRIBE_EVERY = 60.0
# The first line of a log this tool started: an ISO time (with or without fraction and offset), then a level.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S* (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
_SNIFF_BYTES = 256


class LoggingReporter(Reporter):
    """``inner``'s bars and lines, and the same news as records of ``logger`` (see the module's text).

    Args:
        inner: the reporter that keeps showing everything (the console's).
        logger: where the records go.
        describe_every: least seconds between two logged ``describe`` texts of a task; None: none logged.
    """

    def __init__(self, inner: Reporter, logger: logging.Logger, describe_every: float | None = DESCRIBE_EVERY):
        self.inner, self.logger, self.describe_every = inner, logger, describe_every

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: str = ITEMS, completed: float = 0) -> Iterator[Task]:
        with self.inner.task(description, total, unit, completed) as inner_task:
            logged = _LoggedTask(inner_task, self, (description, unit), (total, completed))
            self.logger.info("%s: started, %s", description, _amount(total, unit) if total is not None
                             else "total unknown")
            try:
                yield logged
            except BaseException as err:
                self.logger.warning("%s: stopped at %s after %s (%s)", description, logged.position(),
                                    _seconds(logged.elapsed()), type(err).__name__)
                raise
            self.logger.info("%s", logged.ended())

    def info(self, text: str) -> None:
        self.inner.info(text)
        self.logger.info("%s", text)

    def warning(self, text: str) -> None:
        self.inner.warning(text)
        self.logger.warning("%s", text)

    def for_rank(self, is_main: bool) -> Reporter:
        """Logging too on the main process; elsewhere ``inner``'s reporter for that rank (silent), no records."""
        if not is_main:
            return self.inner.for_rank(False)
        inner = self.inner.for_rank(True)
        return self if inner is self.inner else LoggingReporter(inner, self.logger, self.describe_every)


class _LoggedTask(Task):
    """``inner``'s task, counting what is done (for the end record) and logging ``describe`` now and then."""

    def __init__(self, inner: Task, reporter: LoggingReporter, named: tuple[str, str], counts: tuple):
        self.inner, self.reporter = inner, reporter
        (self.description, self.unit), (self.total, self.completed) = named, counts
        self.started = self.described_at = time.monotonic()
        self.last_text: str | None = None

    def advance(self, amount: float = 1) -> None:
        self.inner.advance(amount)
        self.completed += amount

    def describe(self, text: str) -> None:
        self.inner.describe(text)
        self.last_text = text
        every, now = self.reporter.describe_every, time.monotonic()
        if every is not None and now - self.described_at >= every:
            self.described_at = now
            self.reporter.logger.info("%s: %s (%s)", self.description, text, self.position())

    def restart(self, total: float | None, completed: float = 0) -> None:
        self.inner.restart(total, completed)
        self.total, self.completed = total, completed

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def position(self) -> str:
        """Done out of total: "340/1,200 items" (or "340 items" when the total is unknown)."""
        done = _amount(self.completed, self.unit)
        if self.total is None:
            return done
        return f"{_amount(self.completed, self.unit, bare=True)}/{_amount(self.total, self.unit)}"

    def ended(self) -> str:
        """The end record: "caching audio: done, 1,200 items in 12.3 s (97.6 items/s)" and the last description."""
        seconds = self.elapsed()
        rate = f" ({_amount(self.completed / seconds, self.unit)}/s)" if seconds > 0 else ""
        last = f"; last: {self.last_text}" if self.last_text is not None else ""
        return f"{self.description}: done, {self.position()} in {_seconds(seconds)}{rate}{last}"


def _amount(value: float, unit: str, bare: bool = False) -> str:
    """A count with thousands separators ("1,200 items"), or a size in bytes ("1.5 MB")."""
    if unit == BYTES:
        for size, name in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if abs(value) >= size:
                return f"{value / size:.1f} {name}"
        return f"{value:.0f} B"
    text = f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:,.1f}"
    return text if bare else f"{text} {unit}"


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


class IsoFormatter(logging.Formatter):
    """``LOG_FORMAT`` with local ISO 8601 times to the millisecond and the UTC offset (2025-05-01T14:03:07.412+02:00):
    the nodes of a cluster job may sit in other time zones than its user."""

    def __init__(self):
        super().__init__(LOG_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        moment = datetime.datetime.fromtimestamp(record.created).astimezone()
        return moment.isoformat(timespec="milliseconds")


def check_log_file(path: str | os.PathLike, option: str = "--log-file") -> Path:
    """``path`` when a log may be appended to it: a new file in an existing folder, an empty file, or a log this
    tool started (its first line a time and a level); a UserError otherwise, before anything is written.

    Args:
        path: the log file asked for.
        option: how the user named it, for the message.

    Returns:
        ``path`` (``~`` expanded).
    """
    target = Path(path).expanduser()
    try:
        status = target.stat()
    except FileNotFoundError:
        if not target.parent.is_dir():
            raise UserError(f"{option} {path}: the folder {target.parent} does not exist; create it first "
                            f"(mkdir -p {target.parent})") from None
        return target
    if stat.S_ISDIR(status.st_mode):
        raise UserError(f"{option} {path}: a folder; name a file inside it, e.g. {option} {target / 'dcase-t6.log'}")
    if not stat.S_ISREG(status.st_mode):
        raise UserError(f"{option} {path}: not a regular file; name a new file or a log this tool started")
    if status.st_size and not _starts_like_a_log(target):
        raise UserError(f"{option} {path}: an existing file that is not a dcase-t6 log (its first line is not "
                        f"'TIME LEVEL message'); it is left as it is: name a new file or a log this tool started")
    return target


def _starts_like_a_log(path: Path) -> bool:
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES).decode("utf-8", errors="replace")
    return LOG_LINE.match(head) is not None


def log_file_handler(path: Path) -> logging.FileHandler:
    """A handler appending ``IsoFormatter`` lines in UTF-8 to ``path`` (never truncating it).

    Args:
        path: a file :func:`check_log_file` accepted.

    Returns:
        The open handler (close it when done).
    """
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(IsoFormatter())
    return handler
