"""Intervals and comparisons over seeds: equal to SciPy's own t-tests and intervals, computed independently."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lmjax import stats


@pytest.mark.parametrize("values", [[1.0, 1.2, 0.9], [2.5, 2.4, 2.7, 2.55, 2.6], [10.0, 12.0]])
def test_interval_of_the_mean_is_scipys_t_interval(values):
  s = stats.summarize(values)
  low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
  assert s.n == len(values) and s.mean == pytest.approx(np.mean(values))
  assert s.std == pytest.approx(np.std(values, ddof=1))
  assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high))


def test_one_value_has_no_interval_and_non_finite_values_are_dropped():
  assert stats.summarize([3.0]) == stats.Summary(1, 3.0, None, None, None)
  assert stats.summarize([1.0, float("nan"), 2.0]).n == 2
  assert stats.summarize([]) is None


def test_paired_comparison_is_scipys_paired_t_test():
  a, b = [2.01, 2.05, 1.98, 2.03], [2.10, 2.12, 2.05, 2.13]
  c = stats.paired(a, b)
  d = np.subtract(a, b)
  assert c.difference == pytest.approx(d.mean())
  assert c.p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
  low, high = scipy_stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy_stats.sem(d))
  assert (c.low, c.high) == (pytest.approx(low), pytest.approx(high))
  assert c.within_noise is False  # a consistent 0.08 gap, clearly outside the noise


def test_welch_comparison_is_scipys_unequal_variance_t_test():
  a, b = [1.0, 1.3, 0.8, 1.1], [1.2, 1.25, 1.15]
  c = stats.welch(a, b)
  assert c.p == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
  assert c.difference == pytest.approx(np.mean(a) - np.mean(b))
  assert c.within_noise is True and c.low < 0 < c.high


def test_noise_swamps_a_small_difference_and_one_seed_estimates_no_noise():
  rng = np.random.default_rng(0)
  a = 2.0 + rng.normal(0, 0.05, 3)
  b = a + 0.01 + rng.normal(0, 0.05, 3)  # 0.01 apart, with 0.05 of noise per seed
  assert stats.paired(list(b), list(a)).within_noise is True
  single = stats.paired([1.0], [2.0])
  assert single.within_noise is None and single.p is None and "no noise estimate" in single.method
  assert stats.welch([1.0], [2.0, 2.1]).within_noise is None


def test_t_quantile_matches_the_printed_tables():
  assert stats.t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)  # 3 seeds
  assert stats.t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
  assert math.isclose(stats.t_quantile(0.975, 10_000), 1.960, abs_tol=1e-3)
