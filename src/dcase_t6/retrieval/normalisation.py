"""Inference-time score normalisation of a (queries x clips) similarity matrix: inverted and dual softmax, QB-Norm.

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

* ``querybank`` (QB-Norm, Bogolin et al., CVPR 2022): the inverted softmax with the evaluation queries
  replaced by a fixed bank of training captions. ``B`` holds the bank's scores (bank captions x the very clips
  of ``S``, matched by clip name), ``L_c = log sum_b exp(B[b, c] / T)`` the log-sum-exp of clip ``c`` over the
  bank, and the activation set ``A`` the clips that rank among the ``k`` best (default ``k = 1``) of at least one
  bank caption: the bank's hubs. A query whose raw best clip (``argmax_c S[q, c]``, the first on ties) lies
  in ``A`` gets the row ``S[q, c] / T - L_c``; any other query keeps ``S[q, c] / T``, its raw ranking (the
  "dynamic" inverted softmax: only queries that a hub would capture are corrected). The choice is made per
  row, which is all the metrics see: they rank the clips of one row. Where ``A`` is every clip this is the
  inverted softmax over the bank; where it is empty, the raw scores divided by ``T``.

The inverted and dual softmax are transductive: a query's normalised scores depend on every other query of
the matrix (the whole test or evaluation caption set), not on that query and the clips alone. QB-Norm is
not: a query's row depends on its own scores, the bank and ``T`` only, so it is the same whatever other
queries are scored beside it; its price is the bank, one more text embedding of the training captions
against each scored split's clips (``dcase-t6 embed RUN --split SPLIT --bank development-training``).
The DCASE 2025 Task 6 rules allow the evaluation audio files and captions as the only information about the
evaluation data; they do not say whether the other evaluation captions may be used for a query, so a
submission that normalises transductively must state it (``dcase-t6 package`` records it in its warnings
and in the draft report).

Memory: the result is one float64 array of the matrix's size; the log-sum-exp runs in blocks of at most
``_BLOCK_ELEMENTS`` scores, so 5,225 x 1,045 (Clotho validation) needs about 44 MB plus a 32 MB block; a
QB-Norm bank is read in the same blocks (Clotho development-training, 19,195 captions, is 160 MB as float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcase_t6.common.errors import UserError
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_matrix

INVERTED_SOFTMAX = "inverted-softmax"
DUAL_SOFTMAX = "dual-softmax"
QUERYBANK = "querybank"
NORMALISERS = (INVERTED_SOFTMAX, DUAL_SOFTMAX, QUERYBANK)
MAX_TOP_K = 1000
_BLOCK_ELEMENTS = 1 << 22
TRANSDUCTIVE_NOTE = ("transductive: each query's normalised scores depend on every other query of the matrix "
                     "(all evaluation captions together)")
QUERYBANK_NOTE = ("not transductive: each query is normalised against a bank of training captions, independently "
                  "of the other evaluation captions")
BANK_FIX = "make the bank against the scored split: `dcase-t6 embed RUN --split SPLIT --bank development-training`"


@dataclass(frozen=True)
class Normalisation:
    """A temperature-scaled normaliser of a score matrix.

    Args:
        method: ``inverted-softmax``, ``dual-softmax`` or ``querybank`` (see the module docstring).
        temperature: the softmax temperature, a finite number > 0.
        source: where it was read from (a weights file), for messages; not compared.
        top_k: ``querybank`` only: a clip is a hub when it is among the ``top_k`` best of a bank caption.
    """

    method: str
    temperature: float
    source: str = field(default="", compare=False)
    top_k: int = 1

    @property
    def transductive(self) -> bool:
        """Whether a query's result depends on the other queries of the matrix (not for ``querybank``)."""
        return self.method != QUERYBANK

    @property
    def note(self) -> str:
        """Whether it is transductive, in words, for warnings and reports."""
        return TRANSDUCTIVE_NOTE if self.transductive else QUERYBANK_NOTE

    def describe(self) -> str:
        """``inverted softmax (T = 0.05)``: the method and its temperature, for messages and reports."""
        if self.method == QUERYBANK:
            return f"querybank normalisation (QB-Norm, T = {self.temperature:g}, top-{self.top_k} hubs)"
        return f"{self.method.replace('-', ' ')} (T = {self.temperature:g})"

    def as_json(self) -> dict:
        """``{"method": ..., "temperature": ...}``, and ``"top_k"`` for ``querybank``."""
        extra = {"top_k": self.top_k} if self.method == QUERYBANK else {}
        return {"method": self.method, "temperature": self.temperature, **extra}


