"""`dcase-t6 package`: build, check or prepare the submission zip."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import click
from rich.markup import escape

from dcase_t6.cli import console, main, matrix_path, print_json
from dcase_t6.cli.console import reporter
from dcase_t6.common.errors import UserError

if TYPE_CHECKING:
    from dcase_t6.submission.package import SystemFiles, SystemSummary

_PACKAGE_MODES = {
    "--check": {"check_zip", "expected_rows", "expected_files", "as_json", "eval_captions", "eval_audio", "data_root"},
    "--init-meta": {"init_meta", "labels", "out", "results", "runs", "weights"},
    "build": {"labels", "predictions", "metas", "report", "draft_report", "weights", "per_query", "runs", "out",
              "expected_rows", "expected_files", "eval_captions", "eval_audio", "data_root", "normalize_from",
              "banks"},
}


@main.command()
@click.option("--label", "-l", "labels", multiple=True,
              help="System label <Lastname>_<INSTITUTE>_task6_<1-4>; repeat for up to 4 systems of one team.")
@click.option("--predictions", "-p", multiple=True, type=click.Path(dir_okay=False),
              help="Similarity matrix (submission CSV or .npz) of each --label, in the same order.")
@click.option("--meta", "-m", "metas", multiple=True, type=click.Path(dir_okay=False),
              help="Metadata YAML of each --label, in the same order (start from --init-meta).")
@click.option("--report", type=click.Path(dir_okay=False),
              help="Technical report PDF; a copy goes into every system folder.")
@click.option("--draft-report", type=click.Path(dir_okay=False),
              help="Instead of --report: write a draft report PDF here (from the metadata) and package it.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Draft report, --init-meta: ensemble weights JSON written by `dcase-t6 ensemble` (members and "
              "weights).")
@click.option("--per-query", type=click.Path(dir_okay=False),
              help="Draft report: per-query CSV of `dcase-t6 evaluate --per-query` (plots recall@K, K=1..50).")
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="The submission .zip to write (with --init-meta: the metadata YAML to write).")
@click.option("--expected-rows", type=click.IntRange(min=1), help="Required number of query rows of every CSV.")
@click.option("--expected-files", type=click.IntRange(min=1),
              help="Required number of audio file columns of every CSV.")
@click.option("--init-meta", is_flag=True, help="Write a pre-filled metadata YAML for --label to --out.")
@click.option("--results", type=click.Path(dir_okay=False),
              help="With --init-meta: fill the results from this `dcase-t6 evaluate --json` output.")
@click.option("--runs", metavar="RUN[,RUN...]",
              help="With --init-meta: fill every system field from these registered runs (the systems of an "
              "ensemble): sampling rate, models and their pretrained weights, augmentation (from the `augment` "
              "sidecars), distillation, loss, learning rate, datasets and splits (with the runs they started or "
              "distilled from), total_parameters (their sum). With --draft-report: draw their training curves "
              "and list the external resources they used.")
@click.option("--check", "check_zip", type=click.Path(dir_okay=False),
              help="Check an existing submission zip like the organisers; exit 1 listing every problem.")
@click.option("--json", "as_json", is_flag=True, help="With --check: print one JSON object {ok, problems, systems}.")
@click.option("--eval-captions", type=click.Path(dir_okay=False), metavar="CSV",
              help="The organisers' retrieval_captions.csv (column caption): every CSV must have exactly these "
              "queries, each once, spelled exactly the same (the organisers match queries by exact string).")
@click.option("--eval-audio", type=click.Path(file_okay=False), metavar="DIR",
              help="With --eval-captions: the evaluation audio folder; the file columns must be exactly its files.")
@click.option("--normalize-from", "--normalise-from", "normalize_from", multiple=True, metavar="[LABEL=]FILE",
              help="Write --label's matrix as the inverted/dual softmax of its scores that this weights file of one "
              "system gives (`dcase-t6 ensemble --search --normalize inverted-softmax -s NAME=VAL`: method and "
              "validation-searched temperature); repeat per label. Transductive: stated in the warnings and the draft "
              "report.")
@click.option("--bank", "banks", multiple=True, metavar="[LABEL=]FILE",
              help="With a --normalize-from file of querybank (QB-Norm): --label's query bank against the clips of "
              "its matrix (the evaluation split: `dcase-t6 embed RUN --dataset eval --split evaluation --bank "
              "development-training`); repeat per label.")
@click.option("--data-root", type=click.Path(file_okay=False), metavar="DATA",
              help="Instead of --eval-captions: the data root where `dcase-t6 prepare eval` ran (its queries and "
              "clips). Building finds it by itself for -p RUN:eval/evaluation (the run's data_root).")
def package(labels, predictions, metas, report, draft_report, weights, per_query, out, expected_rows,
            expected_files, init_meta, results, runs, check_zip, as_json, eval_captions, eval_audio, normalize_from,
            banks, data_root):
    """Build, check or prepare the submission zip: similarity CSV, metadata YAML and report per system.

    The zip holds task6/<label>/<label>.output.csv, <label>.meta.yaml and <label>.technical_report.pdf
    for each system. Everything is validated first (CSV, metadata schema, labels); a failed check
    writes no zip and leaves an existing one untouched.

    \b
    Example:
      dcase-t6 package --init-meta --label Primus_CP-JKU_task6_1 --results eval.json \
          --runs passt-3fa2c1,passt-9b01d2 --out meta.yaml
      dcase-t6 package -l Primus_CP-JKU_task6_1 -p system.csv -m meta.yaml --report report.pdf \\
          --expected-rows 1000 --out submission.zip
      dcase-t6 package -l Primus_CP-JKU_task6_1 -p a.csv -m a.yaml -l Primus_CP-JKU_task6_2 -p b.csv \\
          -m b.yaml --draft-report draft.pdf --per-query per_query.csv --runs passt-3fa2c1,passt-9b01d2 \
          --out submission.zip
      dcase-t6 package -l Primus_CP-JKU_task6_1 -p system.csv -m meta.yaml --report report.pdf \\
          --normalise-from system_norm.json --out submission.zip
      dcase-t6 package -l Primus_CP-JKU_task6_1 -p eval.csv -m meta.yaml --report report.pdf \
          --normalise-from system_qb.json --bank eval.evaluation.bank.npz --out submission.zip
      dcase-t6 package --check submission.zip --expected-rows 1000 --json
      dcase-t6 package --check submission.zip --eval-captions retrieval_captions.csv --eval-audio retrieval_audio/
      dcase-t6 package --check submission.zip --data-root data     # after `dcase-t6 prepare eval --root data`
    """
    from dcase_t6.submission.metadata import init_meta as write_init_meta
    from dcase_t6.submission.package import Expected, build_package, check_package
    from dcase_t6.submission.report import DraftOptions, TechnicalReport

    expected = Expected(rows=expected_rows, files=expected_files)
    mode = "--check" if check_zip else "--init-meta" if init_meta else "build"
    _only_package_options(mode)
    _check_outputs(out, draft_report, [*(("--predictions", path) for path in predictions),
                                       *(("--meta", path) for path in metas), ("--report", report),
                                       ("--weights", weights), ("--per-query", per_query), ("--results", results),
                                       *(("--normalize-from", value) for value in normalize_from),
                                       *(("--bank", value) for value in banks)])
    if eval_audio and not eval_captions:
        raise UserError("package: --eval-audio goes with --eval-captions retrieval_captions.csv")
    if check_zip:
        evalset = _eval_set(eval_captions, eval_audio, data_root)
        _print_check(check_package(check_zip, expected, evalset), check_zip, as_json)
    elif init_meta:
        if len(labels) != 1 or not out:
            raise UserError("package --init-meta: give one --label and --out meta.yaml")
        system = _describe(runs, weights) if runs else None
        write_init_meta(labels[0], out, results, None, system)
        filled = f"; the system fields come from {len(_run_list(runs))} run(s): check them" if system else ""
        _say(f"wrote {_escape(out)}: fill in the empty fields{filled}, then package it")
    else:
        systems = systems_from_options(labels, tuple(matrix_path(p) for p in predictions), metas)
        systems = _with_normalisations(systems, normalize_from, banks) if normalize_from or banks else systems
        if not out or (report is None) == (draft_report is None):
            raise UserError("package: give --out submission.zip and exactly one of --report PDF "
                            "or --draft-report PATH")
        if (weights or per_query or runs) and not draft_report:
            raise UserError("package: --weights, --per-query and --runs only apply with --draft-report")
        draft = (DraftOptions(weights=weights, per_query=per_query, runs=_histories(runs) if runs else (),
                              resources=tuple(_describe(runs, None, count_parameters=False).resources) if runs else ())
                 if draft_report else None)
        evalset = _eval_set(eval_captions, eval_audio, data_root or _found_eval_root(predictions))
        result = build_package(systems, out, TechnicalReport(report or draft_report, draft), expected=expected,
                               evalset=evalset)
        if draft_report:
            _say(f"wrote draft report {_escape(draft_report)}")
        _say(f"[green]wrote[/] {_escape(out)}: {_escape(_systems_line(result.systems))}; all checks pass"
             + (f" (queries and files equal the evaluation set of {_escape(evalset.source)})" if evalset else ""))
        _warn(result.warnings)


def systems_from_options(labels: Sequence[str], predictions: Sequence[str], metas: Sequence[str]) -> list[SystemFiles]:
    """Pair the repeated --label/--predictions/--meta options, which must come in equal numbers.

    Args:
        labels: the ``--label`` values.
        predictions: the ``--predictions`` paths (references already resolved), in the same order.
        metas: the ``--meta`` paths, in the same order.

    Raises:
        UserError: when no label is given or the three counts differ.
    """
    from dcase_t6.submission.package import SystemFiles

    if not labels or not len(labels) == len(predictions) == len(metas):
        raise UserError(f"package: got {len(labels)} --label, {len(predictions)} --predictions and {len(metas)} "
                        "--meta; give one of each per system, in the same order")
    return [SystemFiles(label, Path(prediction), Path(meta))
            for label, prediction, meta in zip(labels, predictions, metas)]


def _with_normalisations(systems: list[SystemFiles], options: Sequence[str], banks: Sequence[str]
                         ) -> list[SystemFiles]:
    """The systems with the normalisation of each ``[LABEL=]FILE`` option (a bare FILE when there is one label)
    and, for QB-Norm, the bank of each ``--bank [LABEL=]FILE``."""
    from dataclasses import replace

    from dcase_t6.cli.normalise_options import resolve_banks, resolve_normalisation
    from dcase_t6.retrieval.normalisation import QUERYBANK

    labels = [system.label for system in systems]
    chosen = {}
    for option in options:
        label, separator, path = option.partition("=")
        if not separator or label not in labels:
            if len(labels) > 1:
                raise UserError(f"--normalize-from {option!r}: name the system, LABEL=FILE, with one of the labels "
                                f"{', '.join(labels)}")
            label, path = labels[0], option
        if label in chosen:
            raise UserError(f"--normalize-from: system {label} is given twice; give one file per label")
        chosen[label] = resolve_normalisation(None, None, path)
    banked = [label for label in labels if chosen.get(label) is not None and chosen[label].method == QUERYBANK]
    if banks and not banked:
        raise UserError("--bank goes with --normalize-from a weights file of querybank; drop it")
    stray = next((option for option in banks if option.partition("=")[0] in set(labels) - set(banked)), None)
    if stray is not None:
        raise UserError(f"--bank {stray!r}: that system is not normalised with querybank; give banks only to "
                        f"{', '.join(banked)}")
    paths = dict(zip(banked, resolve_banks(chosen[banked[0]], banks, banked))) if banked else {}
    return [replace(system, normalisation=chosen.get(system.label),
                    bank=Path(matrix_path(paths[system.label], "bank")) if system.label in paths else None)
            for system in systems]


def _check_outputs(out: str | None, draft_report: str | None, inputs: list[tuple[str, str | None]]) -> None:
    """--out and --draft-report must be writable files that are not an input nor each other (before anything is
    read or written)."""
    from dcase_t6.common.outputs import check_output_file

    if draft_report:
        check_output_file(draft_report, "--draft-report", inputs)
    if out:
        check_output_file(out, "--out", [*inputs, ("--draft-report", draft_report)])


def _eval_set(captions: str | None, audio: str | None, data_root: str | None):
    """The official evaluation set the CSVs must match, or None when none was given or found."""
    from dcase_t6.submission.evalcheck import read_eval_set

    if captions is None and data_root is None:
        return None
    if captions is not None and data_root is not None:
        raise UserError("package: give --eval-captions or --data-root, not both")
    return read_eval_set(captions, audio, data_root)


def _found_eval_root(predictions: Sequence[str]) -> str | None:
    """The data root of a ``-p RUN:eval/evaluation`` run (its config's data_root) when `prepare eval` ran there."""
    from dcase_t6.runs.layout import WorkLayout
    from dcase_t6.runs.registry import Registry
    from dcase_t6.submission.evalcheck import EVAL_DATASET, EVAL_SPLIT, find_eval_root

    workdir = click.get_current_context().obj["workdir"]
    for reference in predictions:
        run, separator, tag = reference.partition(":")
        if not separator or tag != f"{EVAL_DATASET}/{EVAL_SPLIT}" or Path(reference).exists() \
                or not WorkLayout.at(workdir).database.is_file():
            continue
        found = Registry(workdir).find(run)
        root = found.config.get("data_root") if found is not None else None
        if root and find_eval_root(root) is not None:
            return str(root)
    return None


def _run_list(runs: str) -> list[str]:
    return [run for run in runs.split(",") if run]


def _describe(runs: str, weights: str | None, count_parameters: bool = True):
    """The system description of the given registered runs (an ensemble's members), with their weights file."""
    from dcase_t6.ensemble.weights import read_weights
    from dcase_t6.runs.registry import Registry
    from dcase_t6.submission.systems import describe_runs

    registry = Registry(click.get_current_context().obj["workdir"])
    return describe_runs(registry, _run_list(runs), read_weights(weights) if weights else None, count_parameters)


def _histories(runs: str) -> tuple:
    """The training histories of the given registered runs, for the draft report's curves."""
    from dcase_t6.runs.registry import Registry
    from dcase_t6.sharing.history import RunHistory

    registry = Registry(click.get_current_context().obj["workdir"])
    return tuple(RunHistory.of(registry.run(run)) for run in runs.split(",") if run)


def _say(markup: str) -> None:
    console.print(markup, highlight=False, soft_wrap=True)


def _warn(warnings: list[str]) -> None:
    """One ``warning:`` line per warning, on stderr (they do not fail the command)."""
    for warning in warnings:
        reporter.warning(str(warning))


def _escape(text: str) -> str:

    return escape(str(text))


def _only_package_options(mode: str) -> None:
    from click.core import ParameterSource

    ctx = click.get_current_context()
    for param in ctx.command.params:
        given = ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE
        if given and param.name not in _PACKAGE_MODES[mode]:
            what = "building a zip" if mode == "build" else mode
            raise UserError(f"package: {param.opts[0]} does not apply to {what}; see `dcase-t6 package --help`")


def _systems_line(systems: list[SystemSummary]) -> str:
    return ", ".join(f"{s.label} ({'?' if s.queries is None else s.queries} queries x "
                     f"{'?' if s.files is None else s.files} files)" for s in systems)


def _print_check(result, source: str, as_json: bool) -> None:
    if as_json:
        print_json(result.as_json())
    elif result.ok:
        against = f"; queries and files equal the evaluation set of {result.eval_set.source}" if result.eval_set else ""
        _say(f"[green]ok[/] {_escape(source)}: {_escape(_systems_line(result.systems) + against)}")
    else:
        _say(f"[bold red]{_escape(source)}: {len(result.problems)} problem(s)[/]")
        for problem in result.problems:
            _say(f"  - {_escape(problem)}")
    if not as_json:
        _warn(result.warnings)
    if not result.ok:
        sys.exit(1)
