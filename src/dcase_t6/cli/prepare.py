"""`dcase-t6 prepare ...`: download, verify, index and cache datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from dcase_t6.cli import Group, json_option, main, print_json
from dcase_t6.cli.console import reporter
from dcase_t6.cli.prepare_render import (
    prepare_done,
    print_audit,
    print_cache,
    print_relevance,
    print_synthetic,
)
from dcase_t6.common.errors import UserError

if TYPE_CHECKING:
    pass


@main.group(cls=Group)
def prepare():
    """Download, verify, index and cache datasets (Clotho v2.1, AudioCaps, WavCaps, synthetic demo data).

    \b
    Data root layout (--root DATA, default ./data):
      DATA/clotho/         archives/ (downloads), clotho_{captions,metadata}_<part>.csv, audio/<part>/
      DATA/synthetic/      the demo dataset in the same layout, events.csv, its relevance file
      DATA/index/<name>.csv          split index, one row per (clip, caption): dataset, split, source,
                                     file_name, caption_index, caption, path, duration_s, n_samples,
                                     sample_rate, sound_id
      DATA/index/<name>.report.json  clips/captions/hours per split, skipped files and why, exclusions
      DATA/index/eval.queries.csv    evaluation-set queries (prepare eval)
      DATA/relevance/<name>/development-testing.csv   validated multi-relevance file
      DATA/cache/<rate>/   audio-<k>.f32 / .i16 (mono float32 / int16 at <rate> Hz, one per worker),
                           index.csv (storage, shard, offset, length, source size/mtime/crc32/frames),
                           storage.json (each dataset's storage mode and max seconds)
    Splits: development-training / -validation / -testing (Clotho development / validation /
    evaluation); audiocaps train / val / test; wavcaps train; eval evaluation; a `prepare captions`
    set: its split column's values, else --split (train).

    \b
    Example:
      dcase-t6 prepare synthetic --root data
      dcase-t6 prepare cache --root data --rate 32000 --workers 2
    """


_root_option = click.option("--root", default="data", show_default=True, type=click.Path(file_okay=False),
                            help="Data root (layout: `dcase-t6 prepare --help`).")
_workers_option = click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256),
                               help="Parallel workers for checking and decoding audio.")
_existing_dir = click.Path(exists=True, file_okay=False)
_existing_file = click.Path(exists=True, dir_okay=False)


@prepare.command("synthetic")
@_root_option
@click.option("--seed", default=0, show_default=True, help="Random seed: the same seed gives identical files.")
@click.option("--train", "n_train", default=120, show_default=True, help="Clips in development-training.")
@click.option("--val", "n_val", default=40, show_default=True, help="Clips in development-validation.")
@click.option("--test", "n_test", default=40, show_default=True, help="Clips in development-testing.")
@click.option("--min-duration", default=5.0, show_default=True, help="Shortest clip in seconds.")
@click.option("--max-duration", default=10.0, show_default=True, help="Longest clip in seconds.")
@click.option("--force", is_flag=True, help="Generate again even if the same dataset is already there.")
@_workers_option
@json_option
def prepare_synthetic(root, seed, n_train, n_val, n_test, min_duration, max_duration, force, workers, as_json):
    """Generate the synthetic demo dataset (Clotho layout) with its index and dev-test relevance file.

    Clips of 44.1 kHz WAV mix synthesised events (beeps, chirps, hiss, clicks, sirens, hum, bells,
    knocks...); the five captions name what was placed, in order. Clips sharing a description make
    a real multi-relevance file (DATA/relevance/synthetic/development-testing.csv).

    \b
    Example:
      dcase-t6 prepare synthetic --root data
      dcase-t6 prepare synthetic --root data --train 600 --val 100 --test 100 --seed 1
    """
    from dcase_t6.data.layout import Layout
    from dcase_t6.data.synthetic import SyntheticConfig
    from dcase_t6.data.synthetic import prepare_synthetic as run

    config = SyntheticConfig(seed=seed, development=n_train, validation=n_val, evaluation=n_test,
                             min_duration=min_duration, max_duration=max_duration)
    prepare_done(run(Layout.at(root), config, workers=workers, reporter=reporter, force=force), as_json,
                  print_synthetic)


@prepare.command("clotho")
@_root_option
@click.option("--archives", type=_existing_dir, help="Folder already holding the nine Clotho v2.1 files "
              "(offline: nothing is downloaded).")
@click.option("--mirror", help="Base URL holding the nine files under their Zenodo names (default: Zenodo).")
@_workers_option
@json_option
def prepare_clotho(root, archives, mirror, workers, as_json):
    """Download (resumable), MD5-verify, safely extract and index Clotho v2.1 (Zenodo 4783391).

    Re-running is a no-op once everything is present and verified; an interrupted download resumes
    from its .part file. Clips that are unreadable, silent or not 44.1 kHz are listed and skipped.

    \b
    Example:
      dcase-t6 prepare clotho --root data
      dcase-t6 prepare clotho --root data --archives ~/Downloads/clotho_v2.1
    """
    from pathlib import Path

    from dcase_t6.data.clotho import ClothoSource
    from dcase_t6.data.clotho import prepare_clotho as run
    from dcase_t6.data.layout import Layout

    source = ClothoSource(archives=Path(archives) if archives else None, mirror=mirror)
    prepare_done(run(Layout.at(root), source, workers=workers, reporter=reporter), as_json)


@prepare.command("relevance")
@_root_option
@click.option("--file", "source", required=True, type=_existing_file,
              help="Multi-relevance CSV (query, audio_filenames), e.g. the organisers' metadata_eval.csv.")
@click.option("--dataset", default="clotho", show_default=True,
              help="Indexed dataset whose dev-test split it describes.")
@json_option
def prepare_relevance(root, source, dataset, as_json):
    """Validate and attach the dev-test multi-relevance annotations to an indexed dataset.

    Every query must be a caption of development-testing and every listed file one of its clips;
    mismatches are reported and nothing is written.

    \b
    Example:
      dcase-t6 prepare relevance --root data --file clotho-devtest-relevance-metadata_eval.csv
    """
    from pathlib import Path

    from dcase_t6.data.layout import Layout
    from dcase_t6.data.relevance import attach_relevance

    prepare_done(attach_relevance(Layout.at(root), dataset, Path(source)), as_json, print_relevance)


@prepare.command("eval")
@_root_option
@click.option("--captions", required=True, type=_existing_file, help="Retrieval captions CSV (column 'caption').")
@click.option("--audio", required=True, type=_existing_dir, help="Folder of the evaluation clips.")
@_workers_option
@json_option
def prepare_eval(root, captions, audio, workers, as_json):
    """Index the evaluation set (queries + audio) so `embed` and `package` can build the submission matrix.

    \b
    Example:
      dcase-t6 prepare eval --root data --captions retrieval_captions.csv --audio retrieval_audio/
    """
    from pathlib import Path

    from dcase_t6.data.evalset import prepare_eval as run
    from dcase_t6.data.layout import Layout

    prepare_done(run(Layout.at(root), Path(captions), Path(audio), workers=workers, reporter=reporter), as_json)


@prepare.command("audiocaps")
@_root_option
@click.option("--metadata", required=True, type=_existing_dir, help="Folder with train.csv, val.csv, test.csv.")
@click.option("--audio", required=True, type=_existing_dir, help="Folder of the AudioCaps clips (named by YouTube id).")
@_workers_option
@json_option
def prepare_audiocaps(root, metadata, audio, workers, as_json):
    """Index AudioCaps from local files (YouTube-derived: no Freesound item to exclude).

    \b
    Example:
      dcase-t6 prepare audiocaps --root data --metadata audiocaps/dataset --audio audiocaps/audio
    """
    from pathlib import Path

    from dcase_t6.data.audiocaps import prepare_audiocaps as run
    from dcase_t6.data.layout import Layout

    prepare_done(run(Layout.at(root), Path(metadata), Path(audio), workers=workers, reporter=reporter), as_json)


@prepare.command("wavcaps")
@_root_option
@click.option("--json-dir", required=True, type=_existing_dir,
              help="WavCaps json_files folder (<Source>/*_final.json).")
@click.option("--audio", required=True, type=_existing_dir, help="WavCaps audio folder (<Source>/<id>.flac).")
@click.option("--forbidden", type=_existing_file, help="Forbidden Freesound ids CSV (column sound_id); "
              "default: the DCASE 2025 list shipped with dcase-t6.")
@_workers_option
@json_option
def prepare_wavcaps(root, json_dir, audio, forbidden, workers, as_json):
    """Index WavCaps from local files, excluding every forbidden Freesound id (counted per source).

    \b
    Example:
      dcase-t6 prepare wavcaps --root data --json-dir WavCaps/json_files --audio WavCaps/Audio
    """
    from pathlib import Path

    from dcase_t6.data.dataset_files import DEFAULT_FORBIDDEN
    from dcase_t6.data.layout import Layout
    from dcase_t6.data.wavcaps import WavCapsSource
    from dcase_t6.data.wavcaps import prepare_wavcaps as run

    report = run(Layout.at(root), WavCapsSource(Path(json_dir), Path(audio)),
                 Path(forbidden) if forbidden else DEFAULT_FORBIDDEN, workers=workers, reporter=reporter)
    prepare_done(report, as_json)


@prepare.command("captions")
@_root_option
@click.option("--name", required=True, help="The dataset's name, as training names it (datasets: [clotho, NAME]).")
@click.option("--csv", "csv_file", required=True, type=_existing_file,
              help="Captions: file_name and caption (one row per caption) or caption_1, caption_2, ... columns; "
                   "optional split and sound_id (or freesound_id) columns.")
@click.option("--audio", required=True, type=_existing_dir, help="Folder of the audio files (searched recursively).")
@click.option("--split", default="train", show_default=True,
              help="Split of the rows without a split value (training reads `train` unless train_split names another).")
@click.option("--forbidden", type=_existing_file, help="Forbidden Freesound ids CSV (column sound_id), used when the "
              "CSV has a sound_id/freesound_id column; default: the DCASE 2025 list shipped with dcase-t6.")
@_workers_option
@json_option
def prepare_captions(root, name, csv_file, audio, split, forbidden, workers, as_json):
    """Index any captioned audio set (MACS, an FSD50K-based caption set, your own) from a CSV and an audio folder.

    Same split index, report, audio cache and storage modes as the built-in sets; with a sound_id or
    freesound_id column the set counts as Freesound-derived: forbidden ids are excluded (counted in the
    report) and `prepare audit` checks its ids. Train on it with --datasets clotho,NAME (and dataset_weights).

    \b
    Example:
      dcase-t6 prepare captions --root data --name macs --csv macs.csv --audio TAU-urban-acoustic-scenes-2019
      dcase-t6 prepare captions --root data --name fsd50k-captions --csv fsd_captions.csv --audio FSD50K.dev_audio
    """
    from pathlib import Path

    from dcase_t6.data.captions import CaptionSource
    from dcase_t6.data.captions import prepare_captions as run
    from dcase_t6.data.dataset_files import DEFAULT_FORBIDDEN
    from dcase_t6.data.layout import Layout

    report = run(Layout.at(root), CaptionSource(name, Path(csv_file), Path(audio), split),
                 Path(forbidden) if forbidden else DEFAULT_FORBIDDEN, workers=workers, reporter=reporter)
    prepare_done(report, as_json)


@prepare.command("audit")
@_root_option
@click.option("--forbidden", type=_existing_file, help="Forbidden Freesound ids CSV (column sound_id); "
              "default: the DCASE 2025 list shipped with dcase-t6.")
@json_option
def prepare_audit(root, forbidden, as_json):
    """Audit the prepared training data for Freesound ids it must not hold; exit 1 when it holds any.

    Reads every split index under DATA/index. Clips of the splits development-validation,
    development-testing (Clotho validation and evaluation) and evaluation (`prepare eval`) are the
    protected sets; every other dataset/split/source is a training source (Clotho development via
    its metadata sound ids, WavCaps' FreeSound part, any index with sound ids). For each training
    source: its clips, those with a Freesound id, the ids it shares with each protected set, and
    the forbidden ids it still holds (the DCASE 2025 list, or --forbidden), each id listed.
    The evaluation set has no sound ids: only the forbidden list guards it.

    \b
    Example:
      dcase-t6 prepare audit --root data
      dcase-t6 prepare audit --root data --json > audit.json
      dcase-t6 prepare audit --root data --forbidden my_excluded_ids.csv
    """
    import sys
    from pathlib import Path

    from dcase_t6.data.audit import audit
    from dcase_t6.data.dataset_files import DEFAULT_FORBIDDEN
    from dcase_t6.data.layout import Layout

    report = audit(Layout.at(root), Path(forbidden) if forbidden else DEFAULT_FORBIDDEN)
    if as_json:
        print_json(report.as_json())
    else:
        print_audit(report)
    if not report.ok:
        sys.exit(1)


@prepare.command("cache")
@_root_option
@click.option("--rate", default=32000, show_default=True, type=int,
              help="Target sample rate: 32000 for PaSST, 16000 for the other backbones.")
@click.option("--dataset", "datasets", multiple=True, help="Indexed dataset to cache (repeatable; default: all).")
@click.option("--storage", "storage", multiple=True, metavar="[DATASET=]MODE",
              help="How to keep a dataset (repeatable): float32 (decoded, exact), int16 (decoded, half the size) "
                   "or window (decode windows from the source files). Without DATASET: every dataset cached. "
                   "Default: the last choice, else window for wavcaps, int16 for audiocaps, float32 otherwise.")
@click.option("--max-seconds", "max_seconds", multiple=True, metavar="[DATASET=]SECONDS",
              help="Keep only the first SECONDS of each clip (repeatable; 0: whole clips, the default).")
@click.option("--force", is_flag=True, help="Build even when the file system seems to lack the space needed.")
@_workers_option
@json_option
def prepare_cache(root, rate, datasets, storage, max_seconds, force, workers, as_json):
    """Keep every indexed clip at the backbone's rate (mono) in the storage chosen per dataset; training reads it.

    float32 and int16 decode each clip once into memory-mapped shards; window stores only an index of
    the source files and decodes just the window training reads (a random one per epoch, as the
    baseline's 30 s windows of WavCaps). The space needed is stated first; the build refuses when the
    file system lacks it (--force overrides). Only new or changed files (by size/mtime, then CRC-32),
    and clips of a dataset whose storage changed, are cached again; an interrupted run resumes.
    Unreadable files are listed and skipped; silent clips are kept; truncated files (the header promises
    more frames than decode) are cached at the length that decodes and listed in truncated.csv.

    \b
    Example:
      dcase-t6 prepare cache --root data --rate 32000 --workers 4
      dcase-t6 prepare cache --root data --rate 16000 --dataset clotho --dataset wavcaps
      dcase-t6 prepare cache --root data --storage audiocaps=float32 --max-seconds wavcaps=120
    """
    from dcase_t6.data.cache_build import CacheRequest, build_cache
    from dcase_t6.data.layout import Layout
    from dcase_t6.data.storage import StorageRequest

    chosen = StorageRequest(_per_dataset(storage, "--storage", str), _per_dataset(max_seconds, "--max-seconds", float))
    request = CacheRequest(rate, list(datasets) or None, workers=workers, storage=chosen, force=force)
    report = build_cache(Layout.at(root), request, reporter=reporter)
    prepare_done(report, as_json, print_cache)


def _per_dataset(values: tuple[str, ...], option: str, kind: type) -> dict:
    """``[DATASET=]VALUE`` options as {dataset or None: value}."""
    chosen = {}
    for value in values:
        name, _, text = value.rpartition("=")
        try:
            chosen[name or None] = kind(text)
        except ValueError:
            raise UserError(f"{option} {value!r}: expected [DATASET=]{kind.__name__.upper()}, e.g. "
                            f"{option} wavcaps={'window' if kind is str else '120'}") from None
    return chosen
