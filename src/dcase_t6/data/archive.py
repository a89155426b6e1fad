"""Safe 7z extraction: no member may leave the target folder, and nothing is half-written.

Members are checked before extraction (no absolute path, no ``..``, no symbolic link), the archive is
extracted into a temporary folder beside the target, the extracted tree is checked again (no link,
nothing resolving outside), and only then renamed into place. The ``7z`` binary is used when it is on
PATH (``7z``, ``7zz`` or ``7za``), py7zr otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import py7zr

from dcase_t6.common.errors import UserError
from dcase_t6.common.fsops import replace_dir, staging_dir

_SYMLINK_MODE = re.compile(r"(^|\s)l[r-][w-][xsS-]")


def extract_7z(archive: Path, target: Path) -> int:
    """Extract ``archive`` into ``target`` (replacing it) safely; return the number of files."""
    binary = seven_zip_binary()
    members = _list_with_binary(binary, archive) if binary else _list_with_py7zr(archive)
    for name, is_link in members:
        _check_member(archive, name, is_link)
    with staging_dir(target) as tmp:
        _extract_with_binary(binary, archive, tmp) if binary else _extract_with_py7zr(archive, tmp)
        files = _check_tree(archive, tmp)
        replace_dir(_content_root(tmp), target)
    return files


def seven_zip_binary() -> str | None:
    """Path of a 7-Zip command line tool, if one is installed."""
    return next((found for name in ("7z", "7zz", "7za") if (found := shutil.which(name))), None)


def _check_member(archive: Path, name: str, is_link: bool) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(archive, name, "is an absolute path")
    if ".." in path.parts:
        raise _unsafe(archive, name, "contains '..'")
    if is_link:
        raise _unsafe(archive, name, "is a symbolic link")


def _unsafe(archive: Path, name: str, why: str) -> UserError:
    return UserError(f"{archive}: member {name!r} {why} and could write outside the target folder; "
                     "nothing was extracted: use the original archive")


def _corrupt(archive: Path, err: Exception | str) -> UserError:
    return UserError(f"{archive}: cannot extract ({err}); the archive is truncated or corrupt: delete it and "
                     "re-run (without --archives it is downloaded again), or fetch it again yourself")


def _list_with_py7zr(archive: Path) -> list[tuple[str, bool]]:
    try:
        with py7zr.SevenZipFile(archive) as handle:
            return [(info.filename, info.is_symlink) for info in handle.list()]
    except Exception as err:  # py7zr raises many types on damaged input
        raise _corrupt(archive, f"{type(err).__name__}: {err}") from None


def _extract_with_py7zr(archive: Path, folder: Path) -> None:
    try:
        with py7zr.SevenZipFile(archive) as handle:
            handle.extractall(path=folder)
    except OSError as err:
        raise UserError(f"{archive}: cannot write the extracted files into {folder.parent} ({err.strerror}); "
                        "free disk space or fix permissions and re-run") from None
    except Exception as err:  # py7zr raises many types on damaged input
        raise _corrupt(archive, f"{type(err).__name__}: {err}") from None


def _list_with_binary(binary: str, archive: Path) -> list[tuple[str, bool]]:
    result = _run_binary([binary, "l", "-slt", "-ba", "--", str(archive)], archive)
    members: list[tuple[str, bool]] = []
    for line in result.splitlines():
        if line.startswith("Path = "):
            members.append((line[len("Path = "):], False))
        elif line.startswith("Attributes = ") and members:
            members[-1] = (members[-1][0], bool(_SYMLINK_MODE.search(line[len("Attributes = "):])))
    return members


def _extract_with_binary(binary: str, archive: Path, folder: Path) -> None:
    _run_binary([binary, "x", "-y", "-bd", f"-o{folder}", "--", str(archive)], archive)


def _run_binary(command: list[str], archive: Path) -> str:
    result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise _corrupt(archive, f"{Path(command[0]).name} exit {result.returncode}: {lines[-1] if lines else ''}")
    return result.stdout


def _check_tree(archive: Path, folder: Path) -> int:
    """Second line of defence after extraction: no link and nothing resolving outside ``folder``."""
    root = folder.resolve()
    files = 0
    for path in folder.rglob("*"):
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise _unsafe(archive, str(path.relative_to(folder)), "is a link")
        files += path.is_file()
    return files


def _content_root(folder: Path) -> Path:
    """The archive's single top-level folder (Clotho archives hold ``development/...``), else ``folder``."""
    children = list(folder.iterdir())
    return children[0] if len(children) == 1 and children[0].is_dir() else folder
