"""Command line: parses options, calls the library, renders its results. One module per command group:
``prepare``, ``train`` (train, embed, runs), ``evaluate``, ``ensemble``, ``package``."""

from __future__ import annotations

import json
import sys

import click
from rich.markup import escape

from dcase_t6 import __version__
from dcase_t6.common.console import console, stderr_console
from dcase_t6.common.errors import UserError

__all__ = ["Group", "console", "main", "matrix_path", "print_json", "stderr_console", "system_paths"]


class Group(click.Group):
    """Click group that turns a UserError into one red line on stderr and a non-zero exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as err:
            stderr_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            sys.exit(err.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dcase-t6")
@click.option("--workdir", envvar="DCASE_T6_WORKDIR", default="dcase-t6-work", show_default=True,
              type=click.Path(file_okay=False), help="Work directory holding the run registry, checkpoints and "
              "outputs (env DCASE_T6_WORKDIR).")
@click.pass_context
def main(ctx, workdir):
    """dcase-t6: language-based audio retrieval for DCASE Task 6.

    \b
    Pipeline: prepare -> train -> embed -> ensemble -> evaluate -> package.
    Run `dcase-t6 COMMAND --help` for the options and an example of each command.
    """
    ctx.obj = {"workdir": workdir}


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")


def print_json(payload) -> None:
    """Print ``payload`` as indented JSON on stdout (the ``--json`` output of every command)."""
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def matrix_path(reference: str) -> str:
    """A matrix file, or a registered run's output named RUN:DATASET/SPLIT, as a path."""
    from dcase_t6.registry import resolve_matrix

    return resolve_matrix(reference, click.get_current_context().obj["workdir"])


def system_paths(systems: tuple[str, ...]) -> tuple[str, ...]:
    """``NAME=REFERENCE`` options with each reference resolved to a matrix path."""
    resolved = []
    for option in systems:
        name, separator, reference = option.partition("=")
        resolved.append(f"{name}={matrix_path(reference)}" if separator and reference else option)
    return tuple(resolved)


from dcase_t6.cli import augment, ensemble, evaluate, explore, package, prepare, share, train  # noqa: E402,F401  (registers the commands)
