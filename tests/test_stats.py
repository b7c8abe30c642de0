"""Statistics of the report against scipy and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from benchmark.core.metrics import accuracy, auroc, harmonic_mean, per_class_accuracy
from benchmark.report import stats

# Demšar (JMLR 2006), Table 5(a): q_0.05 of the two-tailed Nemenyi test for k = 2..10.
DEMSAR_Q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]


def test_mean_std_is_sample_std():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = stats.mean_std([5.0])
    assert mean == 5.0 and math.isnan(std)
    assert all(math.isnan(v) for v in stats.mean_std([]))


@pytest.mark.parametrize("n", [3, 8, 13, 25, 40])
def test_wilcoxon_equals_scipy_exact_without_ties(n):
    d = np.random.default_rng(n).normal(size=n)
    assert stats.wilcoxon_signed_rank(d) == pytest.approx(sps.wilcoxon(d, method="exact").pvalue, rel=1e-12)


@pytest.mark.parametrize("n", [4, 7, 10])
def test_wilcoxon_with_ties_and_zeros_equals_scipy_permutation(n):
    rng = np.random.default_rng(n)
    d = np.round(rng.normal(size=n)) + 0.5 * rng.integers(0, 2, n)
    d[0] = 0.0
    expected = sps.wilcoxon(d, zero_method="wilcox", method=sps.PermutationMethod()).pvalue
    assert stats.wilcoxon_signed_rank(d) == pytest.approx(expected, rel=1e-12)


def test_wilcoxon_large_n_is_the_tie_corrected_normal_approximation():
    d = np.round(np.random.default_rng(1).normal(0.1, 1, size=stats.EXACT_MAX_N + 50), 1)
    expected = sps.wilcoxon(d, method="asymptotic", correction=False).pvalue
    assert stats.wilcoxon_signed_rank(d) == pytest.approx(expected, rel=1e-10)


def test_wilcoxon_hand_computed_n3_seeds():
    # 3 seeds, all better: W+ = 6 is the most extreme of 2^3 sign patterns -> p = 2 * 1/8
    assert stats.wilcoxon_signed_rank([0.5, 1.0, 2.0]) == pytest.approx(0.25)
    # d = (1, -2, 3): W+ = 4; P(W+ >= 4) = #{4, 5, 6} / 8 = 3/8 -> p = 0.75
    assert stats.wilcoxon_signed_rank([1.0, -2.0, 3.0]) == pytest.approx(0.75)


def test_wilcoxon_hand_computed_ties_and_zero():
    # zero dropped; |d| = 1, 1, 2, 3 -> ranks 1.5, 1.5, 3, 4 and W+ = 6. Of the 16 sign patterns the
    # sums 6, 7, 7, 8.5, 8.5, 10 are >= 6 -> P(W+ >= 6) = 6/16 < P(W+ <= 6) = 11/16 -> p = 0.75
    assert stats.wilcoxon_signed_rank([1.0, 1.0, 2.0, -3.0, 0.0]) == pytest.approx(0.75)


def test_paired_tests_against_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(70, 3, 12)
    b = a - rng.normal(1.5, 1.0, 12)
    r = stats.paired_tests(a, b)
    assert r.n == 12 and r.mean_diff == pytest.approx(float(np.mean(a - b)))
    assert r.p_ttest == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert r.p_wilcoxon == pytest.approx(sps.wilcoxon(a, b).pvalue)


def test_paired_t_hand_computed():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641 with 2 df
    r = stats.paired_tests([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert r.p_ttest == pytest.approx(2 * sps.t.sf(2 * math.sqrt(3), 2))


@pytest.mark.parametrize(
    "a, b", [([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), ([5.0], [4.0]), ([], []), ([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])]
)
def test_paired_tests_degenerate_cases_give_nan_not_errors(a, b):
    r = stats.paired_tests(a, b)
    assert math.isnan(r.p_ttest)  # all zero, n = 1, empty, zero variance
    if not any(x != y for x, y in zip(a, b)):
        assert math.isnan(r.p_wilcoxon)


def test_holm_hand_computed_order_and_values():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_holm_ignores_nan_and_is_monotone():
    adj = stats.holm([0.02, float("nan"), 0.01])
    assert adj[0] == pytest.approx(0.02) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.02)
    p = np.random.default_rng(3).uniform(0, 0.2, 30)
    a = np.array(stats.holm(p))
    order = np.argsort(p, kind="mergesort")
    assert np.all(a >= p) and np.all(np.diff(a[order]) >= 0) and np.all(a <= 1)
    assert stats.holm([]) == [] and all(math.isnan(v) for v in stats.holm([float("nan")]))


def test_rank_rows_ties_and_direction():
    assert stats.rank_rows(np.array([[3.0, 3.0, 1.0]])).tolist() == [[1.5, 1.5, 3.0]]
    assert stats.rank_rows(np.array([[3.0, 2.0, 1.0]]), higher_is_better=False).tolist() == [[3.0, 2.0, 1.0]]


def test_friedman_against_scipy_and_formula():
    s = np.random.default_rng(5).normal(size=(10, 4)) + np.array([0.0, 0.5, 1.0, 1.5])
    res = stats.friedman(s)
    ranks = stats.rank_rows(s).mean(axis=0)
    n, k = s.shape
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(ranks**2) - k * (k + 1) ** 2 / 4)
    assert res.statistic == pytest.approx(chi2)
    assert res.statistic == pytest.approx(sps.friedmanchisquare(*s.T).statistic)
    assert res.pvalue == pytest.approx(sps.friedmanchisquare(*s.T).pvalue)
    assert res.avg_ranks == pytest.approx(ranks.tolist()) and res.n_blocks == 10


def test_friedman_degenerate_cases():
    two = stats.friedman(np.array([[1.0, 2.0], [1.0, 3.0]]))
    assert math.isnan(two.pvalue) and two.avg_ranks == [2.0, 1.0] and math.isfinite(two.cd)
    tied = stats.friedman(np.ones((4, 3)))
    assert math.isnan(tied.pvalue) and tied.avg_ranks == [2.0, 2.0, 2.0]
    one_block = stats.friedman(np.array([[1.0, 2.0, 3.0]]))
    assert math.isnan(one_block.pvalue) and one_block.cd == pytest.approx(stats.nemenyi_cd(3, 1))
    assert stats.friedman(np.empty((0, 3))).n_blocks == 0


@pytest.mark.parametrize("k", range(2, 11))
def test_nemenyi_q_matches_demsar_table(k):
    assert stats.nemenyi_q(k) == pytest.approx(DEMSAR_Q05[k - 2], abs=2e-3)


def test_critical_difference_formula():
    k, n = 4, 7
    q = sps.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2)
    assert stats.nemenyi_cd(k, n) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)))
    assert stats.nemenyi_cd(4, 7) == pytest.approx(2.569 * math.sqrt(20 / 42), abs=2e-3)
    with pytest.raises(ValueError):
        stats.nemenyi_cd(1, 5)


def test_cd_cliques():
    assert stats.cd_cliques([1.0, 1.5, 3.0, 3.2], cd=1.0) == [(0, 1), (2, 3)]
    assert stats.cd_cliques([1.0, 1.8, 2.6], cd=1.0) == [(0, 1), (1, 2)]
    assert stats.cd_cliques([1.0, 2.0], cd=0.5) == []


def _preds(rng: np.random.Generator, n: int = 80, k: int = 5):
    label = rng.integers(0, k + 3, n)
    pred = np.where(rng.random(n) < 0.6, np.minimum(label, k - 1), rng.integers(0, k, n))
    score = np.round(rng.normal(size=n) + (label < k), 1)  # rounded: ties between knowns and unknowns
    return pred, score, label, k


def test_bootstrap_metrics_equal_the_metric_definitions():
    rng = np.random.default_rng(0)
    pred, score, label, k = _preds(rng)
    idx = stats.bootstrap_indices(label.size, 20, rng)
    idx[0] = np.arange(label.size)
    out = stats.bootstrap_metrics(["acc", "acc_pc", "auroc", "hm_accpc_auroc"], pred, score, label, k, idx)
    for b in range(idx.shape[0]):
        p, s, y = pred[idx[b]], score[idx[b]], label[idx[b]]
        assert out["acc"][b] == pytest.approx(accuracy(p, y, k))
        assert out["acc_pc"][b] == pytest.approx(per_class_accuracy(p, y, k))
        assert out["auroc"][b] == pytest.approx(auroc(s, y < k))
        assert out["hm_accpc_auroc"][b] == pytest.approx(harmonic_mean(per_class_accuracy(p, y, k), auroc(s, y < k)))


def test_bootstrap_undefined_resample_is_nan_and_interval_skips_it():
    label = np.array([0, 1, 9])
    idx = np.array([[0, 1, 0], [0, 1, 2]])
    out = stats.bootstrap_metrics(["auroc"], np.array([0, 1, 0]), np.array([0.9, 0.8, 0.1]), label, 2, idx)
    assert math.isnan(out["auroc"][0]) and out["auroc"][1] == pytest.approx(100.0)
    assert stats.percentile_interval(np.array([np.nan, 1.0, 3.0])) == pytest.approx((1.05, 2.95))
    assert all(math.isnan(v) for v in stats.percentile_interval(np.array([np.nan])))
    with pytest.raises(ValueError):
        stats.bootstrap_metrics(["fpr95"], label, label, label, 2, idx)
