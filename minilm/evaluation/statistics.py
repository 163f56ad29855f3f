"""Before against after: is a change in pass@1 more than the luck of which tasks were drawn?

    comparison = paired_comparison(outcomes(before_records), outcomes(after_records))
    comparison["verdict"]   # "better", "worse" or "no detectable change"

Every before/after row of a report scores one model before fine-tuning and after it on the same
tasks, so the outcomes come in pairs, matched by task_id. Three numbers describe a row:

Wilson's interval (Wilson 1927, "Probable inference, the law of succession, and statistical
inference", JASA 22(158)) for each pass rate: with s passes of n tasks, the rates p that the score
test does not reject at the chosen confidence, z its normal quantile (1.96 for 95%):

    (s/n - p)^2 <= z^2 p (1 - p) / n
    <=>  p in  (s/n + z^2/2n  -+  z sqrt(s/n (1 - s/n) / n + z^2/4n^2)) / (1 + z^2/n)

Unlike s/n -+ z sqrt(s/n (1 - s/n) / n) it stays inside [0, 1] and is not empty at 0 or n passes.

The flips: b tasks went fail -> pass and c went pass -> fail. Tasks with the same outcome both
times say nothing about which model is better; the discordant ones do.

McNemar's test (McNemar 1947, "Note on the sampling error of the difference between correlated
proportions or percentages", Psychometrika 12(2)), in its exact form: if fine-tuning changed
nothing, each discordant task is as likely to have flipped either way, so b ~ Binomial(b + c, 1/2),
and the two-sided p-value is the chance of a split at least as uneven:

    p = min(1, 2 sum_{i=0}^{min(b, c)} C(b + c, i) / 2^(b + c))        (1 when b + c = 0)

This is the sign test (Dixon and Mood 1946) on the paired differences, and that is how sampled
pass@1 is compared: each problem's estimate c_i/n_i (minilm.evaluation.metrics.pass_at_k, k = 1) is
a number in [0, 1], not a pass or a fail, so b and c count the problems whose estimate rose and
fell, ties left out. It asks only the direction of each problem's change, which holds whatever the
estimates' distribution; a bootstrap of the mean would also weigh how far they moved, but its
p-value is itself random and needs a seed.

The verdict is "better" or "worse" when p < 0.05 (and b > c, or c > b), else "no detectable
change": not evidence of no change, only that this many tasks cannot tell. tests/test_statistics.py
checks each formula against scipy and against an enumeration that needs no scipy.
"""
from __future__ import annotations

import math
from statistics import NormalDist  # the standard library's
from typing import Mapping, Sequence

ALPHA = 0.05
CONFIDENCE = 0.95
VERDICTS = ("better", "worse", "no detectable change")


def normal_quantile(confidence: float) -> float:
    """z with P(|Z| <= z) = confidence for a standard normal Z (1.959964 for 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf((1 + confidence) / 2)


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for a rate seen as successes of trials; (0, 1) with no trials."""
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    z, rate = normal_quantile(confidence), successes / trials
    center = rate + z * z / (2 * trials)
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials))
    scale = 1 + z * z / trials
    # at 0 or n successes an end is exactly 0 or 1 (center = half); floats can miss it by 1e-17
    lo = 0.0 if successes == 0 else (center - half) / scale
    hi = 1.0 if successes == trials else (center + half) / scale
    return lo, hi


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b flips one way and c the other (the sign test)."""
    if b < 0 or c < 0:
        raise ValueError(f"flip counts must be non-negative, got {b}, {c}")
    m = b + c
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1))  # integers: exact until the division
    return min(1.0, 2 * tail / 2 ** m)


def verdict(p: float, gained: int, lost: int, alpha: float = ALPHA) -> str:
    """"better" / "worse" when p < alpha, in the direction of the larger flip count."""
    if p < alpha and gained != lost:
        return "better" if gained > lost else "worse"
    return "no detectable change"


def outcomes(records: Sequence[dict]) -> dict[str, float]:
    """{task_id: c/n} of each code task's record: 0 or 1 when greedy, pass@1's estimate when sampled."""
    return {r["task_id"]: r["c"] / r["n"] for r in records if "c" in r}


def paired_comparison(before: Mapping[str, float], after: Mapping[str, float], sampled: bool = False,
                      confidence: float = CONFIDENCE, alpha: float = ALPHA) -> dict:
    """The paired statistics of one row from per-task outcomes, matched by task id.

    Greedy (sampled False): outcomes 0 or 1, Wilson intervals and McNemar's exact test; gained /
    lost are the tasks that went fail -> pass / pass -> fail. Sampled: pass@1 estimates in [0, 1]
    and the sign test; gained / lost are the tasks whose estimate rose / fell."""
    if before.keys() != after.keys():
        missing = sorted(before.keys() ^ after.keys())
        raise ValueError(f"before and after must score the same tasks; {len(missing)} differ, e.g. {missing[:3]}")
    if not sampled and any(x not in (0, 1) for table in (before, after) for x in table.values()):
        raise ValueError("greedy outcomes are 0 or 1; pass sampled=True for pass@1 estimates")
    tasks = list(before)
    gained = sum(after[t] > before[t] for t in tasks)
    lost = sum(after[t] < before[t] for t in tasks)
    p = mcnemar_exact_p(gained, lost)
    row = {"tasks": len(tasks), "mean_before": _mean(before.values()), "mean_after": _mean(after.values()),
           "gained": gained, "lost": lost, "p": p, "test": "sign test" if sampled else "McNemar exact",
           "verdict": verdict(p, gained, lost, alpha)}
    if not sampled:
        for when, table in (("before", before), ("after", after)):
            row[f"interval_{when}"] = list(wilson_interval(int(sum(table.values())), len(tasks), confidence))
    return row


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
