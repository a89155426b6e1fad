"""``dcase-t6 --log-file FILE COMMAND ...``: the command's news, also as plain timestamped lines appended to FILE.

While the command runs, the "dcase_t6" logger writes to FILE (INFO and up, not passed on to the root logger)
and the CLI's reporter is a :class:`~dcase_t6.common.logreport.LoggingReporter` around the rich one: the
console shows what it always shows, the file gets the command line, the info and warning lines, one line when
each task starts and one when it ends, the error line of a refusal, and how the command ended. In a torchrun
job only the main process (``RANK`` 0 or unset) writes, so one file serves a whole job; every process checks
the path.
"""

from __future__ import annotations

import logging
import os
import shlex
import time

import click

from dcase_t6 import __version__
from dcase_t6.cli.console import reporter
from dcase_t6.common.logreport import LOGGER_NAME, LoggingReporter, check_log_file, log_file_handler


class CommandLog:
    """The ``--log-file`` of one command: opened (checked, then appended to) on creation, closed by ``close``."""

    def __init__(self, path: str, argv: list[str]):
        target = check_log_file(path)
        self.logger, self.handler = logging.getLogger(LOGGER_NAME), None
        if os.environ.get("RANK", "0") != "0":  # another process of a torchrun job: its main process writes
            return
        self.handler, self.started = log_file_handler(target), time.monotonic()
        self.saved = self.logger.level, self.logger.propagate
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False  # the console already shows every line: a root handler would repeat it
        reporter.use(LoggingReporter(reporter.rich, self.logger))
        self.logger.info("command: %s (dcase-t6 %s, pid %d, in %s)", shlex.join(["dcase-t6", *argv]), __version__,
                         os.getpid(), os.getcwd())

    def error(self, text: str) -> None:
        """The one-line refusal the command prints, as an ERROR line."""
        if self.handler is not None:
            self.logger.error("error: %s", text)

    def close(self, error: BaseException | None) -> None:
        """Log how the command ended (``error``: what ends it, None: it returned) and stop writing."""
        if self.handler is None:
            return
        took = f"after {time.monotonic() - self.started:.1f} s"
        try:
            if error is None or _exit_code(error) == 0:
                self.logger.info("exit: ok %s", took)
            elif isinstance(error, click.ClickException):  # a usage error: click prints it after this
                self.logger.error("exit %d %s: %s", error.exit_code, took, error.format_message())
            elif isinstance(error, (SystemExit, click.exceptions.Exit)):  # its error line is logged already
                self.logger.error("exit %s %s", _exit_code(error), took)
            elif isinstance(error, (KeyboardInterrupt, click.Abort)):
                self.logger.error("exit: interrupted %s", took)
            else:  # a bug: its traceback goes to the log too
                self.logger.error("exit: failed %s: %s: %s", took, type(error).__name__, error, exc_info=error)
        finally:
            reporter.use(None)
            self.logger.removeHandler(self.handler)
            self.handler.close()
            self.handler = None
            level, self.logger.propagate = self.saved
            self.logger.setLevel(level)


def _exit_code(error: BaseException) -> int | str | None:
    """The exit code ``error`` ends the process with (0 for ``sys.exit()``), None for an exception."""
    if isinstance(error, SystemExit):
        return 0 if error.code is None else error.code
    if isinstance(error, click.exceptions.Exit):
        return error.exit_code
    return None
