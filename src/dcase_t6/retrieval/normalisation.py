"""Inference-time score normalisation of a (queries x clips) similarity matrix: inverted and dual softmax.

Notation: ``S`` the scores (rows = text queries, columns = audio clips), ``T > 0`` the temperature,
``L_c = log sum_q exp(S[q, c] / T)`` the log-sum-exp of clip ``c``'s column over every query of the matrix
and ``R_q = log sum_c exp(S[q, c] / T)`` that of query ``q``'s row over every clip. Both normalisers return
natural logarithms of probabilities (higher = more relevant): they rank exactly like the probabilities but
never underflow to ties, and they are finite wherever the scores are.

* ``inverted-softmax``: ``I[q, c] = S[q, c] / T - L_c``, the log of clip ``c``'s column softmaxed over the
  queries. The idea comes from Smith et al. (ICLR 2017, "Offline bilingual word vectors, orthogonal
  transformations and the inverted softmax"): a "hub" that is close to every query should not win every
  query, so each target's similarities are first normalised over the sources that could retrieve it.
  Bogolin et al. (CVPR 2022, "Cross modal retrieval with querybank normalisation") apply the same correction
  to text-video retrieval. Within a query's row (what the organisers rank) ``I`` orders the clips like
  ``S[q, c] - T * L_c``: the raw score minus a soft maximum of the clip's scores over all queries
  (``T -> 0``: its largest score; ``T -> inf``: its mean score plus the constant ``T log(queries)``).
  Adding a constant to a clip's column leaves ``I`` unchanged.
* ``dual-softmax``: ``D[q, c] = 2 S[q, c] / T - R_q - L_c``, the log of the elementwise product of the row
  softmax and the column softmax, as in the "dual softmax" matching of Sun et al. (CVPR 2021, LoFTR). It is
  the symmetric form; Cheng et al. (2021, "Improving video-text retrieval by multi-stream corpus alignment
  and dual softmax loss") instead multiply the raw similarity by the column softmax, a product in which a
  larger prior lowers a negative score (cosine scores can be negative); that variant is not used here. Within a row
  ``D`` orders the clips like ``S[q, c] - (T / 2) * L_c``: the same hubness correction at half the strength.

Both are transductive: a query's normalised scores depend on every other query of the matrix (the whole
test or evaluation caption set), not on that query and the clips alone. The DCASE 2025 Task 6 rules allow
the evaluation audio files and captions as the only information about the evaluation data; they do not
say whether the other evaluation captions may be used for a query, so a submission that normalises must
state it (``dcase-t6 package`` records it in its warnings and in the draft report).

Memory: the result is one float64 array of the matrix's size; the log-sum-exp runs in blocks of at most
``_BLOCK_ELEMENTS`` scores, so 5,225 x 1,045 (Clotho validation) needs about 44 MB plus a 32 MB block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.matrices import SimilarityMatrix

INVERTED_SOFTMAX = "inverted-softmax"
DUAL_SOFTMAX = "dual-softmax"
NORMALISERS = (INVERTED_SOFTMAX, DUAL_SOFTMAX)
_BLOCK_ELEMENTS = 1 << 22
TRANSDUCTIVE_NOTE = ("transductive: each query's normalised scores depend on every other query of the matrix "
                     "(all evaluation captions together)")


@dataclass(frozen=True)
class Normalisation:
    """A temperature-scaled normaliser of a score matrix.

    Args:
        method: ``inverted-softmax`` or ``dual-softmax`` (see the module docstring).
        temperature: the softmax temperature, a finite number > 0.
        source: where it was read from (a weights file), for messages; not compared.
    """

    method: str
    temperature: float
    source: str = field(default="", compare=False)

    def describe(self) -> str:
        """``inverted softmax (T = 0.05)``: the method and its temperature, for messages and reports."""
        return f"{self.method.replace('-', ' ')} (T = {self.temperature:g})"

    def as_json(self) -> dict:
        """``{"method": ..., "temperature": ...}``."""
        return {"method": self.method, "temperature": self.temperature}


def check_normalisation(method: str, temperature: float, where: str = "--temperature") -> Normalisation:
    """A :class:`Normalisation`, or a UserError naming ``where`` for an unknown method or a bad temperature."""
    if method not in NORMALISERS:
        raise UserError(f"normalisation {method!r}: expected one of {', '.join(NORMALISERS)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise UserError(f"{where} {temperature!r}: the temperature of {method} must be a finite number > 0 "
                        "(e.g. 0.05 for cosine similarities)")
    return Normalisation(method, float(temperature))


def inverted_softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``S / T - L_c``: the log of each clip's column softmaxed over the queries (see the module docstring).

    Args:
        scores: (queries, clips) similarity scores, finite.
        temperature: ``T > 0``.

    Returns:
        A new (queries, clips) float64 array of log-probabilities; each column's exponentials sum to 1.

    Raises:
        UserError: when ``scores / T`` overflows float64 (a temperature far too small for the scores).
    """
    scaled = _scaled(scores, temperature)
    scaled -= column_log_sum_exp(scaled)
    return scaled


