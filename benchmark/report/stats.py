"""Statistics for comparing methods: paired tests, Holm correction, Friedman ranks, Nemenyi CD, bootstrap.

Conventions:

- Every p-value that cannot be computed (too few pairs, all differences zero, zero variance, fewer
  than the methods or blocks a test needs) is ``nan``; tables print it as ``n/a``. No function here
  raises on such degenerate input.
- Ranks: 1 is the best; ties get the average of the ranks they span.
- Bootstrap: percentile intervals of resampled test samples, from a seeded ``numpy`` generator.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

_NAN = float("nan")

EXACT_MAX_N = 200
"""Up to this many nonzero differences the Wilcoxon null distribution is computed exactly."""

TIE_DECIMALS = 9
"""Differences and scores (in percent points) are compared after rounding to this many decimals: two
values closer than 1e-9 points are a tie, and a difference that small is zero. Metrics computed in
different orders (``acc`` and ``acc_pc`` on balanced classes) or on another machine differ in their
last bits; without this, such noise would break ties, turn zero differences into signs, and move
the Wilcoxon and Friedman results."""

BOOTSTRAP_METRICS = ("acc", "acc_pc", "auroc", "hm_accpc_auroc")
"""Metrics :func:`bootstrap_metrics` resamples (vectorised over resamples)."""


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison ``a - b`` over ``n`` pairs: mean difference and two-sided p-values."""

    n: int
    mean_diff: float
    p_wilcoxon: float
    p_ttest: float


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation ``sqrt(sum (x - mean)^2 / (n - 1))``; std is nan for n < 2."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return _NAN, _NAN
    mean = float(x.mean())
    return mean, float(x.std(ddof=1)) if x.size > 1 else _NAN


