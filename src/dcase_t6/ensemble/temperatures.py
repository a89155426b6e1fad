"""Temperatures of the tempered normalisations (``inverted-softmax``, ``dual-softmax``, ``querybank``; see
``retrieval.normalisation``): the grid an ensemble search tries, which grid point wins, and the normalisation a
weights file asks of one matrix (``evaluate`` / ``package --normalise-from``).

The search tries every temperature of the grid, searches the weights at each (see ``search``) and keeps the
temperature whose best weights score the highest validation mAP@16; ties go to the larger temperature (the
smoother normalisation). The default grid is log-spaced, four points a decade from 0.001 to 10, which spans
the useful range for cosine similarities (scores in [-1, 1]); scores on another scale need their own grid
(``--temperatures``), since the normalisations depend on ``scores / temperature`` only.
"""

from __future__ import annotations

import math
from typing import Sequence

from dcase_t6.common.errors import UserError
from dcase_t6.ensemble.weights import EnsembleWeights
from dcase_t6.retrieval.normalisation import NORMALISERS, Normalisation

DEFAULT_TEMPERATURES = tuple(float(f"{10 ** (k / 4):.4g}") for k in range(-12, 5))


def temperature_grid(normalize: str, temperatures: Sequence[float] = ()) -> tuple[float | None, ...]:
    """The temperatures a search tries, ascending and without repeats: ``(None,)`` for ``none`` / ``zscore``.

    Args:
        normalize: the search's normalisation.
        temperatures: the temperatures asked for (empty: ``DEFAULT_TEMPERATURES``).

    Raises:
        UserError: for temperatures given with ``none`` / ``zscore``, or a temperature that is not a finite
            number > 0.
    """
    if normalize not in NORMALISERS:
        if temperatures:
            raise UserError(f"--temperatures: only --normalize {' or '.join(NORMALISERS)} has a temperature, not "
                            f"--normalize {normalize}; drop --temperatures")
        return (None,)
    for value in temperatures:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UserError(f"--temperatures: {value!r} is not a finite number > 0; e.g. --temperatures "
                            "0.01,0.02,0.05,0.1")
    return tuple(sorted({float(value) for value in temperatures or DEFAULT_TEMPERATURES}))


def parse_temperatures(text: str | None) -> tuple[float, ...]:
    """The temperatures of a ``--temperatures 0.01,0.02,0.05`` option (empty when not given).

    Raises:
        UserError: for an entry that is not a number.
    """
    if not text:
        return ()
    values = []
    for entry in text.split(","):
        try:
            values.append(float(entry))
        except ValueError:
            raise UserError(f"--temperatures {text!r}: {entry.strip()!r} is not a number; give comma-separated "
                            "temperatures, e.g. 0.01,0.02,0.05,0.1") from None
    return tuple(values)


def best_temperature(temperatures: Sequence[float | None], scores: Sequence[float]) -> int:
    """Index of the best grid point: the highest score (to 1e-12), ties to the larger temperature."""
    return max(range(len(scores)), key=lambda index: (round(scores[index], 12), temperatures[index] or 0.0))


def matrix_normalisation(weights: EnsembleWeights) -> Normalisation:
    """The normalisation a weights file of one system gives that system's matrix (``--normalise-from``).

    A file of several systems normalises each before their weighted sum, which ``ensemble --apply`` already
    did: normalising its output again would be a different system, so such a file is refused.

    Args:
        weights: a weights file written by ``dcase-t6 ensemble --search --normalize inverted-softmax`` (or
            ``dual-softmax``, ``querybank``: then with its ``top_k``), e.g. of a single system.

    Raises:
        UserError: for a file of several systems or one without a tempered normalisation.
    """
    where = weights.source or "the weights file"
    if len(weights.weights) != 1:
        raise UserError(f"{where}: normalises each of its {len(weights.weights)} systems before their weighted sum, "
                        f"which `dcase-t6 ensemble --apply -w {where}` already does; use the --apply output as it "
                        "is (without --normalise-from)")
    normalisation = weights.normalisation
    if normalisation is None:
        raise UserError(f"{where}: \"normalize\" is {weights.normalize!r}, which has no temperature; pass a file of "
                        f"`dcase-t6 ensemble --search --normalize {NORMALISERS[0]}` (or {NORMALISERS[1]})")
    return normalisation
