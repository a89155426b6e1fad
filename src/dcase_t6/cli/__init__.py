"""Command line: parses options, calls the library, renders its results. One module per command group:
``prepare``, ``augment``, ``train``, ``embed``, ``runs``, ``evaluate``, ``ensemble``, ``explore``, ``package``,
``share`` (export); ``console`` holds the rich consoles and the Reporter every command passes to the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.markup import escape

from dcase_t6 import __version__
from dcase_t6.cli.console import console, stderr_console
from dcase_t6.cli.logfile import CommandLog
from dcase_t6.common.errors import UserError, file_system_error

__all__ = ["Group", "console", "main", "matrix_path", "print_json", "print_summary", "split_named", "stderr_console"]


class Group(click.Group):
    """Click group that turns a UserError, or a file system's refusal (``file_system_error``), into one red line on
    stderr and a non-zero exit code. The top group also ends the ``--log-file`` log (``cli/logfile.py``)."""

    def parse_args(self, ctx, args):
        if ctx.parent is None:  # the command line as typed, for the log
            ctx.meta[_ARGV] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        if ctx.parent is not None:
            return self._invoke(ctx)
        try:
            result = self._invoke(ctx)
        except BaseException as err:
            _close_log(ctx, err)
            raise
        _close_log(ctx, None)
        return result

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            _exit_with(err, ctx)
        except (OSError, RuntimeError) as err:  # a full disk, a read-only file, a link loop...: one line too
            translated = file_system_error(err)
            if translated is None:
                raise
            _exit_with(translated, ctx)


_ARGV = "dcase_t6.argv"


def _command_log(ctx) -> CommandLog | None:
    return (ctx.find_root().obj or {}).get("log")


def _close_log(ctx, error: BaseException | None) -> None:
    if _command_log(ctx) is not None:
        _command_log(ctx).close(error)


def _exit_with(err: UserError, ctx) -> None:
    stderr_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    if _command_log(ctx) is not None:
        _command_log(ctx).error(str(err))
    sys.exit(err.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dcase-t6")
@click.option("--workdir", envvar="DCASE_T6_WORKDIR", default="dcase-t6-work", show_default=True,
              type=click.Path(file_okay=False), help="Work directory holding the run registry, checkpoints and "
              "outputs (env DCASE_T6_WORKDIR).")
@click.option("--log-file", envvar="DCASE_T6_LOG_FILE", type=click.Path(), metavar="FILE",
              help="Also append the command line, its info and warning lines, each task's start and end and how it "
              "ended, as timestamped lines, to this file (a new file, or a log this tool started; env "
              "DCASE_T6_LOG_FILE).")
@click.pass_context
def main(ctx, workdir, log_file):
    """dcase-t6: language-based audio retrieval for DCASE Task 6.

    \b
    Pipeline: prepare -> train -> embed -> ensemble -> evaluate -> package.
    Run `dcase-t6 COMMAND --help` for the options and an example of each command.
    """
    ctx.obj = {"workdir": workdir}
    if log_file:
        ctx.obj["log"] = CommandLog(log_file, ctx.meta.get(_ARGV, []))


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")


def print_json(payload) -> None:
    """Print ``payload`` as indented JSON on stdout (the ``--json`` output of every command)."""
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def print_summary(summary: dict, as_json: bool) -> None:
    """A command's summary: one JSON object with ``--json``, else one ``key: value`` line per entry."""
    if as_json:
        print_json(summary)
        return
    for key, value in summary.items():
        console.print(f"[bold]{key}[/]: {value}", highlight=False)


def matrix_path(reference: str, kind: str = "similarity") -> str:
    """A matrix file, or a registered run's output named RUN:DATASET/SPLIT (its file of ``kind``), as a path."""
    from dcase_t6.runs.registry import resolve_matrix

    return resolve_matrix(reference, click.get_current_context().obj["workdir"], kind)


def split_named(option: str, flag: str, example: str | None = None) -> tuple[str | None, str]:
    """``NAME=REFERENCE`` as (NAME, REFERENCE): the one parser of named options (``--system``, ``--predictions``).

    A value that is an existing file, or has no ``=`` with a name and a reference around it, has no name;
    that is a UserError when ``example`` is given (the option requires a name), else (None, value).
    """
    name, separator, reference = option.partition("=")
    if separator and name.strip() and reference.strip() and not Path(option).exists():
        return name.strip(), reference.strip()
    if example is not None:
        raise UserError(f"{flag} {option!r}: expected NAME=PATH, e.g. {flag} {example}")
    return None, option


from dcase_t6.cli import (  # noqa: E402,F401  (registers the commands)
    augment,
    embed,
    ensemble,
    evaluate,
    explore,
    package,
    prepare,
    runs,
    search,
    share,
    train,
)
