"""Intervals and paired tests (retrieval/significance.py) against brute-force references on small inputs."""

import itertools

import numpy as np
import pytest

from dcase_t6.common.errors import UserError
from dcase_t6.retrieval import metrics
from dcase_t6.retrieval.significance import (
    Resampling,
    bootstrap_indices,
    paired_p_values,
    significance,
    swaps,
)

TAIL = 0.025


def loop_bootstrap(values: np.ndarray, resampling: Resampling) -> list[float]:
    """The resampled means one resample at a time, from the same index matrix."""
    indices = np.concatenate(list(bootstrap_indices(len(values), resampling)))
    return [float(np.mean(values[row])) for row in indices]


def loop_p_value(first: np.ndarray, second: np.ndarray, resampling: Resampling) -> float:
    """Swap each query's two values where the swap matrix says so; count means at least as far from 0."""
    observed = abs(np.sum(second - first))
    count = 0
    for row in np.concatenate(list(swaps(len(first), resampling))):
        swapped_first, swapped_second = np.where(row, second, first), np.where(row, first, second)
        count += abs(np.sum(swapped_second - swapped_first)) >= observed - 1e-9 * np.abs(second - first).sum()
    return (1 + count) / (1 + resampling.resamples)


def exact_p_value(differences: np.ndarray) -> float:
    """Every one of the 2^n sign flips of the per-query differences."""
    observed = abs(differences.sum())
    flips = np.array(list(itertools.product((1.0, -1.0), repeat=len(differences))))
    return float(np.mean(np.abs(flips @ differences) >= observed - 1e-9))


def test_bootstrap_interval_equals_a_python_loop_over_the_same_resamples():
    rng = np.random.default_rng(1)
    first = {"R@1": rng.integers(0, 2, 9).astype(float), "mAP@16": rng.random(9)}
    second = {"R@1": rng.integers(0, 2, 9).astype(float), "mAP@16": rng.random(9)}
    resampling = Resampling(resamples=300, seed=5)
    figures = significance([first, second], resampling)
    for system, values in enumerate((first, second)):
        for key in values:
            means = loop_bootstrap(values[key], resampling)
            expected = np.quantile(means, [TAIL, 1 - TAIL])
            assert figures.intervals[system][key] == pytest.approx(tuple(expected), abs=1e-12)
    for key in first:
        # the paired interval resamples both systems with the same indices: the difference of their means
        differences = np.array(loop_bootstrap(second[key], resampling)) - np.array(loop_bootstrap(first[key],
                                                                                                  resampling))
        paired = figures.differences[0][key]
        assert (paired.low, paired.high) == pytest.approx(tuple(np.quantile(differences, [TAIL, 1 - TAIL])),
                                                          abs=1e-12)
        assert paired.difference == pytest.approx(second[key].mean() - first[key].mean(), abs=1e-15)
        assert paired.p_value == loop_p_value(first[key], second[key], resampling)


def test_the_same_seed_gives_the_same_figures_and_another_seed_others():
    values = {"mAP@16": np.linspace(0, 1, 11)}
    one = significance([values], Resampling(resamples=200, seed=3)).intervals[0]
    assert one == significance([values], Resampling(resamples=200, seed=3)).intervals[0]
    assert one != significance([values], Resampling(resamples=200, seed=4)).intervals[0]


@pytest.mark.parametrize("n", [4, 7, 10])
def test_randomised_p_value_agrees_with_the_exact_test_over_all_sign_flips(n):
    rng = np.random.default_rng(n)
    first, second = rng.random(n), rng.random(n) + 0.15
    exact = exact_p_value(second - first)
    randomised = paired_p_values((second - first)[:, None], Resampling())[0]
    assert randomised == pytest.approx(exact, abs=0.015)  # 10,000 swaps: standard error <= 0.005


def test_exact_and_randomised_p_values_with_ties_of_the_absolute_sum():
    # differences 1, -1, 1, 1/3: several sign patterns give exactly the observed |sum| (counted, as >=)
    differences = np.array([1.0, -1.0, 1.0, 1 / 3])
    exact = exact_p_value(differences)
    assert exact == 10 / 16
    assert paired_p_values(differences[:, None], Resampling())[0] == pytest.approx(exact, abs=0.015)


def test_identical_systems_give_p_one_and_an_interval_holding_zero():
    values = {"R@1": np.array([0.0, 1.0, 1.0, 0.0, 1.0]), "mAP@16": np.array([0.2, 1.0, 0.5, 1 / 3, 0.25])}
    for method in ("bootstrap", "jackknife"):
        figures = significance([values, dict(values)], Resampling(method=method))
        for difference in figures.differences[0].values():
            assert difference.p_value == 1.0 and difference.difference == 0.0
            assert difference.low <= 0.0 <= difference.high


def test_bootstrap_interval_stays_in_range_where_the_jackknife_leaves_it():
    # a demo-like R@5 of 33/36 = 0.9167: the symmetric jackknife interval ends above 1
    values = np.array([1.0] * 33 + [0.0] * 3)
    low, high = metrics.jackknife_interval(values)
    assert high > 1.0 and low == pytest.approx(0.9167 - (high - 0.9167), abs=1e-4)
    bootstrap = significance([{"R@5": values}], Resampling()).intervals[0]["R@5"]
    assert 0.0 <= bootstrap[0] < values.mean() < bootstrap[1] <= 1.0
    jackknife = significance([{"R@5": values}], Resampling(method="jackknife")).intervals[0]["R@5"]
    assert jackknife == (low, high)


def test_every_value_equal_gives_a_point_interval():
    figures = significance([{"R@1": np.ones(6)}], Resampling(resamples=50))
    assert figures.intervals[0]["R@1"] == (1.0, 1.0)


def test_without_intervals_only_the_comparisons_are_computed():
    first, second = {"R@1": np.array([0.0, 1.0, 1.0])}, {"R@1": np.array([1.0, 1.0, 1.0])}
    figures = significance([first, second], Resampling(resamples=100), with_intervals=False)
    assert figures.intervals == () and figures.differences[0]["R@1"].difference == pytest.approx(1 / 3)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"method": "normal"}, "--ci-method 'normal'"),
    ({"resamples": 0}, "--resamples 0"),
    ({"seed": -1}, "--seed -1"),
])
def test_bad_resampling_settings_are_named(arguments, message):
    with pytest.raises(UserError, match=message):
        Resampling(**arguments)
