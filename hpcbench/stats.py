"""Small-sample statistics for comparing repeated runs. Pure, standard library only.

``hpcbench explore`` repeats every candidate a few times (3 by default), so intervals must use
Student's t, not the normal distribution. SciPy is not a dependency: the t quantile comes from
the regularized incomplete beta function (a continued fraction) and bisection, which is exact
to far more digits than the published tables it is tested against. docs/concepts.md explains
the formulas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean.

    >>> mean([1.0, 2.0, 6.0])
    3.0
    """
    if not values:
        raise ValueError("the mean of no values is undefined")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation (divisor n - 1); needs at least two values.

    >>> round(sample_std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]), 6)
    2.13809
    """
    n = len(values)
    if n < 2:
        raise ValueError(f"a sample standard deviation needs at least 2 values, got {n}")
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta I_x({a}, {b}) at x={x} did not converge")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF of the Beta(a, b) distribution at x.

    >>> regularized_incomplete_beta(1.0, 1.0, 0.25)  # Beta(1, 1) is uniform
    0.25
    >>> round(regularized_incomplete_beta(2.0, 3.0, 0.5), 10)  # 11/16
    0.6875
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"incomplete beta needs a, b > 0, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast for x below the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (df may be fractional).

    >>> t_cdf(0.0, 3)
    0.5
    >>> round(t_cdf(12.7062047361747, 1), 6)
    0.975
    """
    if df <= 0:
        raise ValueError(f"Student's t needs df > 0, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on :func:`t_cdf` (to about 1e-12).

    >>> round(t_quantile(0.975, 2), 3), round(t_quantile(0.975, 10), 3)
    (4.303, 2.228)
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student's t confidence interval of the mean: mean ± t(n-1) · s / √n.

    >>> low, high = mean_ci([10.0, 12.0, 11.0])
    >>> round(low, 3), round(high, 3)
    (8.516, 13.484)
    """
    n = len(values)
    if n < 2:
        raise ValueError(f"a confidence interval of the mean needs at least 2 values, got {n}")
    m = mean(values)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sample_std(values) / math.sqrt(n)
    return m - half, m + half


@dataclass(frozen=True, slots=True)
class Ratio:
    """A ratio of two independent means with its confidence interval (delta method)."""

    value: float
    low: float
    high: float
    df: float | None

    @property
    def beyond_noise(self) -> bool:
        """True when the interval excludes 1 (the two means differ beyond their noise)."""
        return self.low > 1.0 or self.high < 1.0


def ratio_ci(
    numerator: Sequence[float], denominator: Sequence[float], confidence: float = CONFIDENCE
) -> Ratio:
    """mean(numerator) / mean(denominator) with a confidence interval, the samples independent.

    Delta method: the ratio's relative variance is the sum of the two means' relative
    variances, v = s_a²/(n_a·a²) + s_b²/(n_b·b²); the interval is R ± t·R·√v, with t taken at
    the Welch-Satterthwaite degrees of freedom v² / (v_a²/(n_a-1) + v_b²/(n_b-1)).

    >>> r = ratio_ci([110.0, 112.0, 108.0], [100.0, 101.0, 99.0])
    >>> round(r.value, 4), round(r.low, 4), round(r.high, 4), round(r.df, 2)
    (1.1, 1.0589, 1.1411, 3.11)
    """
    a, b = mean(numerator), mean(denominator)
    if b == 0:
        raise ValueError("a ratio against a mean of zero is undefined")
    value = a / b
    parts = [
        (sample_std(xs) ** 2 / (len(xs) * m * m), len(xs) - 1)
        for xs, m in ((numerator, a), (denominator, b))
    ]
    variance = sum(v for v, _ in parts)
    if variance == 0.0:  # identical repeats: no noise at all
        return Ratio(value, value, value, None)
    df = variance**2 / sum(v * v / dof for v, dof in parts)
    half = t_quantile(0.5 + confidence / 2.0, df) * abs(value) * math.sqrt(variance)
    return Ratio(value, value - half, value + half, df)
