"""Submission metadata (``<label>.meta.yaml``): the template, schema validation and ``--init-meta``.

The JSON Schema ``submission/templates/meta_schema.json`` encodes the organisers' checks; a keyword's optional
``x-messages`` entry gives the error text printed for it (``{instance!r}`` is the offending value).

Messages quote at most SHOWN characters of a value or key, then its length: a 200 KB value is named, not echoed.
Keys must be texts: YAML reads ``1:``, ``true:``, ``yes:``, ``null:`` or ``2025-06-01:`` as a number, a boolean,
null or a date, which is refused with its line (quote it).
"""

from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import jsonschema
import yaml

from dcase_t6.common.atomic import atomic_open
from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import require_file
from dcase_t6.common.jsonfile import read_json
from dcase_t6.common.yamlfile import DepthLimitedLoader, Refused
from dcase_t6.retrieval.metrics import METRIC_KEYS

if TYPE_CHECKING:
    from dcase_t6.submission.systems import SystemDescription

TEMPLATE_NAME = "meta_template.yaml"
SCHEMA_NAME = "meta_schema.json"
LABEL_FORM = "<Lastname>_<INSTITUTE>_task6_<1-4>"
MAX_META_BYTES = 256 << 10  # the template is 10 kB; parsing (pure-Python, to refuse aliases) takes ~2 s at the bound
MAX_DEPTH = 32  # the template nests 5 levels
SHOWN = 80  # characters of a value or key quoted in a message
MAX_MESSAGE = 300  # characters of one problem line
_MERGE_TAG = "tag:yaml.org,2002:merge"
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue"})
_LETTERS = str.maketrans({"ß": "ss", "ł": "l", "ø": "o", "æ": "ae", "œ": "oe", "đ": "d", "þ": "th", "ı": "i"})


class _StrictLoader(DepthLimitedLoader):
    """The bounded YAML loader (``common.yamlfile``), stricter: nesting at most MAX_DEPTH, aliases refused (no
    expansion bombs), unknown tags and duplicate keys refused (SafeLoader silently keeps the last value)."""

    max_depth = MAX_DEPTH
    depth_remedy = "; start from `dcase-t6 package --init-meta`"

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise Refused(f"line {event.start_mark.line + 1}: YAML alias *{event.anchor} refused (aliases can "
                          "expand without bound); write the value out in full")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            _check_unique_keys(self, node)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, KeyError, AttributeError, TypeError) as err:  # !!int abc, !!bool x
            raise Refused(f"line {node.start_mark.line + 1}: {_short_tag(node.tag)} value does not convert "
                           f"({_one_line(err)}); write a plain value") from None

    def construct_undefined(self, node):
        raise Refused(f"line {node.start_mark.line + 1}: YAML tag {_short_tag(node.tag)} refused; remove the tag "
                       "and write a plain value")


def _short_tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!", 1)


_StrictLoader.add_constructor(None, _StrictLoader.construct_undefined)


def _check_unique_keys(loader: _StrictLoader, node: yaml.MappingNode) -> None:
    """Every key of ``node`` a text (not a number, boolean, null or date YAML reads it as) and unique."""
    seen: dict[str, yaml.Node] = {}
    for key_node, _ in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == _MERGE_TAG:
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            what = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
            raise Refused(f"line {line}: a key that is a {what}; metadata keys are texts: write `name: value`")
        key = loader.construct_object(key_node)
        if not isinstance(key, str):
            raise Refused(f"line {line}: key {_shown(key_node.value)} is read by YAML as {_kind(key)}, not a text; "
                           f"metadata keys are texts: quote it (\"{_clip(key_node.value)}\":) or remove it")
        first = seen.setdefault(key, key_node)
        if first is not key_node:
            raise Refused(f"line {line}: duplicate key {_shown(key_node.value)} (first on line "
                           f"{first.start_mark.line + 1}); keep one of them (YAML would silently keep the last)")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {_clip(repr(value))}"
    return f"a {type(value).__name__}"  # date, datetime, bytes (!!binary)


def _clip(text: str, limit: int = SHOWN) -> str:
    """``text``, or its first ``limit`` characters and its length."""
    return text if len(text) <= limit + 20 else f"{text[:limit]}... ({len(text):,} characters)"


def _shown(value: object) -> str:
    """``repr(value)`` for a message: a text longer than SHOWN characters is cut, with its length."""
    text = repr(value)
    if len(text) <= SHOWN + 20:
        return text
    size = len(value) if isinstance(value, str) else len(text)
    return f"{text[:SHOWN]}... ({size:,} characters)"


class _Shown:
    """A value in an ``x-messages`` text: ``{instance!r}`` and ``{instance}`` are cut like :func:`_shown`."""

    def __init__(self, value: object):
        self.value = value

    def __repr__(self) -> str:
        return _shown(self.value)

    def __format__(self, spec: str) -> str:
        return _clip(format(self.value, spec))


