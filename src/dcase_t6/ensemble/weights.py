"""The ensemble weights file: the one reader (:func:`read_weights`) and writer (:func:`write_weights`).

Format (JSON, written atomically, 2-space indent, UTF-8, final newline)::

    {"format": "dcase-t6-ensemble-weights", "version": 1, "metric": "mAP@16",
     "normalize": "none" | "zscore" | "inverted-softmax" | "dual-softmax" | "querybank",
     "temperature": 0.05,                                  # only with inverted-softmax / dual-softmax / querybank
     "top_k": 1,                                           # only with querybank: its activation set's k
     "banks": {"NAME": "validation bank path"},            # only with querybank: the banks of the search
     "step": 0.05,
     "strategy": "flat" | "groups" | "system-first" | "model-first",
     "weights": {"NAME": weight, ...},                     # flat weights, used by --apply
     "validation": {"R@1": ..., "mAP@16": ..., "n_queries": ..., "setting": ..., "relevance": ...},
     "groups": [{"name": ..., "weight": ..., "members": {"NAME": inner weight}, "mAP@16": ...}],
     "candidates": [{"weights": {...}, "mAP@16": ...}, ...],   # best first, exact scores
     "temperature_search": [{"temperature": ..., "mAP@16": ...}, ...],   # every temperature tried
     "systems": {"NAME": "validation matrix path"}, "grid_points": ..., "seconds": ...}

Reading contract: only ``"weights"`` (system name -> finite number >= 0, not all 0) is required, so hand-written
files work. ``"format"`` may be left out but, when given, must be ``dcase-t6-ensemble-weights``;
``"version"`` defaults to 1 (the only version), ``"normalize"`` to ``"none"`` and ``"metric"`` to
``"mAP@16"``; ``"temperature"`` (a number > 0) is required with ``inverted-softmax`` / ``dual-softmax`` /
``querybank`` and refused with the others; ``"top_k"`` (a whole number >= 1, default 1) goes with ``querybank``
only. The other keys record how a search found the weights; each is optional, but when
present it must have the type above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json, write_json
from dcase_t6.ensemble.grid import METRIC
from dcase_t6.ensemble.systems import NORMALIZATIONS
from dcase_t6.retrieval.normalisation import MAX_TOP_K, NORMALISERS, QUERYBANK, Normalisation

WEIGHTS_FORMAT = "dcase-t6-ensemble-weights"
VERSION = 1
_VALIDATION_KEYS = ("n_queries", "setting", "relevance")


@dataclass(frozen=True)
class Validation:
    """Validation metrics of the applied best weights.

    Args:
        scores: metric name -> value (R@1, R@5, R@10, mAP@10, mAP@16).
        n_queries: scored validation queries.
        setting: ``single-relevant`` or ``multi-relevant`` (None: not recorded).
        relevance: the ground-truth source (None: not recorded).
    """

    scores: dict[str, float]
    n_queries: int | None = None
    setting: str | None = None
    relevance: str | None = None


@dataclass(frozen=True)
class GroupWeights:
    """One group of a two-stage search: its weight, its members' inner weights and its own validation score."""

    name: str
    weight: float
    members: dict[str, float]
    score: float


@dataclass(frozen=True)
class Candidate:
    """One of the best flat weight vectors and its exact validation score."""

    weights: dict[str, float]
    score: float


@dataclass(frozen=True)
class TemperatureScore:
    """One temperature a search tried and the validation score of the best weights at it."""

    temperature: float
    score: float


