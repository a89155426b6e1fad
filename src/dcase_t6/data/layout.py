"""Where every prepared file lives under the data root (see the package docstring for the tree)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOTHO_PARTS = {
    "development": "development-training",
    "validation": "development-validation",
    "evaluation": "development-testing",
}
DEV_TEST = "development-testing"
CLOTHO_SAMPLE_RATE = 44100


@dataclass(frozen=True)
class Layout:
    """Paths of one data root."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> Layout:
        """Layout of ``root`` with an absolute path."""
        return cls(Path(root).expanduser().absolute())

    def dataset_dir(self, dataset: str) -> Path:
        """Folder of a dataset in the Clotho layout (CSVs, ``audio/<part>/``)."""
        return self.root / dataset

    def audio_dir(self, dataset: str, part: str) -> Path:
        """Folder of the audio files of one Clotho part."""
        return self.root / dataset / "audio" / part

    def captions_csv(self, dataset: str, part: str) -> Path:
        """Clotho captions CSV of one part."""
        return self.root / dataset / f"clotho_captions_{part}.csv"

    def metadata_csv(self, dataset: str, part: str) -> Path:
        """Clotho metadata CSV of one part."""
        return self.root / dataset / f"clotho_metadata_{part}.csv"

    def index_file(self, dataset: str) -> Path:
        """Split index CSV of a dataset."""
        return self.root / "index" / f"{dataset}.csv"

    def report_file(self, dataset: str) -> Path:
        """JSON report written beside a split index (counts, skipped and excluded items)."""
        return self.root / "index" / f"{dataset}.report.json"

    def queries_file(self, dataset: str) -> Path:
        """Query list of a dataset whose queries are not captions of its clips (the evaluation set)."""
        return self.root / "index" / f"{dataset}.queries.csv"

    def relevance_file(self, dataset: str, split: str = DEV_TEST) -> Path:
        """Validated multi-relevance file of one split."""
        return self.root / "relevance" / dataset / f"{split}.csv"

    def cache_dir(self, rate: int) -> Path:
        """Audio cache folder for one target sample rate."""
        return self.root / "cache" / str(rate)

    def relative(self, path: Path) -> str:
        """Path as stored in an index: relative to the root when inside it, else absolute."""
        path = Path(path).absolute()
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def resolve(self, stored: str) -> Path:
        """Absolute path of a path stored in an index."""
        return self.root / stored
