"""The score-normalisation options shared by `evaluate` and `package`: a method and temperature, or a file; the
QB-Norm banks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import click

from dcase_t6.common.errors import UserError

if TYPE_CHECKING:
    from dcase_t6.retrieval.normalisation import Normalisation

METHODS = ("inverted-softmax", "dual-softmax", "querybank")
BANK_HELP = ("QB-Norm's query bank of a system: training captions scored against the clips of the matrix's split "
             "(`dcase-t6 embed RUN --split SPLIT --bank development-training` writes <dataset>.<split>.bank.npz, "
             "also named RUN:DATASET/SPLIT); LABEL=FILE per system when there are several.")


def normalise_options(command):
    """Add ``--normalize/--normalise``, ``--temperature``, ``--normalize-from/--normalise-from``, ``--bank`` and
    ``--bank-top-k`` to ``command``."""
    command = click.option("--bank-top-k", "bank_top_k", type=int, metavar="K",
                           help="With querybank: a clip is a hub when it is among the K best of at least one bank "
                           "caption (default 1).")(command)
    command = click.option("--bank", "banks", multiple=True, metavar="[LABEL=]FILE", help=BANK_HELP)(command)
    command = click.option(
        "--normalize-from", "--normalise-from", "normalize_from", type=click.Path(dir_okay=False), metavar="FILE",
        help="Normalise the matrix as this weights file of one system says (written by `dcase-t6 ensemble --search "
        "--normalize inverted-softmax -s NAME=VALIDATION`: its method and validation-searched temperature).")(command)
    command = click.option("--temperature", type=float,
                           help="The temperature of --normalize (e.g. 0.05 for cosine similarities).")(command)
    return click.option(
        "--normalize", "--normalise", "normalize", type=click.Choice(METHODS),
        help="Normalise the scores first: inverted-softmax (each clip's column softmaxed over all queries) or "
        "dual-softmax (row softmax x column softmax), as log-probabilities; needs --temperature. Transductive: "
        "a query's scores then depend on every other query of the matrix. querybank (QB-Norm): the inverted "
        "softmax over a --bank of training captions, for the queries whose best clip is a hub of the bank; not "
        "transductive.")(command)


def resolve_normalisation(method: str | None, temperature: float | None, from_file: str | None,
                          top_k: int | None = None) -> Normalisation | None:
    """The normalisation the options ask for (None: none), checked before any matrix is read.

    Raises:
        UserError: for --temperature without --normalize (or the reverse), --normalize-from with either, or
            --bank-top-k without --normalize querybank.
    """
    from dcase_t6.ensemble.temperatures import matrix_normalisation
    from dcase_t6.ensemble.weights import read_weights
    from dcase_t6.retrieval.normalisation import QUERYBANK, check_normalisation

    if from_file is not None:
        if method is not None or temperature is not None or top_k is not None:
            raise UserError("--normalize-from takes the method and temperature (and top_k) from its file; drop "
                            "--normalize, --temperature and --bank-top-k")
        return matrix_normalisation(read_weights(from_file))
    if top_k is not None and method != QUERYBANK:
        raise UserError(f"--bank-top-k {top_k}: only --normalize querybank has an activation set; drop it")
    if method is None:
        if temperature is not None:
            raise UserError("--temperature goes with --normalize inverted-softmax, dual-softmax or querybank")
        return None
    if temperature is None:
        raise UserError(f"--normalize {method}: give its --temperature (e.g. 0.05), or --normalize-from a weights "
                        "file whose temperature was searched on validation")
    return check_normalisation(method, temperature, top_k=1 if top_k is None else top_k)


def resolve_banks(normalisation: Normalisation | None, options: Sequence[str], labels: Sequence[str]
                  ) -> list[str | None]:
    """The bank file of each system (``labels``, in order) from the ``--bank [LABEL=]FILE`` options.

    Args:
        normalisation: the resolved normalisation; only ``querybank`` takes banks, and needs one per system.
        options: the ``--bank`` values.
        labels: the systems' labels; a bare FILE is allowed when there is one system.

    Returns:
        One path per system (all None without ``querybank``).

    Raises:
        UserError: for --bank without querybank, a label given twice or unknown, or a system without a bank.
    """
    from dcase_t6.retrieval.normalisation import QUERYBANK

    if normalisation is None or normalisation.method != QUERYBANK:
        if options:
            raise UserError("--bank goes with --normalize querybank (or a --normalize-from file of querybank); drop "
                            "it")
        return [None] * len(labels)
    chosen: dict[str, str] = {}
    for option in options:
        label, separator, path = option.partition("=")
        if not separator or label not in labels:
            if len(labels) > 1:
                raise UserError(f"--bank {option!r}: name the system, LABEL=FILE, with one of {', '.join(labels)}")
            label, path = labels[0], option
        if label in chosen:
            raise UserError(f"--bank: system {label} is given twice; give one bank per system")
        chosen[label] = path
    missing = next((label for label in labels if label not in chosen), None)
    if missing is not None:
        example = "--bank BANK.npz" if len(labels) == 1 else f"--bank {missing}=BANK.npz"
        raise UserError(f"{normalisation.describe()}: system {missing} has no query bank; give {example} "
                        "(`dcase-t6 embed RUN --split SPLIT --bank development-training` writes it)")
    return [chosen[label] for label in labels]