@dataclass(frozen=True)
class EnsembleWeights:
    """Contents of a weights file: the flat weights, their normalisation and, optionally, how a search found them.

    Args:
        weights: system name -> weight, in the order the ensemble sums them.
        normalize: each system's normalisation before summing: ``none``, ``zscore``, ``inverted-softmax`` or
            ``dual-softmax``.
        metric: the metric the search maximised (names the score of groups and candidates).
        step, strategy, validation, groups, candidates, systems, grid_points, seconds: the search
            record (None when not recorded, e.g. in a hand-written file).
        temperature: the temperature of ``inverted-softmax`` / ``dual-softmax`` / ``querybank`` (None for the
            others).
        top_k: the activation set's ``k`` of ``querybank`` (None for the others).
        banks: ``querybank``: system name -> the validation bank the search used (None: not recorded).
        temperature_search: every temperature the search tried with its best validation score (None: not
            recorded).
        source: where the weights were read from; used in messages, not written.
    """

    weights: dict[str, float]
    normalize: str = "none"
    metric: str = METRIC
    step: float | None = None
    strategy: str | None = None
    validation: Validation | None = None
    groups: list[GroupWeights] | None = None
    candidates: list[Candidate] | None = None
    systems: dict[str, str] | None = None
    grid_points: int | None = None
    seconds: float | None = None
    temperature: float | None = None
    temperature_search: list[TemperatureScore] | None = None
    top_k: int | None = None
    banks: dict[str, str] | None = None
    version: int = VERSION
    source: str = field(default="", compare=False)

    @property
    def normalisation(self) -> Normalisation | None:
        """The tempered normalisation of every system (None for ``none`` / ``zscore``)."""
        if self.normalize not in NORMALISERS or self.temperature is None:
            return None
        return Normalisation(self.normalize, self.temperature, self.source, self.top_k or 1)

    def as_json(self) -> dict:
        """The weights file's JSON object (also printed by ``ensemble --search --json``); None fields are left out."""
        validation = None
        if self.validation is not None:
            recorded = zip(_VALIDATION_KEYS, (self.validation.n_queries, self.validation.setting,
                                              self.validation.relevance))
            validation = {**self.validation.scores, **{key: value for key, value in recorded if value is not None}}
        groups = None if self.groups is None else [
            {"name": group.name, "weight": group.weight, "members": group.members, self.metric: group.score}
            for group in self.groups]
        candidates = None if self.candidates is None else [
            {"weights": candidate.weights, self.metric: candidate.score} for candidate in self.candidates]
        tried = None if self.temperature_search is None else [
            {"temperature": entry.temperature, self.metric: entry.score} for entry in self.temperature_search]
        entries = {"format": WEIGHTS_FORMAT, "version": self.version, "metric": self.metric,
                   "normalize": self.normalize, "temperature": self.temperature, "top_k": self.top_k,
                   "banks": self.banks, "step": self.step,
                   "strategy": self.strategy, "weights": self.weights, "validation": validation, "groups": groups,
                   "candidates": candidates, "temperature_search": tried, "systems": self.systems,
                   "grid_points": self.grid_points, "seconds": self.seconds}
        return {key: value for key, value in entries.items() if value is not None}


def write_weights(weights: EnsembleWeights, path: str | Path) -> None:
    """Write a weights file, atomically.

    Args:
        weights: what to write.
        path: the JSON file to create or replace.
    """
    write_json(weights.as_json(), path)


def read_weights(path: str | Path) -> EnsembleWeights:
    """Read and check a weights file (see the module docstring for what is required and the defaults).

    Args:
        path: a JSON file written by ``dcase-t6 ensemble --search``, or a hand-written ``{"weights": {...}}``.

    Returns:
        The weights, with ``source`` set to ``path``.

    Raises:
        UserError: naming the file and the field, if it is absent, not JSON or does not follow the format.
    """
    path = Path(path)
    document = read_json(path, f"create it with `dcase-t6 ensemble --search ... --out {path}`")
    if not isinstance(document, dict) or document.get("format", WEIGHTS_FORMAT) != WEIGHTS_FORMAT:
        raise UserError(f"{path}: not an ensemble weights file (\"format\" must be {WEIGHTS_FORMAT!r}); "
                        "pass the JSON written by `dcase-t6 ensemble --search`")
    reader = _Reader(path, document)
    weights = reader.weight_map(document.get("weights"))
    if weights is None:
        raise UserError(f"{path}: expected an object with \"weights\": {{\"<system>\": <number >= 0>, ...}}; "
                        "pass the JSON written by `dcase-t6 ensemble --search`")
    if not any(weight > 0 for weight in weights.values()):
        raise UserError(f"{path}: every \"weights\" entry is 0, so the ensemble would be an all-zero matrix; give "
                        "at least one system a positive weight, or re-run `dcase-t6 ensemble --search`")
    if document.get("version", VERSION) != VERSION:
        raise UserError(f"{path}: \"version\" is {document['version']!r}; this dcase-t6 reads version {VERSION}; "
                        "re-run `dcase-t6 ensemble --search`")
    normalize = document.get("normalize", "none")
    if normalize not in NORMALIZATIONS:
        raise UserError(f"{path}: \"normalize\" is {normalize!r}; expected one of {NORMALIZATIONS}")
    metric = reader.optional("metric", str) or METRIC
    return EnsembleWeights(
        weights=weights, normalize=normalize, metric=metric,
        step=reader.optional("step", float), strategy=reader.optional("strategy", str),
        validation=reader.validation(), groups=reader.groups(metric), candidates=reader.candidates(metric),
        systems=reader.names_to_paths(), grid_points=reader.optional("grid_points", int),
        seconds=reader.optional("seconds", float), temperature=reader.temperature(normalize),
        temperature_search=reader.temperature_search(metric), top_k=reader.top_k(normalize),
        banks=reader.names_to_paths("banks"), source=str(path))


