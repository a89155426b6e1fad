"""The one way library code tells the user something: a :class:`Reporter` passed in by the caller.

The library never prints. A function with something to say (a progress bar over clips, a warning about
left-out pairs, a note on the chosen precision) takes ``reporter: Reporter = SILENT`` and calls it; the base
class says nothing, so a library caller, a test or a non-main training process hears nothing unless it asks.
The command line passes its own reporter (``cli/console.py``: rich bars and coloured lines on stderr).
In multi-process training only the main process speaks: ``reporter.for_rank(world.is_main)``.

Example:
    >>> with SILENT.task("caching audio", total=3) as task:
    ...     for _ in range(3):
    ...         task.advance()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

ITEMS, BYTES = "items", "bytes"


class Task:
    """One piece of long work with a bar: advance it as items (or bytes) are done. This one shows nothing."""

    def advance(self, amount: float = 1) -> None:
        """``amount`` more items (or bytes) are done."""

    def describe(self, text: str) -> None:
        """Replace the task's description (e.g. the epoch and the running loss)."""

    def restart(self, total: float | None, completed: float = 0) -> None:
        """New total and position (a download that learns its size, or resumes part-way)."""


class Reporter:
    """Progress bars and messages for the user; this base class says nothing (the library's default)."""

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: str = ITEMS, completed: float = 0) -> Iterator[Task]:
        """A progress bar for the block's duration.

        Args:
            description: what is being done ("caching audio at 32000 Hz").
            total: how many items (or bytes); None when unknown.
            unit: ``ITEMS`` (a count) or ``BYTES`` (sizes and speed).
            completed: already done (a resumed download).

        Returns:
            A context manager giving the :class:`Task` to advance.
        """
        yield Task()

    def info(self, text: str) -> None:
        """A line of information (plain text, no markup)."""

    def warning(self, text: str) -> None:
        """A line the user should read: something was left out, changed or assumed."""

    def for_rank(self, is_main: bool) -> Reporter:
        """This reporter on the main process, a silent one elsewhere (one voice for N processes)."""
        return self if is_main else SILENT


SILENT = Reporter()


class Recorder(Reporter):
    """Keeps every message and task instead of showing them (for callers that render later, and for tests)."""

    def __init__(self):
        self.messages: list[tuple[str, str]] = []
        self.tasks: list[dict] = []

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: str = ITEMS, completed: float = 0) -> Iterator[Task]:
        record = {"description": description, "total": total, "unit": unit, "completed": completed}
        self.tasks.append(record)
        yield _RecordedTask(record)

    def info(self, text: str) -> None:
        self.messages.append(("info", text))

    def warning(self, text: str) -> None:
        self.messages.append(("warning", text))


class _RecordedTask(Task):
    def __init__(self, record: dict):
        self.record = record

    def advance(self, amount: float = 1) -> None:
        self.record["completed"] += amount

    def describe(self, text: str) -> None:
        self.record["description"] = text

    def restart(self, total: float | None, completed: float = 0) -> None:
        self.record.update(total=total, completed=completed)