def dual_softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``2 S / T - R_q - L_c``: the log of the row softmax times the column softmax (see the module docstring).

    Args:
        scores: (queries, clips) similarity scores, finite.
        temperature: ``T > 0``.

    Returns:
        A new (queries, clips) float64 array; ``dual_softmax(S.T) == dual_softmax(S).T``.

    Raises:
        UserError: when ``2 S / T`` overflows float64.
    """
    scaled = _scaled(scores, temperature)
    columns = column_log_sum_exp(scaled)
    rows = column_log_sum_exp(scaled.T)
    scaled *= 2.0
    scaled -= rows[:, None]
    scaled -= columns
    return scaled


def column_log_sum_exp(values: np.ndarray) -> np.ndarray:
    """``log sum_rows exp(values)`` of every column, stable (the column maximum is factored out) and computed in
    row blocks of at most ``_BLOCK_ELEMENTS`` values, so the only temporary is one block."""
    peak = values.max(axis=0)
    total = np.zeros(values.shape[1], dtype=np.float64)
    rows = max(1, _BLOCK_ELEMENTS // max(1, values.shape[1]))
    for start in range(0, values.shape[0], rows):
        block = values[start:start + rows] - peak
        np.exp(block, out=block)
        total += block.sum(axis=0)
    return peak + np.log(total)


def normalise(scores: np.ndarray, normalisation: Normalisation, where: str = "") -> np.ndarray:
    """The scores under ``normalisation`` (a new array); ``where`` names the matrix in an overflow message."""
    function = inverted_softmax if normalisation.method == INVERTED_SOFTMAX else dual_softmax
    try:
        return function(scores, normalisation.temperature)
    except UserError as err:
        raise UserError(f"{where}: {err}" if where else str(err)) from None


def normalise_matrix(matrix: SimilarityMatrix, normalisation: Normalisation | None, where: str = ""
                     ) -> SimilarityMatrix:
    """``matrix`` with normalised scores (the same queries and files); itself when ``normalisation`` is None."""
    if normalisation is None:
        return matrix
    return SimilarityMatrix(matrix.queries, matrix.files, normalise(matrix.scores, normalisation, where))


def _scaled(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``scores / temperature`` as a new float64 array; a UserError if it (or twice it) is not finite."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise UserError(f"temperature {temperature!r}: it must be a finite number > 0")
    largest = float(np.abs(scores).max()) if scores.size else 0.0
    if not math.isfinite(largest / temperature * 2.0):
        raise UserError(f"scores up to {largest:g} divided by the temperature {temperature:g} overflow float64; "
                        "use a larger temperature")
    return np.asarray(scores, dtype=np.float64) / temperature
