"""Errors that reach the user as one clear line and a non-zero exit code.

:func:`file_system_error` turns what the operating system says about a file (a full disk, a read-only file system,
a missing permission, a symbolic link loop, a file where a folder belongs...) into such a line: the file, what is
wrong, the fix.
"""

from __future__ import annotations

import errno
import os

_FAILURES = {  # errno -> (what is wrong, the fix)
    errno.ENOSPC: ("no space left on its disk", "free space there, or write to another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space within the quota, or write to another disk"),
    errno.EFBIG: ("file too large (over the file-size limit, see `ulimit -f`, or the file system's largest file)",
                  "raise the limit, or write to another disk"),
    errno.EROFS: ("on a read-only file system", "write to a writable disk (another --workdir or output path)"),
    errno.EACCES: ("permission denied", "make it (and its folder) readable and writable for this user "
                                        "(chmod/chown), or choose another path"),
    errno.EPERM: ("operation not permitted", "make it (and its folder) writable for this user (chmod/chown, "
                                             "chattr -i), or choose another path"),
    errno.ELOOP: ("a symbolic link loop", "replace the link with a real path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter name or path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose a path in a folder"),
    errno.EISDIR: ("a folder, not a file", "give the path of a file"),
    errno.EEXIST: ("exists, but not as the folder needed here (a file, or a broken or looping link)",
                   "move it away, or choose another path"),
    errno.EIO: ("input/output error (a failing disk or network mount)", "check the disk, or use another one"),
}


class UserError(Exception):
    """Bad input or a failed check: the message names the file, the row or field, and the fix."""

    exit_code = 2


def file_system_error(err: BaseException, path: str | os.PathLike | None = None) -> UserError | None:
    """The UserError saying why the file system refused: ``err`` an OSError of a known kind (full disk, read-only,
    permission, link loop, name too long, file/folder mix-up) or pathlib's "Symlink loop" RuntimeError; None for
    anything else, which stays a bug to see whole.

    Args:
        err: what was raised.
        path: the file concerned when ``err`` does not name one (a write to an open file).

    Returns:
        One line: the file, what is wrong, the fix.
    """
    if isinstance(err, RuntimeError) and str(err).startswith("Symlink loop"):
        shown = str(err).removeprefix("Symlink loop from").strip().strip("'") or path or "a path"
        return UserError(f"{shown}: {_FAILURES[errno.ELOOP][0]}; {_FAILURES[errno.ELOOP][1]}")
    if not isinstance(err, OSError) or err.errno not in _FAILURES:
        return None
    what, fix = _FAILURES[err.errno]
    named = err.filename if err.filename is not None else path
    if named is None:
        return UserError(f"a file could not be written or read: {what}; {fix}")
    target = f" (to {os.fsdecode(err.filename2)})" if err.filename2 is not None else ""
    return UserError(f"{os.fsdecode(named)}{target}: {what}; {fix}")
