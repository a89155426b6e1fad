"""Metric functions against hand-computed rankings."""

import numpy as np
import pytest

from dcase_t6.retrieval import metrics

NONE = np.iinfo(np.int64).max


def test_multi_relevant_ranks_and_metrics_by_hand():
    # query 0: order 0.95(irr) 0.9(rel) 0.8(irr) 0.7(rel) 0.1(irr) -> relevant ranks 2 and 4
    # query 1: one relevant at the top -> rank 1
    scores = np.array([[0.9, 0.8, 0.7, 0.95, 0.1], [0.2, 0.9, 0.1, 0.3, 0.0]])
    relevant = np.array([[0, 2], [1, -1]])
    ranks = metrics.relevant_ranks(scores, relevant)
    assert ranks.tolist() == [[2, 4], [1, NONE]]
    values = metrics.per_query_metrics(ranks)
    assert values["R@1"].tolist() == [0.0, 1.0]
    assert values["R@5"].tolist() == [1.0, 1.0]
    # AP = (1/2 + 2/4) / 2 = 0.5 for query 0, 1/1 for query 1
    assert values["mAP@10"].tolist() == [0.5, 1.0]
    assert metrics.summarize(values)["mAP@10"] == 0.75


def test_ap_divides_by_all_relevant_even_outside_top_k():
    # 3 relevant files at ranks 1, 2 and 20 -> AP@16 = (1/1 + 2/2) / 3 and R@10 = 2/3
    scores = np.linspace(1.0, 0.0, 30)[None, :]
    relevant = np.array([[0, 1, 19]])
    ranks = metrics.relevant_ranks(scores, relevant)
    assert ranks.tolist() == [[1, 2, 20]]
    assert metrics.average_precision_at_k(ranks, 16)[0] == pytest.approx(2 / 3)
    assert metrics.recall_at_k(ranks, 10)[0] == pytest.approx(2 / 3)
    assert metrics.average_precision_at_k(ranks, 30)[0] == pytest.approx((1 + 1 + 3 / 20) / 3)


def test_ties_are_pessimistic_so_constant_scores_rank_relevant_last():
    scores = np.zeros((1, 10))
    ranks = metrics.relevant_ranks(scores, np.array([[3, 7]]))
    assert ranks.tolist() == [[9, 10]]
    single = metrics.relevant_ranks(scores, np.array([[0]]))
    assert single.tolist() == [[10]]


def test_tie_between_relevant_and_irrelevant_puts_irrelevant_first():
    # relevant file 0 ties with irrelevant file 1 at the top: rank 2; relevant file 2 ties with relevant 3
    scores = np.array([[0.5, 0.5, 0.3, 0.3, 0.1]])
    ranks = metrics.relevant_ranks(scores, np.array([[0, 2, 3]]))
    assert ranks.tolist() == [[2, 3, 4]]
    ap = metrics.average_precision_at_k(ranks, 16)[0]
    assert ap == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)


def test_single_relevant_reduces_to_reciprocal_rank_cut_at_k():
    scores = np.array([[0.1, 0.9, 0.8], [0.9, 0.1, 0.2]])
    ranks = metrics.relevant_ranks(scores, np.array([[0], [0]]))
    assert ranks.ravel().tolist() == [3, 1]
    assert metrics.average_precision_at_k(ranks, 2).tolist() == [0.0, 1.0]
    assert metrics.average_precision_at_k(ranks, 10).tolist() == [pytest.approx(1 / 3), 1.0]


def test_jackknife_interval_of_a_mean_matches_standard_error():
    values = np.array([0.0, 1.0, 0.5, 0.25, 1.0])
    low, high = metrics.jackknife_interval(values)
    half = 1.959963984540054 * values.std(ddof=1) / np.sqrt(len(values))
    assert (low, high) == (pytest.approx(values.mean() - half), pytest.approx(values.mean() + half))


def test_ranks_agree_with_a_full_sort_on_random_scores():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 5, size=(50, 40)).astype(float)  # many ties
    relevant = np.stack([rng.choice(40, size=3, replace=False) for _ in range(50)])
    ranks = metrics.relevant_ranks(scores, relevant)
    for q in range(50):
        is_relevant = np.zeros(40, dtype=bool)
        is_relevant[relevant[q]] = True
        order = np.lexsort((is_relevant, -scores[q]))  # by score desc, irrelevant first in ties
        expected = np.flatnonzero(is_relevant[order]) + 1
        assert ranks[q].tolist() == expected.tolist()
