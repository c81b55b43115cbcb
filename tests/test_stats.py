"""Statistics for explore: table tests against published values and hand computations."""

from __future__ import annotations

import math

import pytest

from hpcbench.stats import (
    mean,
    mean_ci,
    ratio_ci,
    regularized_incomplete_beta,
    sample_std,
    t_cdf,
    t_quantile,
)

# Student's t critical values as printed in standard tables (three decimals), e.g. NIST/SEMATECH
# e-Handbook of Statistical Methods, section 1.3.6.7.2 "Critical values of the Student's t".
T_TABLE = [
    (0.975, 1, 12.706),
    (0.975, 2, 4.303),
    (0.975, 3, 3.182),
    (0.975, 4, 2.776),
    (0.975, 5, 2.571),
    (0.975, 10, 2.228),
    (0.975, 30, 2.042),
    (0.975, 100, 1.984),
    (0.95, 1, 6.314),
    (0.95, 10, 1.812),
    (0.99, 7, 2.998),
    (0.995, 5, 4.032),
    (0.9, 20, 1.325),
]


@pytest.mark.parametrize(("p", "df", "expected"), T_TABLE)
def test_t_quantile_matches_published_tables(p: float, df: int, expected: float) -> None:
    assert round(t_quantile(p, df), 3) == expected
    assert round(t_quantile(1 - p, df), 3) == -expected


@pytest.mark.parametrize("df", [0.7, 2.5, 3.45, 17.2, 1000.0])
def test_t_quantile_inverts_the_cdf_for_fractional_df(df: float) -> None:
    for p in (0.6, 0.9, 0.975, 0.999):
        assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_with_many_degrees_of_freedom_approaches_the_normal() -> None:
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


@pytest.mark.parametrize(
    ("a", "b", "x", "expected"),
    [
        (1.0, 1.0, 0.3, 0.3),  # uniform
        (2.0, 3.0, 0.5, 11 / 16),  # a polynomial: 1 - 5x^4 + 4x^5 ... at x = 1/2
        (1.0, 4.0, 0.2, 1 - 0.8**4),  # I_x(1, b) = 1 - (1 - x)^b
        (5.0, 5.0, 0.5, 0.5),  # symmetric
        (0.5, 0.5, 0.25, 1 / 3),  # arcsine: 2/pi asin(sqrt(x))
        (3.0, 2.0, 0.0, 0.0),
        (3.0, 2.0, 1.0, 1.0),
    ],
)
def test_incomplete_beta_table(a: float, b: float, x: float, expected: float) -> None:
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("values", "m", "s"),
    [
        ([1.0, 2.0, 3.0], 2.0, 1.0),
        ([10.0, 10.0], 10.0, 0.0),
        ([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 5.0, math.sqrt(32 / 7)),
    ],
)
def test_mean_and_sample_std(values: list[float], m: float, s: float) -> None:
    assert mean(values) == pytest.approx(m)
    assert sample_std(values) == pytest.approx(s)


def test_std_and_interval_need_two_values() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        sample_std([1.0])
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci([1.0])


@pytest.mark.parametrize(
    ("values", "low", "high"),
    [
        # mean 11, s 1, n 3: 11 ± 4.302653 / sqrt(3)
        ([10.0, 12.0, 11.0], 11 - 4.302653 / math.sqrt(3), 11 + 4.302653 / math.sqrt(3)),
        # mean 100, s 10, n 5: 100 ± 2.776445 * 10 / sqrt(5)
        ([90.0, 95.0, 100.0, 105.0, 110.0], 100 - 2.776445 * math.sqrt(62.5) / math.sqrt(5),
         100 + 2.776445 * math.sqrt(62.5) / math.sqrt(5)),
        ([7.0, 7.0, 7.0], 7.0, 7.0),
    ],
)  # fmt: skip
def test_mean_interval(values: list[float], low: float, high: float) -> None:
    got = mean_ci(values)
    assert got[0] == pytest.approx(low, abs=1e-5)
    assert got[1] == pytest.approx(high, abs=1e-5)


def test_ratio_interval_by_the_delta_method_with_welch_df() -> None:
    a, b = [110.0, 112.0, 108.0], [100.0, 101.0, 99.0]
    va, vb = 4 / (3 * 110.0**2), 1 / (3 * 100.0**2)  # relative variances of the two means
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = t_quantile(0.975, df) * 1.1 * math.sqrt(va + vb)
    r = ratio_ci(a, b)
    assert r.value == pytest.approx(1.1)
    assert r.df == pytest.approx(df)
    assert (r.low, r.high) == (pytest.approx(1.1 - half), pytest.approx(1.1 + half))
    assert r.beyond_noise
    assert 3.1 < df < 3.2  # between the smaller n - 1 = 2 and n_a + n_b - 2 = 4


def test_ratio_within_noise_and_without_noise() -> None:
    assert not ratio_ci([100.0, 120.0, 80.0], [101.0, 99.0, 100.0]).beyond_noise
    exact = ratio_ci([200.0, 200.0], [100.0, 100.0])
    assert (exact.value, exact.low, exact.high, exact.df) == (2.0, 2.0, 2.0, None)
    assert exact.beyond_noise
