"""Output paths that must not be one of the command's inputs (writing would replace the input)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from dcase_t6.common.errors import UserError


def same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two paths name one file: equal once resolved (symlinks, ``..``), or hard links of one file."""
    first, second = Path(first), Path(second)
    if first.resolve() == second.resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def refuse_input_as_output(output: str | os.PathLike, option: str, inputs: Iterable[tuple[str, str | os.PathLike]]
                           ) -> None:
    """A UserError if ``output`` (given as ``option``) is the same file as any (option, path) of ``inputs``.

    Call before reading anything, so that nothing is computed for a write that would destroy an input.
    """
    for input_option, path in inputs:
        if path is not None and same_file(output, path):
            raise UserError(f"{option} {output}: the same file as the input {input_option} {path}; writing it would "
                            f"replace that input: choose another {option} path")
