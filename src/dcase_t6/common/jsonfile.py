"""Reading a JSON file the user passes in: a missing or malformed file is one line that says how to make it."""

from __future__ import annotations

import json
from pathlib import Path

from dcase_t6.common.errors import UserError


def read_json(path: str | Path, remedy: str) -> object:
    """The parsed contents of ``path``; a UserError ending with ``remedy`` if it is absent or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; {remedy}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not JSON ({' '.join(str(err).split())}); {remedy}") from None
