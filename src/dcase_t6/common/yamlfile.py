"""The one reader of configuration YAML (``train --config``, ``train --pipeline``, ``--set`` values).

Safe YAML (no Python objects), and bounded: a file of at most MAX_BYTES, nested at most MAX_DEPTH levels, and
at most MAX_VALUES values once every alias is expanded. Aliases (``&recipe`` ... ``*recipe``) stay allowed, since
the example pipelines repeat a recipe with them, but they are counted before anything is built, so an expansion
bomb ("billion laughs") or an alias inside the value it names is one ``UserError`` in milliseconds instead of a
hang, and deep nesting is one instead of a ``RecursionError``. (The submission metadata YAML has a stricter
reader built on the same depth guard that refuses aliases: ``submission.metadata``.)
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import require_file

MAX_BYTES = 1 << 20  # 1 MiB; the largest example (examples/aistat2025.yaml) is 6 kB
MAX_DEPTH = 64  # levels of nesting, aliases expanded; the example pipelines nest 8
MAX_VALUES = 100_000  # values (scalars, lists, mappings), aliases expanded; the example pipelines expand to < 1,000


class Refused(yaml.YAMLError):
    """Well-formed YAML that is refused (too deep, too large once expanded, ...); the message says why."""


class DepthLimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops composing at ``max_depth`` levels (before Python's recursion limit).

    The one depth guard of every YAML we read: this module's reader uses it as is, the submission metadata's
    stricter reader subclasses it (a lower bound, its own remedy, aliases refused).
    """

    max_depth = MAX_DEPTH
    depth_remedy = ""  # appended to the message, e.g. "; start from ..."

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise Refused(f"line {self.peek_event().start_mark.line + 1}: nested more than {self.max_depth} "
                              f"levels deep{self.depth_remedy}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, where: str) -> object:
    """The value of one YAML document, built only after its expanded size and depth are counted.

    Args:
        text: the YAML text.
        where: what it is (a file name, ``--set KEY=VALUE``), for the messages.

    Returns:
        The parsed value (None for an empty document).

    Raises:
        UserError: not valid YAML, more than one document, nested more than MAX_DEPTH levels, more than
            MAX_VALUES values with aliases expanded, or an alias inside the value it names.
    """
    loader = DepthLimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, {}, set(), 1)
        return loader.construct_document(node)
    except Refused as err:
        raise UserError(f"{where}: {err}; write the values out (at most {MAX_VALUES:,} values and {MAX_DEPTH} "
                        "levels, aliases expanded)") from None
    except (yaml.YAMLError, ValueError, OverflowError) as err:  # ValueError: an int of > 4300 digits, !!int abc
        raise UserError(f"{where}: not valid YAML ({_first_line(err)}); fix the syntax (indentation, quotes)") \
            from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str = "YAML file") -> object:
    """The value of the YAML file ``path`` (see ``load_yaml``), or a UserError naming the file.

    Args:
        path: the file.
        what: what the file is, for the messages (``config file``, ``pipeline file``).
    """
    path = require_file(path, f"{what} not found")  # never opens a pipe or a device
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UserError(f"{path}: {size:,} bytes, more than the {MAX_BYTES:,} a {what} may have")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason}); save the {what} as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
    return load_yaml(text, str(path))


def _measure(node: yaml.Node, sizes: dict[int, int], path: set[int], depth: int) -> int:
    """The number of values ``node`` stands for with its aliases expanded; each node is counted once (an alias
    is the node it names), so a bomb is measured in time linear in the text."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in path:
        raise Refused(f"line {node.start_mark.line + 1}: an alias inside the value it names (a value that "
                       "contains itself)")
    if depth > MAX_DEPTH:
        raise Refused(f"line {node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep with its "
                       "aliases expanded")
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [item for pair in node.value for item in pair]
    else:
        children = []
    path.add(key)
    size = 1
    for child in children:
        size += _measure(child, sizes, path, depth + 1)
        if size > MAX_VALUES:
            raise Refused(f"line {node.start_mark.line + 1}: expands to more than {MAX_VALUES:,} values with its "
                           "aliases expanded (an alias bomb?)")
    path.discard(key)
    sizes[key] = size
    return size


def _first_line(err: Exception) -> str:
    """A YAML error as one short line: its problem and line, or its first line."""
    mark = getattr(err, "problem_mark", None)
    if getattr(err, "problem", None) and mark is not None:
        return f"{err.problem} at line {mark.line + 1}"[:200]
    lines = str(err).strip().splitlines()
    return " ".join(lines[0].split())[:200] if lines else type(err).__name__
