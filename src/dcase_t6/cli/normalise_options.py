"""The score-normalisation options shared by `evaluate` and `package`: a method and temperature, or a file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from dcase_t6.common.errors import UserError

if TYPE_CHECKING:
    from dcase_t6.retrieval.normalisation import Normalisation

METHODS = ("inverted-softmax", "dual-softmax")


def normalise_options(command):
    """Add ``--normalize/--normalise``, ``--temperature`` and ``--normalize-from/--normalise-from`` to ``command``."""
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
        "a query's scores then depend on every other query of the matrix.")(command)


def resolve_normalisation(method: str | None, temperature: float | None, from_file: str | None
                          ) -> Normalisation | None:
    """The normalisation the options ask for (None: none), checked before any matrix is read.

    Raises:
        UserError: for --temperature without --normalize (or the reverse), or --normalize-from with either.
    """
    from dcase_t6.ensemble.temperatures import matrix_normalisation
    from dcase_t6.ensemble.weights import read_weights
    from dcase_t6.retrieval.normalisation import check_normalisation

    if from_file is not None:
        if method is not None or temperature is not None:
            raise UserError("--normalize-from takes the method and temperature from its file; drop --normalize and "
                            "--temperature")
        return matrix_normalisation(read_weights(from_file))
    if method is None:
        if temperature is not None:
            raise UserError("--temperature goes with --normalize inverted-softmax or dual-softmax")
        return None
    if temperature is None:
        raise UserError(f"--normalize {method}: give its --temperature (e.g. 0.05), or --normalize-from a weights "
                        "file whose temperature was searched on validation")
    return check_normalisation(method, temperature)