class _Reader:
    """Typed access to the optional keys of one weights document; a UserError names the bad field."""

    def __init__(self, path: Path, document: dict):
        self.path, self.document = path, document

    def fail(self, key: str, expected: str) -> UserError:
        return UserError(f"{self.path}: \"{key}\" must be {expected}; fix or drop it, or re-run "
                         "`dcase-t6 ensemble --search`")

    def optional(self, key: str, kind: type):
        value = self.document.get(key)
        if value is None:
            return None
        if kind is float and _is_number(value):
            return float(value)
        if kind is int and _is_number(value) and float(value).is_integer():
            return int(value)
        if kind is str and isinstance(value, str):
            return value
        raise self.fail(key, {float: "a number", int: "an integer", str: "a string"}[kind])

    def weight_map(self, value) -> dict[str, float] | None:
        """A non-empty name -> finite non-negative number mapping, or None if ``value`` is not one."""
        if not isinstance(value, dict) or not value or not all(_is_weight(weight) for weight in value.values()):
            return None
        return {str(name): float(weight) for name, weight in value.items()}

    def validation(self) -> Validation | None:
        value = self.document.get("validation")
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail("validation", "an object of metric values")
        n_queries, setting, relevance = (value.get(key) for key in _VALIDATION_KEYS)
        if not (n_queries is None or (_is_number(n_queries) and float(n_queries).is_integer())) \
                or not all(text is None or isinstance(text, str) for text in (setting, relevance)):
            raise self.fail("validation", "metric values with an integer n_queries and text setting/relevance")
        scores = {key: float(number) for key, number in value.items()
                  if key not in _VALIDATION_KEYS and _is_number(number)}
        return Validation(scores, None if n_queries is None else int(n_queries), setting, relevance)

    def groups(self, metric: str) -> list[GroupWeights] | None:
        value = self.document.get("groups")
        if value is None:
            return None
        expected = f"a list of {{\"name\", \"weight\", \"members\", \"{metric}\"}} objects"
        if not isinstance(value, list) or not all(isinstance(group, dict) for group in value):
            raise self.fail("groups", expected)
        groups = []
        for group in value:
            members = self.weight_map(group.get("members"))
            if not isinstance(group.get("name"), str) or not _is_weight(group.get("weight")) or members is None \
                    or not _is_number(group.get(metric)):
                raise self.fail("groups", expected)
            groups.append(GroupWeights(group["name"], float(group["weight"]), members, float(group[metric])))
        return groups

    def candidates(self, metric: str) -> list[Candidate] | None:
        value = self.document.get("candidates")
        if value is None:
            return None
        expected = f"a list of {{\"weights\", \"{metric}\"}} objects"
        if not isinstance(value, list) or not all(isinstance(candidate, dict) for candidate in value):
            raise self.fail("candidates", expected)
        candidates = []
        for candidate in value:
            weights = self.weight_map(candidate.get("weights"))
            if weights is None or not _is_number(candidate.get(metric)):
                raise self.fail("candidates", expected)
            candidates.append(Candidate(weights, float(candidate[metric])))
        return candidates

    def temperature(self, normalize: str) -> float | None:
        """The temperature: a number > 0 with a tempered normalisation, absent with the others."""
        value = self.optional("temperature", float)
        if normalize not in NORMALISERS:
            if value is not None:
                raise UserError(f"{self.path}: \"temperature\" applies only to \"normalize\" "
                                f"{' or '.join(NORMALISERS)}, not {normalize!r}; drop it")
            return None
        if value is None or value <= 0:
            raise UserError(f"{self.path}: \"normalize\" {normalize} needs \"temperature\": a number > 0; re-run "
                            f"`dcase-t6 ensemble --search --normalize {normalize}`")
        return value

    def top_k(self, normalize: str) -> int | None:
        """The activation set's k: a whole number from 1 with ``querybank`` (default 1), absent with the others."""
        value = self.document.get("top_k")
        if normalize != QUERYBANK:
            if value is not None:
                raise UserError(f"{self.path}: \"top_k\" applies only to \"normalize\" {QUERYBANK}, not "
                                f"{normalize!r}; drop it")
            return None
        if value is None:
            return 1
        if not (_is_number(value) and float(value).is_integer() and 1 <= value <= MAX_TOP_K):
            raise self.fail("top_k", f"a whole number from 1 to {MAX_TOP_K}")
        return int(value)

    def temperature_search(self, metric: str) -> list[TemperatureScore] | None:
        value = self.document.get("temperature_search")
        if value is None:
            return None
        entries = value if isinstance(value, list) else [None]
        if not all(isinstance(entry, dict) and _is_number(entry.get("temperature")) and entry["temperature"] > 0
                   and _is_number(entry.get(metric)) for entry in entries):
            raise self.fail("temperature_search", f"a list of {{\"temperature\" > 0, \"{metric}\"}} objects")
        return [TemperatureScore(float(entry["temperature"]), float(entry[metric])) for entry in entries]

    def names_to_paths(self, key: str = "systems") -> dict[str, str] | None:
        value = self.document.get(key)
        if value is None:
            return None
        if not isinstance(value, dict) or not all(isinstance(path, str) for path in value.values()):
            raise self.fail(key, "an object of system name -> matrix path")
        return dict(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_weight(value) -> bool:
    return _is_number(value) and value >= 0
