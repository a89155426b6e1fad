"""``runs compare``: several runs side by side, in one table of the metrics and the config keys that differ.

Rows: status, epochs trained, the best epoch (by the run's ``monitor``), validation R@1/mAP@10/mAP@16 at the
best epoch, dev-test R@1/mAP@10/mAP@16 when the run embedded the dev-test split (see ``history``), each also audio
to text (``a2t/R@1`` ...; ``-`` for a run trained or imported without them), then every config key (dotted, e.g.
``model.backbone``) whose value is not the same in all runs (the run name aside).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.directions import A2T_PREFIX
from dcase_t6.runs.config import nested_to_dotted
from dcase_t6.runs.registry import Registry
from dcase_t6.sharing.history import RunSummary, summarize_run

VALIDATION_ROWS = ("R@1", "mAP@10", "mAP@16")
DEV_TEST_ROWS = ("R@1", "mAP@10", "mAP@16")
_MISSING = object()
_IGNORED_KEYS = ("name",)  # differs between any two runs and is in the run id already


@dataclass(frozen=True)
class Comparison:
    """The compared runs (in the order given) and the config keys whose values differ, with one value per run."""

    runs: list[RunSummary]
    differing: dict[str, list]

    def rows(self) -> list[tuple[str, list[str]]]:
        """The table: a label and one cell per run, metrics first, then the differing config keys."""
        rows = [("status", [summary.history.status for summary in self.runs]),
                ("epochs", [f"{len(s.history.epochs)}/{s.history.configured_epochs}" for s in self.runs]),
                ("best epoch", [_cell(s.history.best_epoch) for s in self.runs])]
        for key in VALIDATION_ROWS:
            rows.append((f"validation {key}", [_cell((s.history.best or {}).get(key)) for s in self.runs]))
        for key in VALIDATION_ROWS:
            rows.append((f"validation {A2T_PREFIX}{key}", [_cell((s.history.best or {}).get(A2T_PREFIX + key))
                                                           for s in self.runs]))
        for key in DEV_TEST_ROWS:
            rows.append((f"dev-test {key}", [_cell(s.dev_test.scores.get(key) if s.dev_test else None)
                                             for s in self.runs]))
        for key in DEV_TEST_ROWS:
            rows.append((f"dev-test {A2T_PREFIX}{key}", [_cell(s.dev_test.audio_to_text.get(key) if s.dev_test
                                                               else None) for s in self.runs]))
        for key, values in self.differing.items():
            rows.append((key, [_cell(value) for value in values]))
        return rows

    def notes(self) -> list[str]:
        """Why a run has no dev-test scores, and which ground truth scored the others (one line each)."""
        notes = []
        for summary in self.runs:
            run = summary.history.run_id
            if summary.dev_test is not None:
                notes.append(f"{run}: dev-test = {summary.dev_test.dataset} ({summary.dev_test.n_queries} queries, "
                             f"{summary.dev_test.checkpoint or 'imported'} checkpoint) against "
                             f"{summary.dev_test.ground_truth}")
            elif summary.dev_test_note:
                notes.append(f"{run}: dev-test {summary.dev_test_note}")
        return notes

    def as_json(self) -> dict:
        """``runs`` (each run's summary) and ``differing`` (config key -> one value per run)."""
        return {"runs": [summary.as_json() for summary in self.runs], "differing": self.differing}


def compare_runs(registry: Registry, references: list[str], data_root: str | Path | None = None) -> Comparison:
    """Summarise runs and find the config keys that differ between them.

    Args:
        registry: the registry holding the runs.
        references: run ids or unique prefixes, each once.
        data_root: where the dev-test ground truth is (default: each run's own ``data_root``).

    Returns:
        The comparison.

    Raises:
        UserError: no run given, a run named twice, or a reference that matches no run.
    """
    if not references:
        raise UserError("runs compare: name at least one run, e.g. `dcase-t6 runs compare RUN RUN`")
    ids = [registry.resolve(reference) for reference in references]
    repeated = next((run_id for index, run_id in enumerate(ids) if run_id in ids[:index]), None)
    if repeated is not None:
        raise UserError(f"runs compare: run {repeated} is named twice; name each run once")
    summaries = [summarize_run(registry, run_id, data_root) for run_id in ids]
    return Comparison(summaries, differing_keys([summary.config for summary in summaries]))


def differing_keys(configs: list[dict]) -> dict[str, list]:
    """The dotted config keys whose values are not equal in every config, with each config's value (None when a
    config lacks the key), in the configs' key order."""
    flat = [nested_to_dotted(config) for config in configs]
    keys = list(dict.fromkeys(key for values in flat for key in values))
    differing = {}
    for key in keys:
        if key in _IGNORED_KEYS:
            continue
        values = [values.get(key, _MISSING) for values in flat]
        if any(_canonical(value) != _canonical(values[0]) for value in values[1:]):
            differing[key] = [None if value is _MISSING else value for value in values]
    return differing


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True) if value is not _MISSING else "\0missing"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "[]"
    return str(value)
