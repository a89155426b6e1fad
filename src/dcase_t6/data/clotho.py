"""Clotho v2.1 (Zenodo record 4783391): download or take the nine files, verify, extract, index.

Each step is skipped when its result is present and verified: downloaded files by MD5 (remembered
by size and modification time), extracted parts by a stamp naming the archive's MD5, the index by
the fingerprint of its inputs. So a re-run is a no-op and an interrupted run resumes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dcase_t6.common.atomic import atomic_path
from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT, Reporter
from dcase_t6.data.archive import extract_7z
from dcase_t6.data.clotho_layout import index_clotho_layout
from dcase_t6.data.download import DownloadPolicy, VerifiedFiles, download
from dcase_t6.data.layout import CLOTHO_PARTS, Layout
from dcase_t6.data.reports import ClothoReport

DATASET = "clotho"
ZENODO_RECORD = "4783391"
ZENODO_URL = f"https://zenodo.org/records/{ZENODO_RECORD}/files/"
CLOTHO_MD5 = {
    "clotho_audio_development.7z": "c8b05bc7acdb13895bb3c6a29608667e",
    "clotho_captions_development.csv": "d4090b39ce9f2491908eebf4d5b09bae",
    "clotho_metadata_development.csv": "170d20935ecfdf161ce1bb154118cda5",
    "clotho_audio_validation.7z": "7dba730be08bada48bd15dc4e668df59",
    "clotho_captions_validation.csv": "5879e023032b22a2c930aaa0528bead4",
    "clotho_metadata_validation.csv": "2e010427c56b1ce6008b0f03f41048ce",
    "clotho_audio_evaluation.7z": "4569624ccadf96223f19cb59fe4f849f",
    "clotho_captions_evaluation.csv": "1b16b9e57cf7bdb7f13a13802aeb57e2",
    "clotho_metadata_evaluation.csv": "13946f054d4e1bf48079813aac61bf77",
}


@dataclass(frozen=True)
class ClothoSource:
    """Where the Clotho files come from and what they must hash to.

    Attributes:
        archives: a folder already holding the files (offline: nothing is downloaded); None downloads them.
        mirror: the base URL to download from (None: Zenodo).
        md5s: each file's name and MD5 (default: the nine files of Clotho v2.1).
    """

    archives: Path | None = None
    mirror: str | None = None
    md5s: dict[str, str] = field(default_factory=lambda: CLOTHO_MD5)


def prepare_clotho(layout: Layout, source: ClothoSource = ClothoSource(), workers: int = 1,
                   policy: DownloadPolicy = DownloadPolicy(), reporter: Reporter = SILENT) -> ClothoReport:
    """Get (download, retrying as ``policy`` says, or take from ``source.archives``), verify, extract and index
    Clotho v2.1; return the index report."""
    archives, md5s = source.archives, source.md5s
    folder = archives.expanduser().absolute() if archives else layout.dataset_dir(DATASET) / "archives"
    for part in CLOTHO_PARTS:  # before hours of downloading
        _check_part_target(layout, part)
    verified = VerifiedFiles(layout.dataset_dir(DATASET) / "verified.json")
    if archives is None:
        base = (source.mirror or ZENODO_URL).rstrip("/") + "/"
        for name, md5 in md5s.items():
            if not (folder / name).is_file():
                download(base + name, folder / name, md5, reporter, policy)
    _require_present(folder, md5s, archives is not None)
    for name, md5 in md5s.items():
        verified.check(folder / name, md5, reporter)
    extracted = {part: _extract_part(layout, folder, part, md5s) for part in CLOTHO_PARTS}
    for part in CLOTHO_PARTS:
        _copy_if_changed(folder / f"clotho_captions_{part}.csv", layout.captions_csv(DATASET, part))
        _copy_if_changed(folder / f"clotho_metadata_{part}.csv", layout.metadata_csv(DATASET, part))
    report = index_clotho_layout(layout, DATASET, workers, reporter)
    return report.extended(ClothoReport, source=str(folder), extracted=extracted)


def _require_present(source: Path, md5s: dict[str, str], offline: bool) -> None:
    missing = [name for name in md5s if not (source / name).is_file()]
    if missing:
        fix = (f"download them from https://zenodo.org/records/{ZENODO_RECORD} into {source}, "
               "or run without --archives to download them") if offline else "re-run to download them"
        raise UserError(f"{source}: missing {len(missing)} Clotho file(s) ({', '.join(missing)}); {fix}")


def _extract_part(layout: Layout, source: Path, part: str, md5s: dict[str, str]) -> int:
    """Extract one audio archive unless the stamp says this very archive was extracted; files extracted."""
    name = f"clotho_audio_{part}.7z"
    target = layout.audio_dir(DATASET, part)
    stamp = target.parent / f".{part}.extracted"
    if target.is_dir() and stamp.is_file() and stamp.read_text().strip() == md5s[name]:
        return 0
    _check_part_target(layout, part)
    count = extract_7z(source / name, target)
    with atomic_path(stamp) as tmp:
        tmp.write_text(md5s[name] + "\n")
    return count


def _check_part_target(layout: Layout, part: str) -> None:
    """An audio folder is replaced by its archive's files only if dcase-t6 extracted it (its stamp, even a stale one,
    is beside it) or it is empty: a UserError naming it otherwise."""
    target = layout.audio_dir(DATASET, part)
    stamp = target.parent / f".{part}.extracted"
    if target.is_dir() and not stamp.is_file() and any(target.iterdir()):
        raise UserError(f"{target}: holds files dcase-t6 did not extract (no {stamp.name} beside it), and extracting "
                        f"clotho_audio_{part}.7z replaces the folder whole; move them out of it, or choose another "
                        "--root")


def _copy_if_changed(source: Path, target: Path) -> None:
    if target.is_file() and target.read_bytes() == source.read_bytes():
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
