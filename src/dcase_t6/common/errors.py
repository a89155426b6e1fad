"""Errors that reach the user as one clear line and a non-zero exit code."""


class UserError(Exception):
    """Bad input or a failed check: the message names the file, the row or field, and the fix."""

    exit_code = 2
