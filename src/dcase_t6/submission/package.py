"""`package`: build the submission zip from validated parts and check a zip like the organisers do.

Layout (one folder per system, at most four systems of one team)::

    task6/<label>/<label>.output.csv            similarity matrix, re-written by simmatrix.write_csv
    task6/<label>/<label>.meta.yaml             metadata, copied byte for byte
    task6/<label>/<label>.technical_report.pdf  the team's report, one copy per system folder
"""

from __future__ import annotations

import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from dcase_t6.common.atomic import atomic_path
from dcase_t6.common.duplicates import first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.common.inputs import MISSING, file_problem, fix_of
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_csv, read_matrix, write_csv
from dcase_t6.retrieval.normalisation import Normalisation, normalise_matrix, read_bank
from dcase_t6.submission.evalcheck import EvalSet, eval_set_problems
from dcase_t6.submission.metadata import (
    decode_meta,
    label_problem,
    meta_problems,
    meta_warnings,
    read_meta,
    team_of,
)
from dcase_t6.submission.report import PDF_MAGIC, TechnicalReport, check_pdf, write_draft
from dcase_t6.submission.zipsafety import (
    META_BYTES,
    OTHER_BYTES,
    MemberError,
    copy_utf8,
    csv_bound,
    entry_count_problem,
    entry_problems,
    read_bytes,
    read_member,
    unsafe_name,
)

ROOT = "task6"
MAX_SYSTEMS = 4
CSV_KIND, META_KIND, REPORT_KIND = "output.csv", "meta.yaml", "technical_report.pdf"
KINDS = (CSV_KIND, META_KIND, REPORT_KIND)


@dataclass(frozen=True)
class SystemFiles:
    """The inputs of one system: its label, similarity matrix and metadata file, and the normalisation (inverted
    or dual softmax, QB-Norm, ``retrieval.normalisation``) applied to the matrix before it is written (None: as it
    is), with QB-Norm's query bank of the matrix's clips (``bank``)."""

    label: str
    predictions: Path
    meta: Path
    normalisation: Normalisation | None = None
    bank: Path | None = None


@dataclass(frozen=True)
class Expected:
    """Optional expected matrix shape: rows = queries, files = audio file columns."""

    rows: int | None = None
    files: int | None = None

    def problems(self, shape: tuple[int, int]) -> list[str]:
        """What differs between ``shape`` and the expected shape."""
        found = []
        if self.rows is not None and shape[0] != self.rows:
            found.append(f"{shape[0]} query rows, expected {self.rows} (one row per query caption)")
        if self.files is not None and shape[1] != self.files:
            found.append(f"{shape[1]} audio file columns, expected {self.files} (one column per audio file)")
        return found


@dataclass(frozen=True)
class SystemSummary:
    """One system folder of a zip: its label and, when its CSV could be read, the matrix shape.

    Args:
        label: the folder's label.
        queries: query rows of its CSV (None: no readable CSV).
        files: audio file columns of its CSV (None: no readable CSV).
    """

    label: str
    queries: int | None = None
    files: int | None = None

    def as_json(self) -> dict:
        """``{"label", "queries", "files"}``, without the shape when the CSV was not readable."""
        shape = {"queries": self.queries, "files": self.files} if self.queries is not None else {}
        return {"label": self.label, **shape}


@dataclass(frozen=True)
class CheckResult:
    """Outcome of checking (or building) a submission zip: every problem found, a summary of each system, and
    warnings (conventions not followed, which do not fail the check)."""

    problems: list[str] = field(default_factory=list)
    systems: list[SystemSummary] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    eval_set: EvalSet | None = None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def as_json(self) -> dict:
        """The ``--check --json`` object ``{"ok", "problems", "systems": [{"label", "queries", "files"}],
        "warnings"}``, with ``"eval_set": {"source", "queries", "files"}`` when checked against the evaluation set."""
        checked = {"eval_set": self.eval_set.as_json()} if self.eval_set is not None else {}
        return {"ok": self.ok, "problems": self.problems, "systems": [system.as_json() for system in self.systems],
                "warnings": self.warnings, **checked}


