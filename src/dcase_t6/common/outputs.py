"""What a command may write: output paths that are not its inputs, folders it wrote itself, safe names."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dcase_t6 import __version__
from dcase_t6.common.errors import UserError


def same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two paths name one file: equal once resolved (symlinks, ``..``), or hard links of one file."""
    first, second = Path(first), Path(second)
    try:
        if first.resolve() == second.resolve():
            return True
    except (OSError, RuntimeError):  # a symbolic link loop: compared below by what it opens, if anything
        pass
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


# --- the one mechanism every command's outputs go through -------------------------------------------------------
#
# File outputs (``--out x.csv``, ``--per-query``, ``--csv``, ...): ``check_output_file`` before anything is read.
# Folder outputs replaced whole (``export --out``, ``explore --html``, ``prepare synthetic``'s dataset folder):
# ``check_output_dir`` before anything is read, then ``dcase_t6.common.fsops.replace_owned_dir``, which writes the
# marker (``MARKER``, listing every entry the tool wrote) into the new folder and checks the old one again just
# before replacing it. A folder is replaced only when it is absent, empty, or holds the marker and nothing that the
# marker does not list; never when it is, holds or is a link to an input or a protected folder (the work directory,
# the data root).

MARKER = ".dcase-t6-output.json"
NAME_LIMIT = 100


def resolved(path: str | os.PathLike, option: str) -> Path:
    """``path`` with every symbolic link and ``..`` resolved; a UserError for a symbolic link loop."""
    try:
        try:
            os.stat(Path(path).expanduser())
        except OSError as err:
            if err.errno == errno.ELOOP:  # Python >= 3.13 resolves a loop without an error
                raise
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python < 3.13)
        raise UserError(f"{option} {path}: cannot be resolved ({' '.join(str(err).split()) or 'symbolic link loop'}); "
                        f"replace the symbolic link loop with a real path") from None


def is_within(inner: Path, outer: Path) -> bool:
    """Whether resolved ``inner`` is ``outer`` or lies inside it."""
    return inner == outer or outer in inner.parents


