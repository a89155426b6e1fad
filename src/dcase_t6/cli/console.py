"""The two rich consoles the command line prints through, and its :class:`~dcase_t6.common.reporting.Reporter`:
progress bars and coloured lines on stderr, so stdout stays clean for ``--json``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from dcase_t6.common.reporting import BYTES, ITEMS, Reporter, Task

console = Console()
stderr_console = Console(stderr=True)


def count_progress(output: Console = stderr_console) -> Progress:
    """Progress bar counting items (files, clips)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TimeRemainingColumn(), console=output, transient=True)


def byte_progress(output: Console = stderr_console) -> Progress:
    """Progress bar for downloads and checksums: bytes, speed, time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=output, transient=True)


class RichTask(Task):
    """A task of a rich progress display."""

    def __init__(self, progress: Progress, task_id):
        self.progress, self.task_id = progress, task_id

    def advance(self, amount: float = 1) -> None:
        self.progress.advance(self.task_id, amount)

    def describe(self, text: str) -> None:
        self.progress.update(self.task_id, description=escape(text))

    def restart(self, total: float | None, completed: float = 0) -> None:
        self.progress.update(self.task_id, total=total, completed=completed)


class RichReporter(Reporter):
    """What the user sees: transient bars (counts, or bytes with speed) and ``warning:`` lines on stderr.
    A task opened while another is shown joins that display (one live display at a time)."""

    def __init__(self, output: Console = stderr_console):
        self.output = output
        self._live: Progress | None = None

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: str = ITEMS, completed: float = 0) -> Iterator[Task]:
        if unit not in (ITEMS, BYTES):
            raise ValueError(f"unit must be {ITEMS!r} or {BYTES!r}, not {unit!r}")
        if self._live is not None:  # nested: a second bar in the same display
            task_id = self._live.add_task(escape(description), total=total, completed=completed)
            try:
                yield RichTask(self._live, task_id)
            finally:
                self._live.remove_task(task_id)
            return
        progress = (byte_progress if unit == BYTES else count_progress)(self.output)
        with progress:
            self._live = progress
            try:
                yield RichTask(progress, progress.add_task(escape(description), total=total, completed=completed))
            finally:
                self._live = None

    def info(self, text: str) -> None:
        self.output.print(escape(text), highlight=False, soft_wrap=True)

    def warning(self, text: str) -> None:
        self.output.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


class CommandReporter(Reporter):
    """The reporter every command passes to the library: the rich one, or while ``--log-file`` is on, a
    :class:`~dcase_t6.common.logreport.LoggingReporter` around it (``use``, in ``cli/logfile.py`` only)."""

    def __init__(self, rich: Reporter):
        self.rich = self.current = rich

    def use(self, current: Reporter | None) -> None:
        """Report through ``current`` from now on; None: through the rich reporter alone again."""
        self.current = self.rich if current is None else current

    def task(self, description: str, total: float | None, unit: str = ITEMS, completed: float = 0):
        return self.current.task(description, total, unit, completed)

    def info(self, text: str) -> None:
        self.current.info(text)

    def warning(self, text: str) -> None:
        self.current.warning(text)

    def for_rank(self, is_main: bool) -> Reporter:
        return self.current.for_rank(is_main)


reporter = CommandReporter(RichReporter())