def member_name(label: str, kind: str) -> str:
    """Path of a system's file inside the zip."""
    return f"{ROOT}/{label}/{label}.{kind}"


def build_package(systems: list[SystemFiles], out: str | Path, report: TechnicalReport,
                  expected: Expected = Expected(), evalset: EvalSet | None = None) -> CheckResult:
    """Validate every input, then write the submission zip atomically (the writer of ``--out``).

    Args:
        systems: label, similarity matrix and metadata file of each system (1 to 4, one team).
        out: the ``.zip`` to write; left untouched when any check fails.
        report: the technical report PDF to package, or where to write a draft report first and its inputs.
        expected: required matrix shape, if any.
        evalset: the official evaluation set every matrix must match exactly (queries and files), if any.

    Returns:
        The organiser-style check of the written zip (always ok), with the warnings naming the input files (one
        says that a system's scores were normalised, which is transductive).

    Raises:
        UserError: for any invalid input, naming the file and the fix.
    """
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise UserError(f"--out {out}: the submission must be a .zip file; e.g. --out submission.zip")
    _check_labels([system.label for system in systems])
    matrices = [_read_predictions(system, expected, evalset) for system in systems]
    metas = [read_meta(system.meta, system.label) for system in systems]
    normalised = tuple((system.label, system.normalisation) for system in systems if system.normalisation)
    if report.draft is None:
        check_pdf(report.path)
    else:
        write_draft(report.path, [meta for _, meta in metas], replace(report.draft, normalisations=normalised))
    with atomic_path(out) as tmp:
        _write_zip(tmp, systems, matrices, [raw for raw, _ in metas], Path(report.path))
        result = check_package(tmp, expected, evalset)
        if not result.ok:
            raise UserError(f"{out}: the built zip fails its own check ({'; '.join(result.problems)}); "
                            "please report this bug")
    warnings = [f"{system.meta}: {warning}" for system, (_, meta) in zip(systems, metas)
                for warning in meta_warnings(meta, system.label)]
    stated = ("the draft report states it; state it in the metadata too (system.description)" if report.draft
              is not None else "state it in the technical report and in the metadata (system.description)")
    warnings += [f"{system.predictions}: written as the {system.normalisation.describe()} of its scores"
                 f"{' (' + system.normalisation.source + ')' if system.normalisation.source else ''}; "
                 f"{system.normalisation.note}; {stated}" for system in systems if system.normalisation]
    return replace(result, warnings=warnings)