@dataclass(frozen=True)
class QueryBank:
    """The bank of QB-Norm: the scores of bank captions (rows) against the clips of a scored split (columns).

    Args:
        matrix: the bank's similarity matrix (``embed --bank`` writes it).
        source: its file, for messages.
    """

    matrix: SimilarityMatrix
    source: str = ""


def read_bank(path: str | Path) -> QueryBank:
    """Read a QB-Norm bank: a similarity matrix file (``embed --bank`` writes ``<dataset>.<split>.bank.npz``).

    Args:
        path: the bank's .npz or .csv.

    Returns:
        The bank, its source the path.
    """
    return QueryBank(read_matrix(path), str(path))


def check_normalisation(method: str, temperature: float, where: str = "--temperature", top_k: int = 1
                        ) -> Normalisation:
    """A :class:`Normalisation`, or a UserError naming ``where`` for an unknown method or a bad temperature.

    Args:
        method: one of ``NORMALISERS``.
        temperature: a finite number > 0.
        where: the option or file the temperature came from.
        top_k: the activation set's ``k`` of ``querybank`` (1 to ``MAX_TOP_K``); must stay 1 for the others.
    """
    if method not in NORMALISERS:
        raise UserError(f"normalisation {method!r}: expected one of {', '.join(NORMALISERS)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise UserError(f"{where} {temperature!r}: the temperature of {method} must be a finite number > 0 "
                        "(e.g. 0.05 for cosine similarities)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise UserError(f"--bank-top-k {top_k!r}: the activation set of querybank takes each bank caption's k best "
                        f"clips, a whole number from 1 to {MAX_TOP_K} (default 1)")
    if top_k != 1 and method != QUERYBANK:
        raise UserError(f"--bank-top-k {top_k}: only querybank has an activation set; drop it with {method}")
    return Normalisation(method, float(temperature), top_k=top_k)


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


def querybank_normalise(scores: np.ndarray, bank: np.ndarray, temperature: float, top_k: int = 1) -> np.ndarray:
    """QB-Norm: ``S / T - L_c`` on the rows whose best clip is a bank hub, ``S / T`` on the others (see the
    module docstring).

    Args:
        scores: (queries, clips) similarity scores, finite.
        bank: (bank captions, clips) scores of the bank against the same clips, in the same column order, finite.
        temperature: ``T > 0``.
        top_k: a clip is a hub when it is among the ``top_k`` best clips of at least one bank caption.

    Returns:
        A new (queries, clips) float64 array; each row depends on that row of ``scores`` and the bank only.

    Raises:
        UserError: for an empty bank, a bank of other clips (by count), non-finite scores or an overflow.
    """
    if bank.ndim != 2 or bank.shape[0] == 0:
        raise UserError("the query bank has no captions; write one with `dcase-t6 embed RUN --split SPLIT --bank "
                        "development-training`")
    if bank.shape[1] != scores.shape[1]:
        raise UserError(f"the query bank scores {bank.shape[1]} clips but the matrix {scores.shape[1]}; {BANK_FIX}")
    for values, what in ((scores, "the scores"), (bank, "the query bank")):
        if not np.isfinite(values).all():
            raise UserError(f"{what} hold a value that is not finite; every score must be a finite number")
    _check_scale(bank, temperature)
    scaled = _scaled(scores, temperature)
    hubs = activation_set(bank, top_k)
    corrected = hubs[np.argmax(scores, axis=1)] if scores.size else np.zeros(scores.shape[0], dtype=bool)
    scaled[corrected] -= column_log_sum_exp(bank, 1.0 / temperature)
    return scaled


