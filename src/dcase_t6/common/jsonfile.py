"""The one reader and writer of JSON documents.

Contract: :func:`read_json` fails with a :class:`UserError` naming the file and how to make or fix it
when the file is absent, not JSON or nested too deeply to read; a caller that tolerates a missing file
checks ``path.exists()`` itself. :func:`write_json` replaces the file atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from dcase_t6.common.atomic import atomic_open
from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import require_file


def read_json(path: str | Path, remedy: str) -> object:
    """The parsed contents of ``path``; a UserError ending with ``remedy`` if it is absent or not JSON."""
    path = require_file(path, f"file not found; {remedy}")  # never opens a pipe or a device
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; {remedy}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not JSON ({' '.join(str(err).split())}); {remedy}") from None
    except RecursionError:  # arrays or objects nested about 1,000 deep: no file of ours nests more than 5
        raise UserError(f"{path}: JSON nested too deeply to read (hundreds of levels); {remedy}") from None


def write_json(payload: object, path: str | Path, sort_keys: bool = False) -> None:
    """Write ``payload`` as indented UTF-8 JSON (with a final newline), atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False, sort_keys=sort_keys)
        handle.write("\n")