def _check_parent(path: Path, option: str) -> None:
    """The nearest existing folder above ``path`` must be a folder this process may write in."""
    for ancestor in path.parents:
        if not os.path.lexists(ancestor):
            continue
        if not ancestor.is_dir():
            raise UserError(f"{option} {path}: {ancestor} is a file, not a folder; choose a path in a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            if os.statvfs(ancestor).f_flag & os.ST_RDONLY:
                raise UserError(f"{option} {path}: {ancestor} is on a read-only file system; choose a folder on a "
                                "writable disk")
            raise UserError(f"{option} {path}: cannot write in {ancestor} (permission denied); choose a folder you "
                            "may write in")
        return


def check_output_file(output: str | os.PathLike, option: str,
                      inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
                      protected: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> None:
    """A UserError unless ``output`` (given as ``option``) can be written as a file without harming anything.

    Refused: a folder, a path below a file or in a folder that cannot be written, a symbolic link loop, the same file
    as one of ``inputs`` ((option, path) pairs; hard and symbolic links included), a path inside one of the
    ``protected`` folders (the work directory). Call it before reading anything.
    """
    path = Path(output).expanduser().absolute()
    target = resolved(path, option)
    if path.is_dir() or target.is_dir():
        raise UserError(f"{option} {output}: a folder, not a file; give the path of the file to write")
    _check_parent(target, option)
    for name, folder in protected:
        if folder is not None and is_within(target, resolved(folder, name)):
            raise UserError(f"{option} {output}: inside the {name} {folder}, which dcase-t6 manages; write it "
                            f"elsewhere")
    refuse_input_as_output(output, option, inputs)


@dataclass(frozen=True)
class OutputRequest:
    """An output folder as the user asked for it, and what writing it must leave alone.

    Args:
        output: the folder.
        option: how the user gave it (``--out``), for the message.
        force: whether an existing folder written by dcase-t6 may be replaced.
        force_option: the option that sets ``force`` (named in the message when it is missing).
        inputs: (option, path) of every input of the command: the folder must not be, hold or link to one.
        protected: (name, folder) that are never replaced, nor anything holding them (the work directory, the data
            root).
    """

    output: str | os.PathLike
    option: str
    force: bool = True
    force_option: str | None = None
    inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()
    protected: Iterable[tuple[str, str | os.PathLike | None]] = ()


@dataclass(frozen=True)
class FolderKind:
    """The kind of folder a command writes, as its checks and messages name it.

    Args:
        what: what the folder holds, for the message (``an explorer site``).
        legacy_marker: a file that marked this kind of folder before ``MARKER`` existed (its entries are not listed).
        remedy: what to do about a folder that dcase-t6 did not write (default: choose a new or empty folder).
        replaced: False for a folder that files are written into (``embed --out``), which is never replaced whole:
            only what may not be an output at all is refused then.
    """

    what: str = "an output folder"
    legacy_marker: str | None = None
    remedy: str | None = None
    replaced: bool = True


def check_output_dir(request: OutputRequest, kind: FolderKind = FolderKind()) -> Path:
    """A UserError unless the folder ``request.output`` (given as ``request.option``) may be written (replaced whole,
    unless ``kind.replaced`` is False); its absolute path otherwise. Call it before reading anything."""
    output, option = request.output, request.option
    path = Path(output).expanduser().absolute()
    target = resolved(path, option)
    if os.path.lexists(path) and not target.is_dir():
        raise UserError(f"{option} {output}: a file, not a folder; give a new folder")
    _check_parent(target, option)
    for name, folder in request.protected:
        if folder is not None and is_within(resolved(folder, name), target):
            holds = "is" if resolved(folder, name) == target else "holds"
            raise UserError(f"{option} {output}: {holds} the {name} {folder}, which is never replaced; choose another "
                            f"{option}")
    for name, source in request.inputs:
        if source is not None and (is_within(resolved(source, name), target) or same_file(source, target)):
            holds = "is" if resolved(source, name) == target else "holds"
            raise UserError(f"{option} {output}: {holds} the input {name} {source}; choose another {option} (an "
                            "output folder never is, holds or links to an input)")
    if kind.replaced and target.is_dir() and any(target.iterdir()):
        foreign = foreign_entries(target, kind.legacy_marker)
        if foreign is None:
            raise UserError(f"{option} {output}: the folder exists and is not {kind.what} written by dcase-t6 (no "
                            f"{MARKER}); {kind.remedy or 'choose a new or empty folder'} (nothing else is ever "
                            "replaced, even with --force)")
        if not request.force:
            raise UserError(f"{output}: already exists; choose another {option}, or replace it with "
                            f"{request.force_option or '--force'}")
        if foreign:
            raise UserError(f"{option} {output}: holds {foreign[0]!r}, which dcase-t6 did not write; move it out of "
                            "the folder first (the folder is replaced whole)")
    return path


def foreign_entries(folder: Path, legacy_marker: str | None = None) -> list[str] | None:
    """The entries of ``folder`` (relative, ``/``-separated) that its marker does not list; None when the folder has
    no marker (or an unreadable one), so that nothing in it is known to be dcase-t6's."""
    marker = folder / MARKER
    if not marker.is_file() or marker.is_symlink():
        return [] if legacy_marker and (folder / legacy_marker).is_file() else None
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))["entries"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    listed = set(listed) if isinstance(listed, list) else set()
    return [entry for entry in _entries(folder) if entry not in listed and entry != MARKER]


def mark_output(folder: Path, command: str) -> None:
    """Write the marker into ``folder`` (a finished output, before it is moved into place): the command and every
    entry it holds, so that only those are ever replaced."""

    payload = {"written_by": f"dcase-t6 {__version__}", "command": command,
               "note": "dcase-t6 replaces this folder only while it holds nothing but the entries listed here",
               "entries": _entries(folder)}
    (folder / MARKER).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


def _entries(folder: Path) -> list[str]:
    entries = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        entries.extend((base / name).as_posix() for name in dirs + files)
    return sorted(entries)


def check_name(value: object, where: str, limit: int = NAME_LIMIT) -> str:
    """A run, system, stage or pipeline name as one safe path component: 1 to ``limit`` characters, no ``/`` or
    ``\\``, not ``.`` or ``..``, no control character; a UserError naming ``where`` otherwise."""
    text = value if isinstance(value, str) else None
    problem = None
    if not text or not text.strip():
        problem = "is empty"
    elif len(text) > limit:
        problem = f"has {len(text)} characters (at most {limit})"
    elif "/" in text or "\\" in text:
        problem = "contains a path separator"
    elif text in (".", "..") or text.startswith("."):
        problem = "starts with '.'"
    elif any(ord(char) < 32 or ord(char) == 127 for char in text):
        problem = "contains a control character"
    if problem:
        shown = repr(value) if text is None or len(text) <= 40 else repr(text[:40] + "...")
        raise UserError(f"{where} {shown} {problem}; a name becomes a folder name: give 1 to {limit} characters "
                        "without '/', '\\' or control characters, not starting with '.'")
    return text