def activation_set(bank: np.ndarray, top_k: int = 1) -> np.ndarray:
    """Which clips are among the ``top_k`` best of at least one bank row: a boolean per column (row blocks).

    Args:
        bank: (bank captions, clips) scores.
        top_k: how many best clips of each row count (all of them when it is at least the number of clips).

    Returns:
        A (clips,) boolean array.
    """
    clips = bank.shape[1]
    active = np.zeros(clips, dtype=bool)
    if top_k >= clips:
        active[:] = bank.shape[0] > 0
        return active
    rows = max(1, _BLOCK_ELEMENTS // max(1, clips))
    for start in range(0, bank.shape[0], rows):
        block = bank[start:start + rows]
        best = np.argmax(block, axis=1) if top_k == 1 else \
            np.argpartition(-block, top_k - 1, axis=1)[:, :top_k].ravel()
        active[best] = True
    return active


def align_bank(bank: QueryBank, files: list[str], where: str) -> QueryBank:
    """``bank`` with its columns in the order of ``files`` (the clips of the matrix ``where`` names).

    Raises:
        UserError: naming both files and the first clip that only one of them has.
    """
    if bank.matrix.files == files:
        return bank
    position = {name: index for index, name in enumerate(bank.matrix.files)}
    source = bank.source or "the query bank"
    missing = next((name for name in files if name not in position), None)
    if missing is not None:
        raise UserError(f"{source}: lacks the clip {missing!r} of {where or 'the matrix'}; {BANK_FIX}")
    if len(bank.matrix.files) != len(files):
        wanted = set(files)
        extra = next(name for name in bank.matrix.files if name not in wanted)
        raise UserError(f"{source}: has the clip {extra!r} that {where or 'the matrix'} lacks; {BANK_FIX}")
    order = np.array([position[name] for name in files], dtype=np.int64)
    return QueryBank(SimilarityMatrix(bank.matrix.queries, list(files), bank.matrix.scores[:, order]), bank.source)


def column_log_sum_exp(values: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``log sum_rows exp(scale * values)`` of every column (``scale > 0``), stable (the column maximum is factored
    out) and computed in row blocks of at most ``_BLOCK_ELEMENTS`` values, so the only temporary is one block."""
    peak = values.max(axis=0) * scale
    total = np.zeros(values.shape[1], dtype=np.float64)
    rows = max(1, _BLOCK_ELEMENTS // max(1, values.shape[1]))
    for start in range(0, values.shape[0], rows):
        block = np.multiply(values[start:start + rows], scale, dtype=np.float64)
        block -= peak
        np.exp(block, out=block)
        total += block.sum(axis=0)
    return peak + np.log(total)


def normalise(scores: np.ndarray, normalisation: Normalisation, where: str = "", bank: np.ndarray | None = None
              ) -> np.ndarray:
    """The scores under ``normalisation`` (a new array); ``where`` names the matrix in an error message.

    Args:
        scores: (queries, clips) scores.
        normalisation: the method, temperature (and ``top_k``).
        where: the matrix's file, for messages.
        bank: ``querybank`` only: the bank's (captions, clips) scores, columns in the order of ``scores``.

    Raises:
        UserError: for ``querybank`` without a bank, and see the normalisers.
    """
    try:
        if normalisation.method == QUERYBANK:
            if bank is None:
                raise UserError(f"{normalisation.describe()} needs the query bank of the matrix: pass --bank FILE "
                                "(`dcase-t6 embed RUN --split SPLIT --bank development-training` writes it)")
            return querybank_normalise(scores, bank, normalisation.temperature, normalisation.top_k)
        function = inverted_softmax if normalisation.method == INVERTED_SOFTMAX else dual_softmax
        return function(scores, normalisation.temperature)
    except UserError as err:
        raise UserError(f"{where}: {err}" if where else str(err)) from None


def normalise_matrix(matrix: SimilarityMatrix, normalisation: Normalisation | None, where: str = "",
                     bank: QueryBank | None = None) -> SimilarityMatrix:
    """``matrix`` with normalised scores (the same queries and files); itself when ``normalisation`` is None.

    Args:
        matrix: the scores.
        normalisation: what to apply (None: nothing).
        where: the matrix's file, for messages.
        bank: ``querybank`` only: the bank of the matrix's clips (its columns are matched by clip name).
    """
    if normalisation is None:
        return matrix
    bank_scores = None
    if normalisation.method == QUERYBANK and bank is not None:
        bank_scores = align_bank(bank, matrix.files, where).matrix.scores
    return SimilarityMatrix(matrix.queries, matrix.files, normalise(matrix.scores, normalisation, where, bank_scores))


def _check_scale(scores: np.ndarray, temperature: float) -> None:
    """A UserError when ``scores / temperature`` (or twice it) is not finite, or for a bad temperature."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise UserError(f"temperature {temperature!r}: it must be a finite number > 0")
    largest = float(np.abs(scores).max()) if scores.size else 0.0
    if not math.isfinite(largest / temperature * 2.0):
        raise UserError(f"scores up to {largest:g} divided by the temperature {temperature:g} overflow float64; "
                        "use a larger temperature")


def _scaled(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``scores / temperature`` as a new float64 array; a UserError if it (or twice it) is not finite."""
    _check_scale(scores, temperature)
    return np.asarray(scores, dtype=np.float64) / temperature