def check_package(path: str | Path, expected: Expected = Expected(), evalset: EvalSet | None = None) -> CheckResult:
    """Check an existing submission zip like the organisers' validators; never raises for a bad zip.

    Args:
        path: the zip to check.
        expected: required matrix shape, if any.
        evalset: the official evaluation set: every CSV's queries and file columns must equal it exactly.

    Returns:
        Every problem found and a summary of each system folder.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        fix = "pass the submission zip" if problem == MISSING else fix_of(problem)
        return CheckResult([f"{path}: {problem}; {fix}"])
    try:
        too_many = entry_count_problem(path)
        if too_many:
            return CheckResult([too_many], eval_set=evalset)
        with zipfile.ZipFile(path) as archive:
            return _check_archive(archive, str(path), expected, evalset)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as err:
        return CheckResult([f"{path}: not a readable zip archive ({err}); rebuild it with `dcase-t6 package`"],
                           eval_set=evalset)


def _check_labels(labels: list[str]) -> None:
    problems = [problem for problem in map(label_problem, labels) if problem] + _label_set_problems(labels)
    if problems:
        raise UserError(f"--label: {'; '.join(problems)}")


def _label_set_problems(labels: list[str]) -> list[str]:
    """Problems of the labels taken together: none, more than 4, repeated, or of several teams."""
    problems = []
    if not 1 <= len(labels) <= MAX_SYSTEMS:
        problems.append(f"{len(labels)} systems; a team submits 1 to {MAX_SYSTEMS}")
    if first_duplicate(labels) is not None:
        problems.append(f"labels repeat ({', '.join(labels)}); give each system its own index 1-4")
    teams = sorted({team_of(label) for label in labels if not label_problem(label)})
    if len(teams) > 1:
        problems.append(f"labels of several teams ({', '.join(teams)}); one zip holds the systems of one team, "
                        "which share <Lastname>_<INSTITUTE>")
    return problems


def _read_predictions(system: SystemFiles, expected: Expected, evalset: EvalSet | None) -> SimilarityMatrix:
    try:
        matrix = read_matrix(system.predictions)
    except UnicodeDecodeError as err:  # read_csv at HEAD decodes its first buffer only (being fixed there)
        raise UserError(f"{system.predictions}: not UTF-8 text after the header ({err.reason}); save the CSV as "
                        "UTF-8") from None
    problems = expected.problems(matrix.shape)
    if problems:
        raise UserError(f"{system.predictions}: {'; '.join(problems)}; predict on the full evaluation set")
    if evalset is not None:
        problems = eval_set_problems(matrix.queries, matrix.files, evalset, str(system.predictions))
        if problems:
            raise UserError(f"{' '.join(problems)} (checked against {evalset.source})")
    bank = read_bank(system.bank) if system.bank is not None else None
    return normalise_matrix(matrix, system.normalisation, str(system.predictions), bank)


def _write_zip(path: Path, systems: list[SystemFiles], matrices: list[SimilarityMatrix],
               metas: list[bytes], report: Path) -> None:
    # Level 1: printed floats barely compress further, and level 6 takes 5x longer on a 20 MB matrix.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            tempfile.TemporaryDirectory(prefix="dcase-t6-package-") as scratch:
        for system, matrix, meta in zip(systems, matrices, metas):
            csv_path = Path(scratch) / f"{system.label}.{CSV_KIND}"
            write_csv(matrix, csv_path)
            archive.write(csv_path, member_name(system.label, CSV_KIND))
            archive.writestr(member_name(system.label, META_KIND), meta)
            archive.write(report, member_name(system.label, REPORT_KIND))


def _check_archive(archive: zipfile.ZipFile, where: str, expected: Expected, evalset: EvalSet | None) -> CheckResult:
    infos = archive.infolist()
    unreadable = entry_problems(infos, lambda name: _limit(name, expected))
    unreadable.update(_corrupt_members(archive, infos, unreadable, expected))
    problems = list(unreadable.values())
    folders = _system_folders(infos, problems)
    problems.extend(_folder_problems(where, list(folders)))
    reader = _Reader(archive, expected, set(unreadable), problems, evalset)
    systems, reports = [], 0
    for label, names in sorted(folders.items()):
        found = _files_by_kind(label, names, problems)
        systems.append(reader.system(label, found))
        reports += len(found[REPORT_KIND])
    if folders and not reports:
        problems.append(f"{where}: no technical report; add {member_name('<label>', REPORT_KIND)} beside the CSV")
    return CheckResult(problems, systems, reader.warnings, evalset)


def _system_folders(infos: list[zipfile.ZipInfo], problems: list[str]) -> dict[str, list[str]]:
    """The member names of each ``task6/<label>/`` folder, once each; unsafe names are already problems."""
    folders: dict[str, list[str]] = {}
    for name in dict.fromkeys(info.filename for info in infos if not info.is_dir() and not unsafe_name(info.filename)):
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != ROOT or not parts[1]:
            problems.append(f"{name}: outside the layout {ROOT}/<label>/<label>.<kind>; move or remove it")
        else:
            folders.setdefault(parts[1], []).append(name)
    return folders


def _limit(name: str, expected: Expected) -> int:
    """The most bytes the member ``name`` may inflate to (bounds: see ``zipsafety``)."""
    if name.endswith(f".{CSV_KIND}"):
        return csv_bound(expected.rows, expected.files)
    return META_BYTES if name.endswith(f".{META_KIND}") else OTHER_BYTES


def _corrupt_members(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], skip: dict[str, str],
                     expected: Expected) -> dict[str, str]:
    """Like ``ZipFile.testzip`` (inflate every member, verify its CRC), bounded, naming every corrupt member."""
    found = {}
    for info in infos:
        if info.filename not in skip:
            try:
                read_member(archive, info, _limit(info.filename, expected))
            except MemberError as err:
                found[info.filename] = str(err)
    return found


def _folder_problems(where: str, labels: list[str]) -> list[str]:
    problems = [f"{ROOT}/{label}/: {label_problem(label)}" for label in labels if label_problem(label)]
    return problems + [f"{where}: {problem}" for problem in _label_set_problems(labels)]


def _files_by_kind(label: str, names: list[str], problems: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for name in names:
        file_name = name.rsplit("/", 1)[1]
        parts = file_name.split(".")
        kind = ".".join(parts[1:])
        if len(parts) != 3:
            problems.append(f"{name}: file name has {len(parts)} dot-separated parts; exactly 3 are allowed, "
                            f"e.g. {label}.{CSV_KIND}")
        elif parts[0] != label:
            problems.append(f"{name}: file label {parts[0]!r} differs from its folder {label!r}; rename one of them")
        elif kind not in KINDS:
            problems.append(f"{name}: unexpected file kind {kind!r}; expected {', '.join(KINDS)}")
        else:
            found[kind].append(name)
    for kind in (CSV_KIND, META_KIND):
        if not found[kind]:
            problems.append(f"{ROOT}/{label}/: missing {label}.{kind}")
    return found


class _Reader:
    """Reads the members of one zip within their bounds, skipping those already found unreadable."""

    def __init__(self, archive: zipfile.ZipFile, expected: Expected, unreadable: set[str], problems: list[str],
                 evalset: EvalSet | None = None):
        self.archive, self.expected, self.unreadable, self.problems = archive, expected, unreadable, problems
        self.evalset = evalset
        self.warnings: list[str] = []

    def system(self, label: str, found: dict[str, list[str]]) -> SystemSummary:
        """Check the files of one system folder; return its summary."""
        summary = SystemSummary(label)
        readable = {kind: [name for name in names if name not in self.unreadable] for kind, names in found.items()}
        for name in readable[META_KIND]:
            self.problems.extend(self._meta_problems(name, label))
        for name in readable[CSV_KIND]:
            matrix = self._matrix(name)
            if matrix is not None:
                self.problems.extend(f"{name}: {problem}" for problem in self.expected.problems(matrix.shape))
                if self.evalset is not None:
                    self.problems.extend(eval_set_problems(matrix.queries, matrix.files, self.evalset, name))
                summary = SystemSummary(label, queries=matrix.shape[0], files=matrix.shape[1])
        for name in readable[REPORT_KIND]:
            with self.archive.open(name) as handle:
                if handle.read(len(PDF_MAGIC)) != PDF_MAGIC:
                    self.problems.append(f"{name}: not a PDF (it does not start with %PDF); export the report as PDF")
        return summary

    def _meta_problems(self, name: str, label: str) -> list[str]:
        try:
            meta = decode_meta(read_bytes(self.archive, self.archive.getinfo(name), META_BYTES), name)
        except (UserError, MemberError) as err:
            return [str(err)]
        self.warnings.extend(f"{name}: {warning}" for warning in meta_warnings(meta, label))
        return [f"{name}: {problem}" for problem in meta_problems(meta, label)]

    def _matrix(self, name: str) -> SimilarityMatrix | None:
        with tempfile.TemporaryDirectory(prefix="dcase-t6-check-") as scratch:
            local = Path(scratch) / "member.csv"
            try:
                with open(local, "wb") as target:
                    copy_utf8(self.archive, self.archive.getinfo(name), _limit(name, self.expected), target)
                return read_csv(local)
            except MemberError as err:
                self.problems.append(str(err))
            except UserError as err:
                self.problems.append(str(err).replace(str(local), name))
            except ValueError as err:  # a parser error read_csv does not translate
                self.problems.append(f"{name}: malformed CSV ({' '.join(str(err).split())}); rewrite it with "
                                     "`dcase-t6 package`")
            return None
