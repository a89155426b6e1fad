"""Ensembles of systems' similarity matrices.

``systems`` (named matrices, alignment, normalisation, weighted sum), ``grid`` (simplex grid, mAP@16 of every
grid point), ``groups`` (two-stage search), ``weights`` (the weights file: one reader, one writer) and
``search`` (the API: :func:`~dcase_t6.ensemble.search.search` and :func:`~dcase_t6.ensemble.search.apply`).
"""