def paired_tests(a: Sequence[float], b: Sequence[float]) -> PairedResult:
    """Paired Wilcoxon signed-rank test and paired t-test of ``a`` against ``b`` (two-sided).

    With ``d_i = a_i - b_i`` rounded to :data:`TIE_DECIMALS` decimals: Wilcoxon as in
    :func:`wilcoxon_signed_rank`. The t-test uses ``t = mean(d) / (std(d, ddof=1) / sqrt(n))`` with
    ``n - 1`` degrees of freedom. A p-value is ``nan`` when all differences are zero (both tests), or
    with fewer than 2 pairs or zero variance of ``d`` (t-test). ``mean_diff`` is the mean of the
    unrounded differences.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of equal length, got {x.shape} and {y.shape}")
    d = x - y
    n = int(d.size)
    if n == 0:
        return PairedResult(0, _NAN, _NAN, _NAN)
    dr = np.round(d, TIE_DECIMALS)
    p_t = _NAN
    if n >= 2 and float(dr.std(ddof=1)) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p_t = float(stats.ttest_1samp(dr, 0.0, alternative="two-sided").pvalue)
    return PairedResult(n, float(d.mean()), wilcoxon_signed_rank(dr), p_t)


def paired_t_interval(d: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The paired t interval of the mean difference: ``mean(d) -+ t_{(1+level)/2, n-1} std(d, ddof=1) / sqrt(n)``.

    Zero width when every difference is equal (all zero: a method equal to the baseline);
    ``(nan, nan)`` with fewer than 2 differences.
    """
    x = np.asarray(d, dtype=np.float64)
    n = x.size
    if n < 2:
        return _NAN, _NAN
    mean = float(x.mean())
    sd = float(x.std(ddof=1))
    if sd == 0:
        return mean, mean
    half = float(stats.t.ppf((1.0 + level) / 2.0, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def wilcoxon_signed_rank(d: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of the differences ``d`` (zeros dropped).

    ``W+ = sum of the ranks of |d_i| over d_i > 0`` (average ranks for ties). Under H0 each rank
    carries its sign with probability 1/2 independently, so the null distribution of ``W+`` is
    computed exactly (conditional on the ties) by convolution for ``n <= EXACT_MAX_N`` nonzero
    differences: ``p = min(1, 2 min(P(W+ <= w), P(W+ >= w)))``. Beyond that, the normal
    approximation ``z = (W+ - n(n+1)/4) / sqrt(n(n+1)(2n+1)/24 - sum(t^3 - t)/48)`` (``t``: tie
    sizes) without continuity correction. This equals scipy's exact test without ties and its
    permutation test with ties. ``nan`` when every difference is zero. The differences are first
    rounded to :data:`TIE_DECIMALS` decimals, so last-bit noise neither breaks a tie nor signs a zero.
    """
    x = np.round(np.asarray(d, dtype=np.float64), TIE_DECIMALS)
    x = x[x != 0]
    n = x.size
    if n == 0:
        return _NAN
    ranks2 = np.rint(2 * stats.rankdata(np.abs(x), method="average")).astype(np.int64)
    w2 = int(ranks2[x > 0].sum())
    if n <= EXACT_MAX_N:
        dist = np.zeros(int(ranks2.sum()) + 1)
        dist[0] = 1.0
        for r in ranks2:
            shifted = np.zeros_like(dist)
            shifted[r:] = dist[:-r]
            dist = 0.5 * (dist + shifted)
        lower, upper = float(dist[: w2 + 1].sum()), float(dist[w2:].sum())
        return min(1.0, 2.0 * min(lower, upper))
    _, counts = np.unique(np.abs(x), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24.0 - float(np.sum(counts**3 - counts)) / 48.0
    z = (w2 / 2.0 - n * (n + 1) / 4.0) / math.sqrt(var)
    return float(min(1.0, 2.0 * stats.norm.sf(abs(z))))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    The ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)`` (stable on ties), get
    ``p~_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))``; a hypothesis is rejected at level alpha
    when ``p~ < alpha``. ``nan`` inputs stay ``nan`` and do not count in ``m``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out.tolist()
    order = finite[np.argsort(p[finite], kind="mergesort")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out.tolist()


def rank_rows(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Rank the ``k`` methods (columns) within each of the ``N`` blocks (rows): 1 = best, ties averaged;
    scores equal to :data:`TIE_DECIMALS` decimals tie."""
    s = np.round(np.asarray(scores, dtype=np.float64), TIE_DECIMALS)
    return stats.rankdata(-s if higher_is_better else s, axis=1, method="average")


@dataclass(frozen=True)
class FriedmanResult:
    """Average ranks of ``k`` methods over ``n_blocks`` blocks, the Friedman test and Nemenyi's CD."""

    avg_ranks: list[float]
    n_blocks: int
    statistic: float
    pvalue: float
    cd: float


def friedman(scores: np.ndarray, higher_is_better: bool = True, alpha: float = 0.05) -> FriedmanResult:
    """Friedman test on an ``N x k`` matrix (blocks x methods) with average ranks and Nemenyi's CD.

    ``chi2_F = 12 N / (k (k + 1)) * (sum_j R_j^2 - k (k + 1)^2 / 4)`` with ``R_j`` the average rank,
    corrected for ties (scipy's ``friedmanchisquare``), ``k - 1`` degrees of freedom; scores equal to
    :data:`TIE_DECIMALS` decimals tie. Needs
    ``k >= 3`` and ``N >= 2`` and not every block fully tied; otherwise statistic and p are ``nan``.
    The CD (:func:`nemenyi_cd`) is given whenever ``k >= 2`` and ``N >= 1``.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        k = s.shape[1] if s.ndim == 2 else 0
        return FriedmanResult([_NAN] * k, 0, _NAN, _NAN, _NAN)
    n, k = s.shape
    ranks = rank_rows(s, higher_is_better)
    stat = p = _NAN
    if k >= 3 and n >= 2 and np.any(ranks != ranks[:, :1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.friedmanchisquare(*np.round(s, TIE_DECIMALS).T)
        stat, p = float(res.statistic), float(res.pvalue)
    cd = nemenyi_cd(k, n, alpha) if k >= 2 else _NAN
    return FriedmanResult(ranks.mean(axis=0).tolist(), n, stat, p, cd)


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Critical value ``q_alpha = Q_{1-alpha}(k, inf) / sqrt(2)`` of the studentized range ``Q``."""
    if k < 2:
        raise ValueError(f"the Nemenyi test needs at least 2 methods, got k={k}")
    return float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0))


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks: ``CD = q_alpha * sqrt(k (k + 1) / (6 N))``.

    Two methods whose average ranks over ``N`` blocks differ by at least CD differ significantly
    (Demšar, JMLR 2006).
    """
    if n < 1:
        raise ValueError(f"the critical difference needs at least one block, got N={n}")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


def cd_cliques(avg_ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs of methods, in ascending rank order, whose ranks span less than ``cd``.

    Returns index pairs ``(i, j)``, ``i < j``, into ``sorted(avg_ranks)``: methods ``i..j`` are not
    significantly different. Runs contained in another run are dropped.
    """
    r = sorted(avg_ranks)
    if not math.isfinite(cd):
        return []
    out: list[tuple[int, int]] = []
    for i in range(len(r)):
        j = i
        while j + 1 < len(r) and r[j + 1] - r[i] < cd:
            j += 1
        if j > i and not (out and out[-1][1] >= j):
            out.append((i, j))
    return out


def bootstrap_indices(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot x n`` indices drawn uniformly with replacement from ``range(n)``."""
    return rng.integers(0, n, size=(n_boot, n))


def bootstrap_metrics(
    metrics: Sequence[str], pred: np.ndarray, score: np.ndarray, label: np.ndarray, num_known: int, idx: np.ndarray
) -> dict[str, np.ndarray]:
    """The metrics (percent) of every resample ``idx[b]`` of one prediction set; ``nan`` where undefined.

    Same definitions as :mod:`benchmark.core.metrics`: ``acc`` and ``acc_pc`` on known samples
    (``label < K``; per-class mean over the classes present in the resample), ``auroc`` as the
    Mann-Whitney statistic ``(sum of ranks of knowns - n_k (n_k + 1) / 2) / (n_k n_u)`` with average
    ranks for ties (a tie counts one half), ``hm_accpc_auroc = 2 a b / (a + b)`` of ``acc_pc`` and ``auroc``.
    """
    unknown = sorted(set(metrics) - set(BOOTSTRAP_METRICS))
    if unknown:
        raise ValueError(f"bootstrap supports {', '.join(BOOTSTRAP_METRICS)}; got {', '.join(unknown)}")
    lab = np.asarray(label)[idx]
    known = lab < num_known
    n_known = known.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        correct = known & (np.asarray(pred)[idx] == lab)
        if "acc" in metrics:
            out["acc"] = np.where(n_known > 0, 100.0 * correct.sum(axis=1) / n_known, np.nan)
        if "acc_pc" in metrics or "hm_accpc_auroc" in metrics:
            b = lab.shape[0]
            width = num_known + 1
            cls = (np.where(known, lab, num_known) + width * np.arange(b)[:, None]).ravel()
            total = np.bincount(cls, minlength=b * width).reshape(b, width)[:, :num_known]
            hits = np.bincount(cls, weights=correct.ravel().astype(np.float64), minlength=b * width).reshape(b, width)[
                :, :num_known
            ]
            present = total > 0
            per_class = np.where(present, hits / np.where(present, total, 1), 0.0)
            out["acc_pc"] = np.where(n_known > 0, 100.0 * per_class.sum(axis=1) / present.sum(axis=1), np.nan)
        if "auroc" in metrics or "hm_accpc_auroc" in metrics:
            n_unknown = known.shape[1] - n_known
            ranks = stats.rankdata(np.asarray(score, dtype=np.float64)[idx], axis=1, method="average")
            u = (ranks * known).sum(axis=1) - n_known * (n_known + 1) / 2.0
            out["auroc"] = np.where((n_known > 0) & (n_unknown > 0), 100.0 * u / (n_known * n_unknown), np.nan)
        if "hm_accpc_auroc" in metrics:
            a, c = out["acc_pc"], out["auroc"]
            h = np.where(a + c > 0, 2.0 * a * c / (a + c), 0.0)
            out["hm_accpc_auroc"] = np.where(np.isnan(a) | np.isnan(c), np.nan, h)
    return {m: out[m] for m in metrics}


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval ``[q_{(1-level)/2}, q_{(1+level)/2}]`` of the finite replicates."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return _NAN, _NAN
    lo, hi = np.quantile(r, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)
