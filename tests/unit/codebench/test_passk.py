"""The unbiased pass@k estimator: exact against the binomial definition, stable where the binomials
overflow floats, and the averaging rule."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from megatron_qwen.codebench.passk import mean_pass_at_k, parse_ks, pass_at_k


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_matches_binomial_definition(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
            assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_known_values() -> None:
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert pass_at_k(10, 1, 10) == 1.0  # any 10 of 10 include the correct one


def test_stable_where_binomials_overflow() -> None:
    """C(2000, 1000) ~ 1e600 overflows a float; the product form does not, and stays exact enough."""
    n, c, k = 2000, 3, 1000
    with pytest.raises(OverflowError):
        float(math.comb(n, k))
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert 0.0 <= pass_at_k(1000, 1, 1) <= 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_invalid_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_over_tasks_and_missing_k() -> None:
    counts = {"a": (10, 10), "b": (10, 0), "c": (4, 2)}
    means = mean_pass_at_k(counts, [1, 5])
    assert means["pass@1"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert means["pass@5"] is None  # task c has only 4 samples


def test_parse_ks() -> None:
    assert parse_ks("10, 1,1") == [1, 10]
    with pytest.raises(ValueError, match="'x'"):
        parse_ks("1,x")
    with pytest.raises(ValueError, match="'0'"):
        parse_ks("0")
