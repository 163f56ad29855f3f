"""The paired statistics of a before/after row: each formula against scipy (when installed) and
against an enumeration that needs nothing but the definition."""
import itertools

import pytest
from hypothesis import given, strategies as st

from minilm.evaluation.statistics import (VERDICTS, mcnemar_exact_p, normal_quantile, outcomes,
                                          paired_comparison, verdict, wilson_interval)

confidences = st.sampled_from([0.8, 0.9, 0.95, 0.99])
counts = st.integers(1, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


# ---------------------------------------------------------------- Wilson's interval
def test_the_normal_quantile_is_scipys():
    norm = pytest.importorskip("scipy.stats").norm
    assert normal_quantile(0.95) == pytest.approx(1.959963984540054, abs=1e-12)
    for confidence in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        assert normal_quantile(confidence) == pytest.approx(norm.ppf((1 + confidence) / 2), abs=1e-9)


@given(counts, confidences)
def test_wilson_interval_is_scipys(sn, confidence):
    stats = pytest.importorskip("scipy.stats")
    s, n = sn
    expected = stats.binomtest(s, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert wilson_interval(s, n, confidence) == pytest.approx((expected.low, expected.high), abs=1e-9)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), confidences)
def test_wilson_interval_is_every_rate_the_score_test_keeps(sn, confidence):
    """Enumerate rates p on a grid: p is inside the interval exactly when (s/n - p)^2 <= z^2 p (1-p) / n."""
    s, n = sn
    z, lo, hi = normal_quantile(confidence), *wilson_interval(s, n, confidence)
    assert 0 <= lo <= s / n <= hi <= 1
    for k in range(2001):
        p = k / 2000
        if min(abs(p - lo), abs(p - hi)) < 1e-9:
            continue  # on an end the two sides are equal, up to rounding
        assert (lo <= p <= hi) == ((s / n - p) ** 2 <= z * z * p * (1 - p) / n), (p, lo, hi)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0 < hi < 0.35  # not the empty [0, 0] of the normal approximation
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


# ---------------------------------------------------------------- McNemar's exact test
flips = st.tuples(st.integers(0, 150), st.integers(0, 150)).filter(lambda bc: sum(bc) > 0)


@given(flips)
def test_mcnemar_is_scipys_two_sided_binomial_test(bc):
    stats = pytest.importorskip("scipy.stats")
    b, c = bc
    assert mcnemar_exact_p(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9, abs=1e-300)


@given(st.integers(0, 6), st.integers(0, 6))
def test_mcnemar_is_the_share_of_fair_coin_flips_at_least_as_uneven(b, c):
    """Enumerate every way b + c discordant tasks could have flipped, each way equally likely."""
    m = b + c
    uneven = sum(abs(2 * sum(signs) - m) >= abs(b - c) for signs in itertools.product((0, 1), repeat=m))
    assert mcnemar_exact_p(b, c) == pytest.approx(uneven / 2 ** m, abs=1e-15)


def test_mcnemar_by_hand():
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(4, 4) == 1.0
    assert mcnemar_exact_p(6, 0) == mcnemar_exact_p(0, 6) == 2 / 64  # 0.03125
    assert mcnemar_exact_p(5, 1) == 2 * (1 + 6) / 64  # 0.21875


# ---------------------------------------------------------------- the row
def test_verdict_reads_p_and_the_direction():
    assert verdict(0.03125, 6, 0) == "better" and verdict(0.03125, 0, 6) == "worse"
    assert verdict(0.21875, 5, 1) == verdict(0.05, 9, 0) == verdict(0.01, 3, 3) == "no detectable change"
    assert set(VERDICTS) == {"better", "worse", "no detectable change"}


binary_pairs = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), st.tuples(st.sampled_from([0, 1]),
                                                                                      st.sampled_from([0, 1])))


@given(binary_pairs, st.integers(0, 20))
def test_a_paired_row_counts_flips_and_ignores_tasks_that_agree(pairs, agreeing):
    before, after = {t: x for t, (x, _) in pairs.items()}, {t: y for t, (_, y) in pairs.items()}
    row = paired_comparison(before, after)
    assert row["gained"] == sum(x < y for x, y in pairs.values())
    assert row["lost"] == sum(x > y for x, y in pairs.values())
    assert row["p"] == mcnemar_exact_p(row["gained"], row["lost"]) and row["test"] == "McNemar exact"
    for when, table in (("before", before), ("after", after)):
        lo, hi = row[f"interval_{when}"]
        assert (lo, hi) == wilson_interval(sum(table.values()), len(table))
    # tasks that pass (or fail) both times change neither the flips nor p
    more = {f"same{i}": i % 2 for i in range(agreeing)}
    wider = paired_comparison({**before, **more}, {**after, **more})
    assert (wider["gained"], wider["lost"], wider["p"]) == (row["gained"], row["lost"], row["p"])
    # swapped, the row is the mirror image
    mirror = paired_comparison(after, before)
    assert (mirror["gained"], mirror["lost"], mirror["p"]) == (row["lost"], row["gained"], row["p"])
    assert {row["verdict"], mirror["verdict"]} in ({"better", "worse"}, {"no detectable change"})


def test_sampled_estimates_get_the_sign_test():
    before = {"a": 0.2, "b": 0.5, "c": 0.0, "d": 1.0, "e": 0.3, "f": 0.1}
    after = {"a": 0.4, "b": 0.6, "c": 0.1, "d": 1.0, "e": 0.9, "f": 0.2}
    row = paired_comparison(before, after, sampled=True)
    assert (row["gained"], row["lost"], row["test"]) == (5, 0, "sign test") and "interval_before" not in row
    assert row["p"] == 2 / 32 and row["verdict"] == "no detectable change"  # 5 of 5 is not enough at 0.05
    assert row["mean_after"] == pytest.approx(sum(after.values()) / 6)


def test_pairs_are_matched_by_task_id():
    records = [{"task_id": "t1", "n": 1, "c": 1}, {"task_id": "t2", "n": 10, "c": 3}, {"task_id": "e", "f1": 0.5}]
    assert outcomes(records) == {"t1": 1.0, "t2": 0.3}  # explain records have no c: no pass/fail
    with pytest.raises(ValueError, match="same tasks"):
        paired_comparison({"t1": 1, "t2": 0}, {"t1": 1, "t3": 0})
    with pytest.raises(ValueError, match="sampled=True"):
        paired_comparison({"t1": 0.5}, {"t1": 1})
