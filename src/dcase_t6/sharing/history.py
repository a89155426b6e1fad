"""A run's training history and scores: per-epoch curves, the best epoch, validation and dev-test metrics.

The best epoch is the first epoch with the highest value of the run's ``monitor`` (validation mAP@10 by
default), the epoch whose weights the ``best`` checkpoint holds. Dev-test scores come from the run's
registered similarity matrix of ``<dataset>/development-testing`` (``embed``), scored against the dataset's
multi-relevance file when it was prepared (``prepare relevance``; the organisers' dev-test ground truth), else
against the split's own captions (each caption's clip relevant); a run imported from a model folder has the
dev-test scores it was exported with. Both are text to audio; the audio-to-text scores come beside them (the
validation records' ``a2t/`` keys, the dev-test matrix scored the other way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from dcase_t6.common.atomic import atomic_path
from dcase_t6.common.errors import UserError
from dcase_t6.data.layout import DEV_TEST, Layout
from dcase_t6.data.relevance import split_ground_truth
from dcase_t6.retrieval.directions import A2T_PREFIX
from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.matrices import read_matrix
from dcase_t6.runs.records import Run
from dcase_t6.runs.registry import Registry

CURVE_METRICS = ("train_loss", "mAP@10", "mAP@16")
SCORE_KEYS = ("R@1", "R@10", "mAP@10", "mAP@16")
IMPORT_KIND = "import"  # the registry kind of an imported model's weights file (info: source, dev_test)


@dataclass(frozen=True)
class DevTest:
    """Dev-test scores of a run: metric -> value, the queries scored, the ground truth they were scored against and
    the checkpoint (``best``/``last``) that embedded them; ``audio_to_text``: the same metrics audio to text (empty
    for scores imported without them)."""

    scores: dict[str, float]
    n_queries: int
    dataset: str
    ground_truth: str
    checkpoint: str | None
    audio_to_text: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"scores": self.scores, "n_queries": self.n_queries, "dataset": self.dataset,
                "ground_truth": self.ground_truth, "checkpoint": self.checkpoint, "audio_to_text": self.audio_to_text}

    @classmethod
    def from_json(cls, values: dict) -> DevTest:
        return cls({key: float(value) for key, value in values["scores"].items()}, int(values["n_queries"]),
                   str(values["dataset"]), str(values["ground_truth"]), values.get("checkpoint"),
                   {key: float(value) for key, value in (values.get("audio_to_text") or {}).items()})


@dataclass(frozen=True)
class RunHistory:
    """A run's epochs (each a record with a 0-based ``epoch``) and what they are judged by."""

    run_id: str
    name: str
    status: str
    monitor: str
    configured_epochs: int
    epochs: list[dict]
    last_is_best: bool = False  # a run without a validation split: its best checkpoint is the last epoch's

    @classmethod
    def of(cls, run: Run) -> RunHistory:
        """The history of a run loaded with its epochs (``Registry.run``)."""
        return cls(run.id, run.name, run.status, run.config.get("monitor", "mAP@10"),
                   int(run.config.get("epochs", len(run.epochs or []))), list(run.epochs or []),
                   "validation_split" in run.config and run.config["validation_split"] is None)

    @property
    def best(self) -> dict | None:
        """The record of the best epoch (the first with the highest monitored value; the last one for a run
        without validation), or None without one."""
        if self.last_is_best:
            return self.epochs[-1] if self.epochs else None
        scored = [epoch for epoch in self.epochs if isinstance(epoch.get(self.monitor), (int, float))]
        return max(scored, key=lambda epoch: epoch[self.monitor]) if scored else None

    @property
    def best_epoch(self) -> int | None:
        """The best epoch, 1-based (as the console counts epochs), or None."""
        best = self.best
        return None if best is None else int(best["epoch"]) + 1

    def curve(self, metric: str) -> tuple[list[int], list[float]]:
        """1-based epochs and values of one metric (the epochs that have it)."""
        points = [(int(epoch["epoch"]) + 1, float(epoch[metric])) for epoch in self.epochs
                  if isinstance(epoch.get(metric), (int, float))]
        return [epoch for epoch, _ in points], [value for _, value in points]


@dataclass(frozen=True)
class RunSummary:
    """A run's history, its dev-test scores (None when not embedded or not scorable) and why they are missing."""

    history: RunHistory
    config: dict
    dev_test: DevTest | None
    dev_test_note: str | None

    def as_json(self) -> dict:
        history, best = self.history, self.history.best
        return {"run": history.run_id, "name": history.name, "status": history.status,
                "epochs": len(history.epochs), "configured_epochs": history.configured_epochs,
                "monitor": history.monitor, "best_epoch": history.best_epoch,
                "validation": {key: best[key] for key in SCORE_KEYS if key in best} if best else {},
                "validation_audio_to_text": {key: best[A2T_PREFIX + key] for key in SCORE_KEYS
                                             if A2T_PREFIX + key in best} if best else {},
                "dev_test": self.dev_test.as_json() if self.dev_test else None, "dev_test_note": self.dev_test_note}


