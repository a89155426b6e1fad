"""`dcase-t6 ensemble --search/--apply`: weighted sums of systems' matrices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import click
from rich.table import Table

from dcase_t6.cli import main, matrix_path, print_json, split_named
from dcase_t6.cli.console import console, reporter
from dcase_t6.common.errors import UserError
from dcase_t6.common.reporting import SILENT

if TYPE_CHECKING:
    from dcase_t6.ensemble.systems import System
    from dcase_t6.ensemble.weights import EnsembleWeights

_ENSEMBLE_MODE_ONLY = {"search": ("captions", "relevance", "allow_missing", "normalize", "temperatures", "step",
                                  "groups", "strategy", "top", "bank_top_k"),
                       "apply": ("weights",)}


@main.command()
@click.option("--search", "do_search", is_flag=True, help="Grid-search the weights on validation matrices; "
              "write them to --out (JSON).")
@click.option("--apply", "do_apply", is_flag=True, help="Combine matrices with the --weights of a search; "
              "write the ensemble matrix to --out.")
@click.option("--system", "-s", "systems", multiple=True, required=True, metavar="NAME=PATH",
              help="One system's similarity matrix (.csv or .npz); repeat. MODEL/SYSTEM names enable --strategy.")
@click.option("--captions", "-c", type=click.Path(dir_okay=False),
              help="[search] Clotho captions CSV: single-relevant validation (each caption -> its clip).")
@click.option("--relevance", "-r", type=click.Path(dir_okay=False),
              help="[search] Multi-relevance CSV (query, audio_filenames).")
@click.option("--allow-missing", is_flag=True,
              help="[search] Skip ground-truth queries absent from the matrices instead of failing.")
@click.option("--normalize", "--normalise", "normalize",
              type=click.Choice(["none", "zscore", "inverted-softmax", "dual-softmax", "querybank"]), default="none",
              show_default=True,
              help="[search] Each system's normalisation before summing; zscore: each row -> (x - mean) / std; "
              "inverted-softmax: each clip's column softmaxed over all queries (log); dual-softmax: row softmax x "
              "column softmax (log); the two softmaxes use every query of the matrix (transductive) and a temperature "
              "searched with the weights (one system alone is then allowed); querybank (QB-Norm): the inverted softmax "
              "over each system's --bank of training captions, for the queries whose best clip is a bank hub (not "
              "transductive; temperature searched too). --apply uses the one stored in the weights file.")
@click.option("--temperatures", metavar="T1,T2,...",
              help="[search] Temperatures tried with inverted-softmax / dual-softmax / querybank (default: 17 "
              "log-spaced from 0.001 to 10, for cosine similarities).")
@click.option("--bank", "banks", multiple=True, metavar="NAME=FILE",
              help="With querybank: each --system's query bank for the split of its matrix (validation with "
              "--search, the applied split with --apply), written by `dcase-t6 embed RUN --split SPLIT --bank "
              "development-training`; repeat per system.")
@click.option("--bank-top-k", "bank_top_k", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="[search] With querybank: a clip is a hub when it is among the K best of at least one bank caption.")
@click.option("--step", type=float, default=0.05, show_default=True,
              help="[search] Spacing of the weight grid on the simplex (weights >= 0, sum 1); must divide 1.")
@click.option("--group", "groups", multiple=True, metavar="GROUP=NAME1,NAME2",
              help="[search] Two-stage search: weights inside each group, then across the groups; repeat. "
              "Ungrouped systems form their own group. Overrides --strategy.")
@click.option("--strategy", type=click.Choice(["system-first", "model-first"]),
              help="[search] Groups from MODEL/SYSTEM names: system-first combines each model's systems, then "
              "weights the models; model-first combines each system across models, then weights those.")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="[search] How many best weight candidates to print and store.")
@click.option("--weights", "-w", type=click.Path(dir_okay=False), help="[apply] Weights JSON written by --search.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="--search: the weights JSON to write; --apply: the ensemble matrix (.csv, or .npz by suffix).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables (no progress bar).")
@click.pass_context
def ensemble(ctx, do_search, do_apply, systems, captions, relevance, allow_missing, normalize, temperatures, banks,
             bank_top_k, step, groups, strategy, top, weights, out, as_json):
    """Weighted sum of several systems' similarity matrices, weights grid-searched on validation mAP@16.

    --search scores every weight vector on the simplex grid (4 systems at --step 0.05: 1771 points)
    on validation matrices and saves the best flat weights, the top candidates and the exactly
    re-scored validation metrics to a JSON file. --apply combines test/eval matrices with those weights.
    All matrices must score the same queries and files (they are reordered to the first --system);
    a repeated caption's identical rows count as one row, different rows are matched occurrence by
    occurrence, as evaluate does. The -s order changes nothing (systems are summed in name order).
    Ensemble = sum_i w_i N(S_i), N = identity, the per-query z-score (--normalize zscore), or the inverted
    or dual softmax at a temperature searched on validation with the weights (transductive: a query's
    scores then depend on every query of the matrix; see docs/evaluation.md).

    \b
    Two-stage search (--group or --strategy): stage 1 finds the weights inside each group, stage 2
    the weights across the combined group matrices; a system's flat weight is inner x group weight.
    With MODEL/SYSTEM names, system-first groups by MODEL and model-first groups by SYSTEM.

    \b
    Example:
      dcase-t6 ensemble --search -s passt/s1=p1_val.csv -s passt/s2=p2_val.csv \\
          -s cnn/s1=c1_val.csv -s cnn/s2=c2_val.csv -c clotho_captions_validation.csv \\
          --normalize zscore --strategy system-first --out weights.json
      dcase-t6 ensemble --apply -w weights.json -s passt/s1=p1_test.csv -s passt/s2=p2_test.csv \\
          -s cnn/s1=c1_test.csv -s cnn/s2=c2_test.csv --out ensemble_test.csv
      dcase-t6 ensemble --search -s passt=p1_val.csv -c clotho_captions_validation.csv \\
          --normalize inverted-softmax --out passt_norm.json     # one system: its temperature
      dcase-t6 ensemble --search -s passt=p_val.npz --bank passt=clotho.development-validation.bank.npz \
          -c clotho_captions_validation.csv --normalize querybank --out passt_qb.json
    """
    from dcase_t6.common.outputs import check_output_file
    from dcase_t6.ensemble.search import SearchOptions, apply, plan_search, search
    from dcase_t6.ensemble.temperatures import parse_temperatures
    from dcase_t6.ensemble.weights import read_weights, write_weights
    from dcase_t6.retrieval.ground_truth import check_ground_truth_options, read_ground_truth
    from dcase_t6.retrieval.matrices import write_matrix

    mode = _ensemble_mode(ctx, do_search, do_apply)
    named_paths = parse_system_options(systems, matrix_path)
    bank_paths = parse_bank_options(banks, [name for name, _ in named_paths])
    check_output_file(out, "--out", [*((f"--system {name}", path) for name, path in named_paths),
                                     *((f"--bank {name}", path) for name, path in bank_paths.items()),
                                     ("--weights", weights), ("--captions", captions), ("--relevance", relevance)])
    if mode == "apply":
        if weights is None:
            raise UserError("ensemble --apply: give --weights weights.json (written by `dcase-t6 ensemble --search`)")
        stored = read_weights(weights)
        _check_banks(stored.normalize, bank_paths)
        combined = apply(stored, read_systems(named_paths, bank_paths))
        write_matrix(combined, out)
        result = {"out": str(out), "weights": stored.weights, "normalize": stored.normalize,
                  **({"temperature": stored.temperature} if stored.temperature is not None else {}),
                  **({"top_k": stored.top_k} if stored.top_k is not None else {}),
                  "n_queries": combined.shape[0], "n_files": combined.shape[1]}
        if as_json:
            print_json(result)
            return
        console.print(f"wrote {out}: {result['n_queries']} queries x {result['n_files']} files, "
                      f"normalize {_normalize_text(stored)}, weights {_weights_text(result['weights'])}",
                      highlight=False, soft_wrap=True)
        return
    check_ground_truth_options("ensemble --search", relevance, captions)
    options = SearchOptions(normalize=normalize, step=step, groups=parse_group_options(groups), strategy=strategy,
                            top=top, allow_missing=allow_missing, temperatures=parse_temperatures(temperatures),
                            top_k=bank_top_k)
    plan_search([name for name, _ in named_paths], options)  # refuse a bad search before reading any matrix
    _check_banks(normalize, bank_paths)
    truth = read_ground_truth("ensemble --search", relevance, captions)
    found = search(read_systems(named_paths, bank_paths), truth, options, SILENT if as_json else reporter)
    write_weights(found.weights, out)
    if as_json:
        print_json(found.weights.as_json())
        return
    _print_ensemble_search(found.weights, out)


def parse_system_options(options: Sequence[str], resolve=str) -> list[tuple[str, str]]:
    """(name, path) of every ``NAME=REFERENCE`` option.

    Args:
        options: the ``--system`` values.
        resolve: turns a reference (a path or RUN:DATASET/SPLIT) into a path; the CLI passes ``matrix_path``.

    Raises:
        UserError: for an option without ``=``, an empty part, or a name given twice.
    """
    from dcase_t6.ensemble.systems import reject_duplicates

    parsed = [split_named(option, "--system", "passt/s1=passt_s1_val.csv") for option in options]
    reject_duplicates([name for name, _ in parsed], "--system name")
    return [(name, resolve(reference)) for name, reference in parsed]


def read_systems(named_paths: Sequence[tuple[str, str]], banks: dict[str, str] | None = None) -> list[System]:
    """Read the matrix (and the query bank, if ``banks`` names one) of every (name, path), unaligned (the library
    aligns them)."""
    from dcase_t6.ensemble.systems import System
    from dcase_t6.retrieval.matrices import read_matrix
    from dcase_t6.retrieval.normalisation import read_bank

    banks = banks or {}
    return [System(name, read_matrix(path), path, read_bank(banks[name]) if name in banks else None)
            for name, path in named_paths]


def parse_bank_options(options: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """System name -> bank path of every ``--bank NAME=FILE`` option.

    Raises:
        UserError: for bad syntax, a name given twice, or a name that no --system has.
    """
    from dcase_t6.ensemble.systems import reject_duplicates

    parsed = [split_named(option, "--bank", "passt=clotho.development-validation.bank.npz") for option in options]
    reject_duplicates([name for name, _ in parsed], "--bank name")
    unknown = next((name for name, _ in parsed if name not in names), None)
    if unknown is not None:
        raise UserError(f"--bank {unknown}=...: no --system is named {unknown!r}; use one of {', '.join(names)}")
    return {name: matrix_path(reference, "bank") for name, reference in parsed}


def _check_banks(normalize: str, banks: dict[str, str]) -> None:
    """Banks go with querybank only (each system's bank is required there, which the library checks)."""
    if banks and normalize != "querybank":
        raise UserError(f"--bank: only --normalize querybank uses query banks, not {normalize}; drop --bank")


def parse_group_options(options: Sequence[str]) -> dict[str, list[str]]:
    """Group name -> member names of every ``GROUP=NAME1,NAME2`` option.

    Raises:
        UserError: for bad syntax or a group name given twice (members are checked by the search).
    """
    groups: dict[str, list[str]] = {}
    for option in options:
        group_name, separator, listed = option.partition("=")
        members = [member.strip() for member in listed.split(",") if member.strip()]
        if not separator or not group_name.strip() or not members:
            raise UserError(f"--group {option!r}: expected GROUP=NAME1,NAME2 with --system names")
        if group_name.strip() in groups:
            raise UserError(f"--group name {group_name.strip()!r} is given twice; use each name once")
        groups[group_name.strip()] = members
    return groups


def _ensemble_mode(ctx: click.Context, do_search: bool, do_apply: bool) -> str:
    """``search`` or ``apply``; a UserError for neither/both or an option of the other mode."""
    if do_search == do_apply:
        raise UserError("ensemble: give exactly one of --search (find weights on validation) or --apply (use them)")
    mode, other = ("search", "apply") if do_search else ("apply", "search")
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    foreign = [name for name in _ENSEMBLE_MODE_ONLY[other]
               if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if foreign:
        raise UserError(f"ensemble --{mode}: {flags[foreign[0]]} belongs to --{other}; drop it")
    return mode


def _normalize_text(weights: EnsembleWeights) -> str:
    """``zscore``, or ``inverted-softmax (T = 0.05)`` for a tempered normalisation."""
    if weights.temperature is None:
        return weights.normalize
    if weights.normalize == "querybank":
        return f"querybank (T = {weights.temperature:g}, top-{weights.top_k or 1} hubs, not transductive)"
    return f"{weights.normalize} (T = {weights.temperature:g}, transductive)"


def _weights_text(weights: dict) -> str:
    return " ".join(f"{name}={weight:.4g}" for name, weight in weights.items())


def _print_ensemble_search(weights: EnsembleWeights, out: str) -> None:
    validation, metric = weights.validation, weights.metric
    console.print(f"best weights: validation {metric} {validation.scores[metric]:.4f} "
                  f"({validation.n_queries} queries, {validation.setting}, normalize {_normalize_text(weights)})",
                  highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("system")
    table.add_column("weight", justify="right")
    group_of = {name: group for group in weights.groups for name in group.members}
    if group_of:
        table.add_column("group (weight, inner weight)")
    for name, weight in weights.weights.items():
        cells = [name, f"{weight:.4f}"]
        if group_of:
            group = group_of[name]
            cells.append(f"{group.name} ({group.weight:.2f}, {group.members[name]:.2f})")
        table.add_row(*cells)
    console.print(table)
    console.print("validation: " + "  ".join(f"{key} {validation.scores[key]:.4f}" for key in
                                              ("R@1", "R@5", "R@10", "mAP@10", "mAP@16")), highlight=False)
    candidates = Table(title=f"top {len(weights.candidates)} candidates", title_justify="left")
    candidates.add_column("#", justify="right")
    candidates.add_column(metric, justify="right")
    candidates.add_column("weights")
    for rank, candidate in enumerate(weights.candidates, start=1):
        candidates.add_row(str(rank), f"{candidate.score:.4f}", _weights_text(candidate.weights))
    console.print(candidates)
    if weights.temperature_search:
        console.print(f"{metric} of the best weights at each temperature: " + "  ".join(
            f"{entry.temperature:g}: {entry.score:.4f}" for entry in weights.temperature_search),
            highlight=False, soft_wrap=True)
    console.print(f"saved {out} ({weights.grid_points} grid points, {weights.strategy} search, "
                  f"{weights.seconds:.1f} s)", highlight=False, soft_wrap=True)
