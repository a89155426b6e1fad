"""Where a work directory keeps what: the one place its paths are built (beside the data root's ``Layout``).

::

    WORKDIR/
      registry.sqlite                      the run registry (``runs.registry``)
      runs/<run>/                          one folder per run
        run.json                           the run's record (``runs rebuild`` reads it)
        checkpoints, metrics.jsonl, tensorboard/, wandb/, clusters.csv
        outputs/<dataset>.<split>.{embeddings,similarity}.npz     ``embed``
        model/ (text/ inside)              an imported model's copy (``runs import``)
      pipelines/<name>.json                a pipeline's state; pipelines/<name>/ its ensembles
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATABASE_NAME = "registry.sqlite"
RECORD_NAME = "run.json"  # a run's record in its folder, for `runs rebuild`
REMOVED_RECORD_NAME = "run.removed.json"  # the record of a run `runs rm` forgot (its files kept)
MODEL_DIR = "model"  # the copy of an imported model folder inside the run's folder
TEXT_DIR = "text"  # the text model inside an exported or imported model folder


@dataclass(frozen=True)
class WorkLayout:
    """The paths of a work directory.

    Example:
        >>> WorkLayout.at("work").outputs("passt-3fa2c1")
        PosixPath('work/runs/passt-3fa2c1/outputs')
    """

    root: Path

    @classmethod
    def at(cls, workdir: str | Path) -> WorkLayout:
        return cls(Path(workdir))

    @property
    def database(self) -> Path:
        return self.root / DATABASE_NAME

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> Path:
        return self.runs / run_id

    def record(self, run_id: str) -> Path:
        return self.run(run_id) / RECORD_NAME

    def outputs(self, run_id: str) -> Path:
        """Where ``embed`` writes a run's embeddings and similarity matrices."""
        return self.run(run_id) / "outputs"

    def imported_text_model(self, run_id: str) -> Path:
        return self.run(run_id) / MODEL_DIR / TEXT_DIR

    def pipeline_state(self, name: str) -> Path:
        return self.root / "pipelines" / f"{name}.json"

    def pipeline_folder(self, name: str) -> Path:
        """Where a pipeline's ensembles write their weights and matrices."""
        return self.root / "pipelines" / name
