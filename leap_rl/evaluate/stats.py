"""The statistics of an evaluation: Welch's test and interval, an exact permutation test, power.

The primary metric of a comparison is the AUC of the learning curve (named before running, as
a confirmatory analysis must); its test is the two-sided Welch t-test at α = 0.05 of the
difference of the per-seed AUCs. The final score and the permutation p-value are secondary.

Minimal detectable difference (``mde_welch``): the smallest true difference of means that the
two-sided Welch test at level α detects with probability ``power``, for groups of n_a and n_b
seeds with standard deviations s_a and s_b:

    se  = sqrt(s_a²/n_a + s_b²/n_b)
    df  = se⁴ / ((s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1))     (Welch–Satterthwaite)
    MDE = (t_{1−α/2, df} + t_{power, df}) · se

This is the usual normal-theory approximation with t quantiles in place of z (it neglects the
far tail of the test, whose probability is below α/2, and treats the sample standard
deviations as the true ones). A difference smaller than the MDE may exist and go undetected:
"not significant" below it says little.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.8
EXACT_PERMUTATIONS = 50_000
"""Up to this many splits the permutation test enumerates them all; above, Monte Carlo."""


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` (real, > 0) degrees of freedom (scipy.stats)."""
    from scipy import stats  # imported here: building the CLI parser must not pay for scipy
    if not math.isfinite(t):
        return 0.0
    return float(2.0 * stats.t.sf(abs(t), df))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (scipy.stats)."""
    from scipy import stats
    return float(stats.t.ppf(q, df))


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch–Satterthwaite degrees of freedom from the two sample variances (ddof = 1)."""
    va, vb = var_a / n_a, var_b / n_b
    return float((va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)))


def welch(a: Sequence[float], b: Sequence[float]) -> dict:
    """Difference of means a − b with Welch's 95 % interval and two-sided t-test p-value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"diff": float(a.mean() - b.mean()) if len(a) and len(b) else None,
           "ci95": None, "p_welch": None, "df": None, "t": None}
    if len(a) < 2 or len(b) < 2:
        return out
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    diff = out["diff"]
    if se == 0.0:  # every seed scored the same on both sides: no spread to test against
        if diff == 0.0:
            out.update(ci95=[0.0, 0.0], p_welch=1.0)
        return out
    from scipy import stats
    with warnings.catch_warnings():
        # scipy warns when a side's values are nearly equal (two seeds both at 2/3 in floating
        # point); the spread is still what the seeds gave, and se > 0 was checked above.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
        ci = res.confidence_interval(0.95)
    out.update(ci95=[float(ci.low), float(ci.high)], p_welch=float(res.pvalue), df=float(res.df),
               t=float(res.statistic))
    return out


def mde_welch(sd_a: float | None, n_a: int, sd_b: float | None, n_b: int,
              alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The minimal detectable difference of the two-sided Welch test (module docstring), or
    None when it is undefined (fewer than 2 seeds on a side, or no spread on either side)."""
    if sd_a is None or sd_b is None or n_a < 2 or n_b < 2:
        return None
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    if va + vb == 0.0:
        return None
    df = welch_df(sd_a ** 2, n_a, sd_b ** 2, n_b)
    return (t_quantile(1.0 - alpha / 2.0, df) + t_quantile(power, df)) * math.sqrt(va + vb)


def permutation_p(a: Sequence[float], b: Sequence[float], rounds: int = 20_000) -> float | None:
    """Two-sided permutation p-value of the difference of means: the share of splits of the
    pooled values whose |mean difference| is at least the observed one (exact when cheap).

    Not scipy.stats.permutation_test: for unequal group sizes its two-sided p is twice the
    smaller one-sided p, which is not the |difference| rule used (and tested) here."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 1 or len(b) < 1:
        return None
    pooled = np.concatenate([a, b])
    n, k = len(pooled), len(a)
    total = pooled.sum()
    observed = abs(a.mean() - b.mean())
    tol = 1e-9 * max(1.0, float(np.abs(pooled).max()))

    def diffs(sums: np.ndarray) -> np.ndarray:
        return np.abs(sums / k - (total - sums) / (n - k))

    if math.comb(n, k) <= EXACT_PERMUTATIONS:
        idx = np.array(list(itertools.combinations(range(n), k)))
        return float(np.mean(diffs(pooled[idx].sum(axis=1)) >= observed - tol))
    rng = np.random.default_rng(0)
    sums = np.array([pooled[rng.permutation(n)[:k]].sum() for _ in range(rounds)])
    return float((np.sum(diffs(sums) >= observed - tol) + 1) / (rounds + 1))


def summary(values: Sequence[float | None]) -> dict:
    """Per-seed values (None where undefined), how many are defined, their mean and sd."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], float)
    return {"per_seed": list(values), "n": len(xs),
            "mean": float(xs.mean()) if len(xs) else None,
            "sd": float(xs.std(ddof=1)) if len(xs) > 1 else None}


def compare(a: dict, b: dict) -> dict:
    """One metric of a pair of inits from their ``summary`` dicts: the difference a − b with its
    Welch interval and p-value, the permutation p-value, and the MDE at 80 % power."""
    xa = [v for v in a["per_seed"] if v is not None and math.isfinite(v)]
    xb = [v for v in b["per_seed"] if v is not None and math.isfinite(v)]
    return {**welch(xa, xb), "p_permutation": permutation_p(xa, xb), "n_a": len(xa), "n_b": len(xb),
            "mde80": mde_welch(a["sd"], len(xa), b["sd"], len(xb))}
