"""reports.tables: the per-estimator summary's Welch p-value."""

import warnings

import pandas as pd
import pytest
from scipy import stats

from pgbench.reports.tables import welch_p


def test_welch_p_is_scipys_welch_test():
    a = pd.Series([42.1, 41.8, 42.6, 42.0])
    b = pd.Series([41.2, 41.9, 41.0, 41.5, 41.4])
    expected = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_p(a, b) == pytest.approx(expected, rel=1e-12)


def test_welch_p_of_a_side_that_never_varies_warns_of_nothing():
    constant = pd.Series([42.08] * 4)  # a short run's test score, the same on every seed
    varied = pd.Series([41.2, 41.9, 41.0, 41.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = welch_p(constant, varied)
    expected = stats.ttest_1samp(varied, 42.08).pvalue  # Welch with one zero variance
    assert p == pytest.approx(expected, rel=1e-9)
    assert pd.isna(welch_p(constant, pd.Series([41.0] * 3)))
    assert pd.isna(welch_p(varied.iloc[:1], varied))
