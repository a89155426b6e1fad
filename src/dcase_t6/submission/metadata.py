"""Submission metadata (``<label>.meta.yaml``): the template, schema validation and ``--init-meta``.

The JSON Schema ``submission/templates/meta_schema.json`` encodes the organisers' checks; a keyword's optional
``x-messages`` entry gives the error text printed for it (``{instance!r}`` is the offending value).
"""

from __future__ import annotations

import functools
import json
import re
from importlib.resources import files
from pathlib import Path

import jsonschema
import yaml

from dcase_t6.common.atomic import atomic_open
from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json
from dcase_t6.retrieval.metrics import METRIC_KEYS

TEMPLATE_NAME = "meta_template.yaml"
SCHEMA_NAME = "meta_schema.json"
LABEL_FORM = "<Lastname>_<INSTITUTE>_task6_<1-4>"


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
    """Parse raw metadata bytes (UTF-8 YAML, ``yaml.safe_load``) into a mapping; ``where`` names the file."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{where}: not UTF-8 text ({err.reason}); save the YAML as UTF-8") from None
    try:
        meta = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{where}: not valid YAML ({_one_line(err)}); fix the syntax (indentation, quotes)") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where}: expected a YAML mapping with submission, system and results; "
                        f"found {type(meta).__name__}; start from `dcase-t6 package --init-meta`")
    return meta


def meta_problems(meta: dict, label: str) -> list[str]:
    """Every schema violation as ``path: message``, plus a mismatch of ``submission.label`` with ``label``."""
    problems = [f"{_path(error.absolute_path)}: {_message(error)}"
                for error in sorted(_validator().iter_errors(meta), key=lambda e: [str(p) for p in e.absolute_path])]
    submission = meta.get("submission")
    found = submission.get("label") if isinstance(submission, dict) else None
    if isinstance(found, str) and found != label:
        problems.append(f"submission.label: {found!r} differs from the label {label!r} of the files and folder; "
                        "they must be equal")
    return problems


def read_meta(path: str | Path, label: str) -> tuple[bytes, dict]:
    """Read and validate the metadata file of system ``label``; returns its raw bytes and parsed content."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; create it with "
                        f"`dcase-t6 package --init-meta --label {label} --out {path}`")
    raw = path.read_bytes()
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


def render_meta(label: str, results: dict[str, float] | None = None, total_parameters: int | None = None) -> str:
    """The template text with ``submission.label`` and, if given, the development-testing results and the
    parameter count filled in."""
    problem = label_problem(label)
    if problem:
        raise UserError(f"--label: {problem}")
    text = _set_value(template_text(), "label", label)
    for key, value in (results or {}).items():
        text = _set_value(text, key, value)
    if total_parameters is not None:
        text = _set_value(text, "total_parameters", total_parameters)
    return text


def init_meta(label: str, out: str | Path, results_path: str | Path | None = None,
              total_parameters: int | None = None) -> None:
    """Write a pre-filled metadata file for ``label`` to ``out``; never overwrites an existing file."""
    out = Path(out)
    if out.exists():
        raise UserError(f"{out}: already exists; choose another --out or delete it first (it may hold your edits)")
    text = render_meta(label, read_results(results_path) if results_path else None, total_parameters)
    with atomic_open(out, "w", encoding="utf-8") as handle:
        handle.write(text)


def _set_value(text: str, key: str, value: str | float) -> str:
    """Replace the value of the first line ``<indent>key: ...`` of ``text``, keeping everything else."""
    scalar = yaml.safe_dump(value, allow_unicode=True).split("\n", 1)[0]
    pattern = re.compile(rf"^([ \t]*{re.escape(key)}:)[^\n]*$", flags=re.M)
    return pattern.sub(lambda match: f"{match.group(1)} {scalar}", text, count=1)


def _path(parts) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)
    return text.lstrip(".") or "(top level)"


def _message(error: jsonschema.ValidationError) -> str:
    custom = error.schema.get("x-messages", {}).get(error.validator) if isinstance(error.schema, dict) else None
    return custom.format(instance=error.instance) if custom else error.message


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
