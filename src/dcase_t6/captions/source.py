"""What the generators read: the captions of a prepared split, and cluster labels of captions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import MISSING, file_problem, fix_of
from dcase_t6.common.tables import read_table
from dcase_t6.data.split_index import index_path, read_index
from dcase_t6.runs.layout import WorkLayout
from dcase_t6.runs.registry import Registry


@dataclass(frozen=True)
class CaptionSource:
    """A prepared split whose captions are augmented: data root, dataset, split."""

    data_root: str
    dataset: str
    split: str = "development-training"


@dataclass(frozen=True)
class SourceCaption:
    """One caption of the split: dataset, clip file name, caption index (as in the split index), text."""

    dataset: str
    file_name: str
    caption_index: str
    caption: str

    @property
    def clip(self) -> str:
        """``dataset/file_name``, as cluster label files name clips."""
        return f"{self.dataset}/{self.file_name}"


def read_captions(source: CaptionSource) -> list[SourceCaption]:
    """Every non-empty caption of the split, in split-index order.

    Args:
        source: the prepared split.

    Returns:
        The captions; a UserError names the index and the fix when the split is missing or has no caption.
    """

    frame = read_index(source.data_root, source.dataset, source.split)
    frame = frame[frame["caption"].str.strip() != ""]
    if frame.empty:
        raise UserError(f"{index_path(source.data_root, source.dataset)}: split {source.split!r} has no captions to "
                        "augment (an evaluation set has queries only); choose a training split with --split")
    return [SourceCaption(source.dataset, name, str(number), caption)
            for name, number, caption in zip(frame["file_name"], frame["caption_index"], frame["caption"])]


def read_cluster_labels(reference: str, workdir: str | Path, dataset: str) -> dict[tuple[str, str], int]:
    """Cluster labels of captions, as {(clip ``dataset/file_name``, caption): label}.

    Args:
        reference: a clusters CSV (columns clip, caption, label, as written by training), or a registered run
            (id or unique prefix) whose cluster labels cover ``dataset``.
        workdir: the work directory of the registry.
        dataset: the dataset being augmented.

    Returns:
        The labels; a UserError names the file or run and the fix when they cannot be read.
    """
    path = Path(reference)
    problem = file_problem(path)
    if problem not in (None, MISSING):
        raise UserError(f"{path}: {problem}; {fix_of(problem)}")
    if problem == MISSING:
        path = _registered_labels(reference, Path(workdir), dataset)
    frame = read_table(path, ["clip", "caption", "label"])
    try:
        labels = frame["label"].astype(int)
    except ValueError:
        raise UserError(f"{path}: column 'label' holds a value that is not an integer; use the clusters.csv "
                        "written by training") from None
    return dict(zip(zip(frame["clip"], frame["caption"]), labels.tolist()))


def _registered_labels(reference: str, workdir: Path, dataset: str) -> Path:

    if not WorkLayout.at(workdir).database.is_file():
        raise UserError(f"--clusters {reference}: neither a file nor a run (no registry in {workdir}); pass the "
                        "clusters.csv of a run, or --workdir of the registry")
    registry = Registry(workdir)
    run = registry.run(reference)
    tags = [record.tag for record in run.files or [] if record.kind == "clusters"]
    matching = [tag for tag in tags if dataset in tag.split("/")[0].split("+")]
    if not matching:
        raise UserError(f"run {run.id} has no cluster labels of {dataset} (it has: {', '.join(tags) or 'none'}); "
                        "train a run with clusters.method set, or pass a clusters.csv file")
    if len(matching) > 1:
        raise UserError(f"run {run.id} has cluster labels of {dataset} for several splits ({', '.join(matching)}); "
                        "pass the clusters.csv file you mean")
    return registry.file(run.id, "clusters", matching[0]).path

