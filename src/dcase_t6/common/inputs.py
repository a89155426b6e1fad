"""What an input path is, decided from its metadata alone (``os.stat``), never by opening it.

Inputs are read whole, so only regular files (or links to them) are accepted: a named pipe would block the
reader until some other process writes to it, and a device such as ``/dev/zero`` never ends. Such a path gets
an honest "not a regular file but a named pipe (FIFO)" message instead of "file not found".
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from dcase_t6.common.errors import UserError

MISSING = "file not found"
LOOP, FOLDER = "a symbolic link loop", "a folder, not a file"
_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an input file, or None when it is a regular file (or a link to one).

    Returns:
        :data:`MISSING` when nothing is there, else a short description: ``"not a regular file but a named
        pipe (FIFO)"`` (or a device, a socket), :data:`FOLDER`, :data:`LOOP`.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return MISSING
    except OSError as err:
        if err.errno == errno.ELOOP:
            return LOOP
        return f"cannot be read ({err.strerror or err})"
    except ValueError:  # an embedded NUL byte
        return MISSING
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return FOLDER
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"not a regular file but {kind}"


def require_file(path: str | os.PathLike, missing: str = MISSING) -> Path:
    """``path`` (as a Path) when it is a regular file; a UserError naming it otherwise.

    Args:
        path: the input.
        missing: the text after ``"<path>: "`` when nothing is there (each caller's "file not found; ..." with
            its fix); a pipe, device, socket, folder or looping link gets its own description and the fix.
    """
    problem = file_problem(path)
    if problem is None:
        return Path(path)
    if problem == MISSING:
        raise UserError(f"{path}: {missing}")
    raise UserError(f"{path}: {problem}; {fix_of(problem)}")


def fix_of(problem: str) -> str:
    """The fix of a :func:`file_problem` other than :data:`MISSING`."""
    if problem == LOOP:
        return "replace the link with a real path"
    if problem == FOLDER:
        return "give the path of a file"
    if problem.startswith("cannot be read"):
        return "make it and its folders readable for this user, or choose another path"
    return "pass the path of a regular file (dcase-t6 never reads from pipes, devices or sockets)"