def template_text() -> str:
    """The metadata YAML template shipped in ``dcase_t6.submission.templates``, comments included."""
    return files("dcase_t6.submission.templates").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The JSON Schema of the metadata file."""
    return json.loads(files("dcase_t6.submission.templates").joinpath(SCHEMA_NAME).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def label_problem(label: str) -> str | None:
    """Why ``label`` is not a valid submission label, or None when it is."""
    if re.fullmatch(schema()["$defs"]["label"]["pattern"], label):
        return None
    return (f"label {label!r} is not of the form {LABEL_FORM} (letters and - in the name; letters, digits "
            "and - in the institute; no other _), e.g. Primus_CP-JKU_task6_1")


def team_of(label: str) -> str:
    """The team part ``<Lastname>_<INSTITUTE>`` of a valid label."""
    return label.rsplit("_task6_", 1)[0]


def decode_meta(raw: bytes, where: str) -> dict:
    """Parse raw metadata bytes (UTF-8 YAML: safe, no aliases, no duplicate keys) into a mapping.

    Args:
        raw: the file's bytes (at most MAX_META_BYTES).
        where: the file's name, for the messages.

    Returns:
        The parsed mapping.

    Raises:
        UserError: one line naming the file, the line or reason, and the fix.
    """
    if len(raw) > MAX_META_BYTES:
        raise UserError(f"{where}: more than {MAX_META_BYTES:,} bytes, too large for a metadata file (the template "
                        "is 10 kB); start from `dcase-t6 package --init-meta`")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{where}: not UTF-8 text ({err.reason}); save the YAML as UTF-8") from None
    try:
        meta = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader, stricter
    except Refused as err:
        raise UserError(f"{where}: {err}") from None
    except (yaml.YAMLError, ValueError) as err:  # ValueError: a tagged value that does not convert (!!int abc)
        raise UserError(f"{where}: not valid YAML ({_one_line(err)}); fix the syntax (indentation, quotes)") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where}: expected a YAML mapping with submission, system and results; "
                        f"found {type(meta).__name__}; start from `dcase-t6 package --init-meta`")
    return meta


def meta_problems(meta: dict, label: str) -> list[str]:
    """Every schema violation and non-finite number as ``path: message``, plus a mismatch of ``submission.label``
    with ``label``."""
    errors = sorted(_validator().iter_errors(meta), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [_clip(f"{_path(error.absolute_path)}: {_message(error)}", MAX_MESSAGE) for error in errors
                if _finite(error.instance)]
    problems += [f"{_path(path)}: {value} is not a finite number; write a number (results: a fraction in [0, 1])"
                 for path, value in _non_finite(meta)]
    submission = meta.get("submission")
    found = submission.get("label") if isinstance(submission, dict) else None
    if isinstance(found, str) and found != label:
        problems.append(f"submission.label: {_shown(found)} differs from the label {label!r} of the files and "
                        "folder; they must be equal")
    return problems


def meta_warnings(meta: dict, label: str) -> list[str]:
    """Where ``label`` breaks the organisers' convention ``<Lastname>_<INSTITUTE>_task6_<n>`` of the corresponding
    author (last name, affiliation abbreviation); accents, case, hyphens and a shortened double name are allowed.

    Args:
        meta: the parsed metadata.
        label: the system label.

    Returns:
        One warning line per mismatch (none when the label or the author is not filled in).
    """
    author = _corresponding_author(meta)
    if author is None or label_problem(label):
        return []
    name, institute = team_of(label).split("_", 1)
    affiliation = author.get("affiliation")
    lastname = author.get("lastname")
    abbreviation = affiliation.get("abbreviation") if isinstance(affiliation, dict) else None
    warnings = []
    if isinstance(lastname, str) and lastname.strip() and not _same_name(name, lastname):
        warnings.append(f"submission.label: {label!r} starts with {name!r}, not the corresponding author's lastname "
                        f"{_shown(lastname)}; the organisers' convention is <Lastname>_<INSTITUTE>_task6_<n>")
    if isinstance(abbreviation, str) and abbreviation.strip() and _plain(institute) != _plain(abbreviation):
        warnings.append(f"submission.label: {label!r} names institute {institute!r}, not the corresponding author's "
                        f"affiliation abbreviation {_shown(abbreviation)}; the organisers' convention is "
                        "<Lastname>_<INSTITUTE>_task6_<n>")
    return warnings


def read_meta(path: str | Path, label: str) -> tuple[bytes, dict]:
    """Read and validate the metadata file of system ``label``; returns its raw bytes and parsed content."""
    path = Path(path)
    require_file(path, f"file not found; create it with `dcase-t6 package --init-meta --label {label} --out {path}`")
    with open(path, "rb") as handle:
        raw = handle.read(MAX_META_BYTES + 1)
    meta = decode_meta(raw, str(path))
    problems = meta_problems(meta, label)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise UserError(f"{path}: {len(problems)} metadata problem(s); fix these fields:\n{listing}")
    return raw, meta


def read_results(path: str | Path) -> dict[str, float]:
    """The metrics of a ``dcase-t6 evaluate --json`` output: every key of METRIC_KEYS, fractions in [0, 1]."""
    path = Path(path)
    payload = read_json(path, f"write it with `dcase-t6 evaluate ... --json > {path}`")
    if not isinstance(payload, dict):
        raise UserError(f"{path}: expected a JSON object with keys {', '.join(METRIC_KEYS)}")
    results = {}
    for key in METRIC_KEYS:
        value = payload.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise UserError(f"{path}: {key} is {value!r}; expected a fraction in [0, 1] as printed by "
                            "`dcase-t6 evaluate --json`")
        results[key] = float(value)
    return results


def render_meta(label: str, results: dict[str, float] | None = None, total_parameters: int | None = None,
                system: SystemDescription | None = None) -> str:
    """The template text with ``submission.label`` and, if given, the development-testing results, the
    parameter count and a system description (every ``system`` field, from ``submission.systems.describe_runs``)
    filled in; the comments are kept."""
    problem = label_problem(label)
    if problem:
        raise UserError(f"--label: {problem}")
    text = _set_value(template_text(), "label", label)
    for key, value in (results or {}).items():
        text = _set_value(text, key, value)
    if system is not None:
        for key, value in system.description.items():
            text = _set_value(text, key, value)
        text = _set_block(text, "training_datasets", system.training_datasets)
        text = _set_block(text, "validation_datasets", system.validation_datasets)
        if total_parameters is None:
            total_parameters = system.total_parameters
    if total_parameters is not None:
        text = _set_value(text, "total_parameters", total_parameters)
    return text


def init_meta(label: str, out: str | Path, results_path: str | Path | None = None,
              total_parameters: int | None = None, system: SystemDescription | None = None) -> None:
    """Write a pre-filled metadata file for ``label`` to ``out``; never overwrites an existing file."""
    out = Path(out)
    if out.exists():
        raise UserError(f"{out}: already exists; choose another --out or delete it first (it may hold your edits)")
    text = render_meta(label, read_results(results_path) if results_path else None, total_parameters, system)
    with atomic_open(out, "w", encoding="utf-8") as handle:
        handle.write(text)


def _set_value(text: str, key: str, value: str | float) -> str:
    """Replace the value of the first line ``<indent>key: ...`` of ``text``, keeping everything else."""
    scalar = yaml.safe_dump(value, allow_unicode=True, width=float("inf")).split("\n", 1)[0]  # one line, unwrapped
    pattern = re.compile(rf"^([ \t]*{re.escape(key)}:)[^\n]*$", flags=re.M)
    return pattern.sub(lambda match: f"{match.group(1)} {scalar}", text, count=1)


def _set_block(text: str, key: str, items: list[dict]) -> str:
    """Replace the list under the first line ``<indent>key:`` (up to the next blank line) with ``items``."""
    match = re.search(rf"^([ \t]*){re.escape(key)}:[ \t]*\n(?:[^\n]*\S[^\n]*\n)*", text, flags=re.M)
    if match is None or not items:
        return text
    indent = match.group(1) + "  "
    dumped = yaml.safe_dump(items, allow_unicode=True, sort_keys=False, default_flow_style=False, width=1000)
    block = "".join(f"{indent}{line}\n" for line in dumped.splitlines())
    return f"{text[:match.start()]}{match.group(1)}{key}:\n{block}{text[match.end():]}"


def _path(parts) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{_clip(str(part))}" for part in parts)
    return text.lstrip(".") or "(top level)"


def _message(error: jsonschema.ValidationError) -> str:
    custom = error.schema.get("x-messages", {}).get(error.validator) if isinstance(error.schema, dict) else None
    if custom:
        return custom.format(instance=_Shown(error.instance))
    whole = repr(error.instance)  # jsonschema's own messages quote the value whole
    return error.message.replace(whole, _shown(error.instance)) if len(whole) > SHOWN + 20 else error.message


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _finite(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _non_finite(value, path: tuple = ()):
    """``(path, value)`` of every NaN or infinite float in the parsed YAML (bounded: MAX_DEPTH, no aliases)."""
    if not _finite(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, (*path, index))


def _corresponding_author(meta: dict) -> dict | None:
    submission = meta.get("submission")
    authors = submission.get("authors") if isinstance(submission, dict) else None
    marked = [a for a in authors if isinstance(a, dict) and a.get("corresponding") is True] \
        if isinstance(authors, list) else []
    return marked[0] if len(marked) == 1 else None


def _plain(text: str, umlauts: bool = False) -> str:
    """Lower-case ASCII letters and digits of ``text`` (accents dropped; ä -> ae with ``umlauts``)."""
    text = text.casefold().translate(_LETTERS)
    text = unicodedata.normalize("NFKD", text.translate(_UMLAUTS) if umlauts else text)
    return "".join(char for char in text if char.isascii() and char.isalnum())


def _same_name(label_name: str, lastname: str) -> bool:
    """Whether a label's name part spells ``lastname``, whole or some of its parts (Mueller: Müller-Lüdenscheidt)."""
    given = [_plain(part) for part in label_name.split("-") if part]
    for umlauts in (False, True):
        parts = [_plain(part, umlauts) for part in re.split(r"[\s-]+", lastname) if _plain(part, umlauts)]
        if "".join(given) == "".join(parts) or set(given) <= set(parts) or set(parts) <= set(given):
            return True
    return False