def summarize_run(registry: Registry, reference: str, data_root: str | Path | None = None) -> RunSummary:
    """A run's history and dev-test scores.

    Args:
        registry: the registry holding the run.
        reference: a run id or unique prefix.
        data_root: where to find the dev-test ground truth (default: the run's own ``data_root``).

    Returns:
        The summary; ``dev_test`` is None when the run embedded no dev-test split or it cannot be scored here
        (``dev_test_note`` says why).
    """
    run = registry.run(reference)
    try:
        dev_test = dev_test_scores(registry, run, data_root)
        note = None if dev_test else "not embedded (dcase-t6 embed RUN --split development-testing)"
    except UserError as err:
        dev_test, note = None, str(err)
    return RunSummary(RunHistory.of(run), run.config, dev_test, note)


def dev_test_scores(registry: Registry, run: Run, data_root: str | Path | None = None) -> DevTest | None:
    """Score the run's registered dev-test similarity matrix, or return the scores it was imported with.

    Args:
        registry: the run's registry.
        run: the run, with its files.
        data_root: where the ground truth is (default: the run's ``data_root``).

    Returns:
        The scores, or None when the run has no dev-test matrix (and none from an import).

    Raises:
        UserError: the matrix or the ground truth cannot be read or do not match.
    """

    matrices = {record.tag.partition("/")[0]: record for record in run.files or []
                if record.kind == "similarity" and record.tag.endswith(f"/{DEV_TEST}")}
    if not matrices:
        imported = next((record for record in run.files or [] if record.kind == IMPORT_KIND), None)
        if imported is not None and imported.info.get("dev_test"):
            return DevTest.from_json(imported.info["dev_test"])
        return None
    validation = run.config.get("validation_dataset") or (run.config.get("datasets") or [None])[0]
    dataset = validation if validation in matrices else sorted(matrices)[0]
    record = registry.file(run.id, "similarity", matrices[dataset].tag)
    relevance = ground_truth(data_root or run.config.get("data_root", "data"), dataset)
    result = evaluate(read_matrix(record.path), relevance, both_directions=True)
    return DevTest({key: result.scores[key] for key in result.scores}, result.n_queries, dataset,
                   str(relevance.source), record.info.get("checkpoint"), dict(result.audio_to_text.scores))


def ground_truth(data_root: str | Path, dataset: str):
    """The dev-test ground truth of a dataset: its multi-relevance file when prepared, else its captions.

    Args:
        data_root: the prepared data root.
        dataset: the dataset.

    Returns:
        A ``Relevance``.

    Raises:
        UserError: neither is there.
    """
    layout = Layout.at(data_root)
    relevance = layout.relevance_file(dataset, DEV_TEST)
    if not relevance.is_file() and not layout.index_file(dataset).is_file():
        raise UserError(f"dev-test of {dataset}: no ground truth under {layout.root} (neither {relevance} nor the "
                        f"split index {layout.index_file(dataset)}); pass --data-root with the prepared data")
    truth = split_ground_truth(layout.root, dataset, DEV_TEST)
    if truth is None:
        raise UserError(f"dev-test of {dataset}: {layout.index_file(dataset)} lists no caption of a clip in "
                        f"{DEV_TEST}; prepare the dataset again")
    return truth


def plot_curves(histories: list[RunHistory], png: str | Path, metrics: tuple[str, ...] = CURVE_METRICS) -> Path:
    """Draw each run's per-epoch curves, one panel per metric, one line per run (its best epoch marked), as a PNG.

    Args:
        histories: the runs.
        png: the file to write (atomically).
        metrics: the record keys to draw; a panel whose metric no run has is left out.

    Returns:
        The PNG's path.

    Raises:
        UserError: no run has any of the metrics (no finished epoch).
    """
    shown = [metric for metric in metrics if any(history.curve(metric)[0] for history in histories)]
    if not shown:
        raise UserError(f"no finished epoch with {', '.join(metrics)} in runs "
                        f"{', '.join(history.run_id for history in histories)}; nothing to plot")
    figure = Figure(figsize=(4.2 * len(shown), 3.4))
    for index, metric in enumerate(shown):
        axes = figure.add_subplot(1, len(shown), index + 1)
        for history in histories:
            epochs, values = history.curve(metric)
            if not epochs:
                continue
            line, = axes.plot(epochs, values, marker=".", label=history.run_id)
            best = history.best_epoch
            if best in epochs and metric != "train_loss":
                axes.plot([best], [values[epochs.index(best)]], marker="o", markersize=8, fillstyle="none",
                          color=line.get_color())
        axes.set(xlabel="epoch", title=metric if metric == "train_loss" else f"validation {metric}")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
    figure.axes[-1].legend(fontsize="small")
    figure.tight_layout()
    png = Path(png)
    with atomic_path(png) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    return png
