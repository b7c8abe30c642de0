"""Tests of benchmark.core.metrics: hand-computed cases, bounds, brute-force cross-checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmark.core.metrics import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    accuracy,
    auroc,
    average_precision,
    fpr_at_tpr,
    harmonic_mean,
    open_set_metrics,
    oscr,
    otsu_threshold,
    per_class_accuracy,
    roc_curve,
    unida_hscore,
)


def _brute_auroc(score: np.ndarray, is_known: np.ndarray) -> float:
    """Pairwise count over (known, unknown) pairs: 1 if known scores higher, 1/2 if tied."""
    k = score[is_known][:, None]
    u = score[~is_known][None, :]
    return 100.0 * ((k > u).sum() + 0.5 * (k == u).sum()) / (k.size * u.size)


def _brute_ap(score: np.ndarray, pos: np.ndarray) -> float:
    """Mean over positives i of precision at threshold score_i (all samples with s >= s_i)."""
    precs = [pos[score >= score[i]].mean() for i in np.flatnonzero(pos)]
    return 100.0 * float(np.mean(precs))


def _brute_oscr(pred: np.ndarray, label: np.ndarray, score: np.ndarray, k: int) -> float:
    """Per-threshold loop over the distinct scores and an explicit trapezoid sum."""
    known = label < k
    correct = known & (pred == label)
    xs, ys = [0.0], [0.0]
    for t in sorted(set(score.tolist()), reverse=True):
        xs.append(float(np.sum(~known & (score >= t)) / np.sum(~known)))
        ys.append(float(np.sum(correct & (score >= t)) / np.sum(known)))
    area = sum((xs[i] - xs[i - 1]) * (ys[i] + ys[i - 1]) / 2 for i in range(1, len(xs)))
    return 100.0 * area


class TestAccuracy:
    def test_acc_ignores_unknowns(self):
        # K=2; knowns: 3 samples, 2 correct; the unknowns' predictions must not matter.
        pred = np.array([0, 1, 0, 0, 1, 1])
        label = np.array([0, 1, 1, 2, 3, 5])
        assert accuracy(pred, label, 2) == pytest.approx(200.0 / 3)

    def test_per_class_skips_missing_class(self):
        # K=4, class 2 absent. class 0: 1/2, class 1: 1/1, class 3: 3/4 -> (50+100+75)/3 = 75.
        label = np.array([0, 0, 1, 3, 3, 3, 3, 4, 5])
        pred = np.array([0, 1, 1, 3, 3, 3, 0, 2, 2])
        assert per_class_accuracy(pred, label, 4) == pytest.approx(75.0)
        # Overall known accuracy: 5 correct of 7.
        assert accuracy(pred, label, 4) == pytest.approx(500.0 / 7)

    def test_no_known_is_nan(self):
        assert math.isnan(accuracy([0, 1], [2, 3], 2))
        assert math.isnan(per_class_accuracy([0, 1], [2, 3], 2))


class TestAuroc:
    def test_tie_counts_half(self):
        # known {0.9, 0.5}, unknown {0.5, 0.1}: pairs 1 + 1 + 0.5 + 1 = 3.5 of 4.
        score = np.array([0.9, 0.5, 0.5, 0.1])
        known = np.array([True, True, False, False])
        assert auroc(score, known) == pytest.approx(87.5)

    def test_perfect_and_reversed(self):
        score = np.array([4.0, 3.0, 2.0, 1.0])
        known = np.array([True, True, False, False])
        assert auroc(score, known) == pytest.approx(100.0)
        assert auroc(-score, known) == pytest.approx(0.0)

    def test_all_tied_is_half(self):
        assert auroc(np.ones(5), np.array([1, 0, 1, 0, 0])) == pytest.approx(50.0)

    def test_empty_group_nan(self):
        assert math.isnan(auroc([0.1, 0.2], [True, True]))
        assert math.isnan(auroc([0.1, 0.2], [False, False]))

    def test_random_vs_pairwise(self):
        rng = np.random.default_rng(0)
        for _ in range(20):
            n = int(rng.integers(5, 80))
            score = rng.integers(0, 6, size=n).astype(float)
            known = rng.random(n) < 0.6
            if known.all() or not known.any():
                continue
            assert auroc(score, known) == pytest.approx(_brute_auroc(score, known))


class TestRocCurve:
    def test_ties_grouped(self):
        score = np.array([0.9, 0.5, 0.5, 0.1])
        known = np.array([True, True, False, False])
        fpr, tpr, thr = roc_curve(score, known)
        np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 1.0])
        np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0, 1.0])
        np.testing.assert_allclose(thr, [np.inf, 0.9, 0.5, 0.1])

    def test_trapezoid_matches_auroc(self):
        rng = np.random.default_rng(1)
        score = rng.integers(0, 10, size=200).astype(float)
        known = rng.random(200) < 0.5
        fpr, tpr, _ = roc_curve(score, known)
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        assert 100 * area == pytest.approx(auroc(score, known))

    def test_empty_group_raises(self):
        with pytest.raises(ValueError, match="both groups"):
            roc_curve([0.1, 0.2], [True, True])


class TestFpr95:
    def test_interpolation_inside_tie_group(self):
        # 18 knowns at 100..83; one tie group at 2.0 holding 2 knowns and 1 unknown; 3 more
        # unknowns below. ROC goes (0, 0.90) -> (0.25, 1.00): 0.95 is halfway -> FPR 0.125.
        score = np.r_[np.arange(100.0, 82.0, -1), 2.0, 2.0, 2.0, 1.0, 0.5, 0.0]
        known = np.r_[np.ones(18, bool), True, True, False, False, False, False]
        assert fpr_at_tpr(score, known, 0.95) == pytest.approx(12.5)

    def test_interpolation_vertical_step(self):
        # 10 knowns: k1..k9 at 10..2, u1 1.5, u2 1.2, k10 1.0, u3 0.5, u4 0.1.
        # TPR jumps 0.9 -> 1.0 at FPR 0.5 (vertical), so fpr95 = 50.
        score = np.r_[np.arange(10.0, 1.0, -1), 1.5, 1.2, 1.0, 0.5, 0.1]
        known = np.r_[np.ones(9, bool), False, False, True, False, False]
        assert fpr_at_tpr(score, known) == pytest.approx(50.0)

    def test_exact_hit_smallest_fpr(self):
        # k1..k19 at 100..82 reach TPR 0.95 at FPR 0; u1 at 81.5 stays at TPR 0.95 with
        # FPR 0.25. The smallest FPR of the points at TPR 0.95 is taken -> 0.
        score = np.r_[np.arange(100.0, 81.0, -1), 81.5, 81.0, 80.0, 79.0, 78.0]
        known = np.r_[np.ones(19, bool), False, True, False, False, False]
        assert fpr_at_tpr(score, known) == pytest.approx(0.0)

    def test_exact_hit_after_unknown(self):
        # k1..k18, u1, k19, u2, k20, u3, u4: TPR 0.95 is first reached at FPR 0.25.
        score = np.arange(24.0, 0.0, -1)
        known = np.r_[np.ones(18, bool), False, True, False, True, False, False]
        assert fpr_at_tpr(score, known) == pytest.approx(25.0)

    def test_perfect_and_reversed(self):
        score = np.arange(8.0, 0.0, -1)
        known = np.r_[np.ones(4, bool), np.zeros(4, bool)]
        assert fpr_at_tpr(score, known) == pytest.approx(0.0)
        assert fpr_at_tpr(-score, known) == pytest.approx(100.0)

    def test_bad_tpr_and_empty_group(self):
        with pytest.raises(ValueError, match="tpr"):
            fpr_at_tpr([0.1, 0.2], [True, False], tpr=1.5)
        assert math.isnan(fpr_at_tpr([0.1, 0.2], [True, True]))


class TestAveragePrecision:
    def test_hand_case_with_tie(self):
        # s: 0.9 P | 0.8 N, 0.8 P (tied) | 0.3 N | 0.2 P ; 3 positives.
        # AP = 1/3*1 + 1/3*(2/3) + 0*(1/2) + 1/3*(3/5) = 34/45.
        score = np.array([0.9, 0.8, 0.8, 0.3, 0.2])
        pos = np.array([True, False, True, False, True])
        assert average_precision(score, pos) == pytest.approx(100 * 34 / 45)

    def test_perfect(self):
        score = np.array([3.0, 2.0, 1.0, 0.0])
        assert average_precision(score, np.array([1, 1, 0, 0])) == pytest.approx(100.0)

    def test_no_positive_nan(self):
        assert math.isnan(average_precision([0.1, 0.2], [False, False]))

    def test_random_vs_definition(self):
        rng = np.random.default_rng(2)
        for _ in range(20):
            n = int(rng.integers(3, 60))
            score = rng.integers(0, 5, size=n).astype(float)
            pos = rng.random(n) < 0.4
            if not pos.any():
                continue
            assert average_precision(score, pos) == pytest.approx(_brute_ap(score, pos))


class TestOscr:
    def test_hand_case_with_misclassified_high_score(self):
        # K=2. Knowns: a .9 correct, b .8 WRONG, c .6 correct, d .3 correct; unknowns .7, .2.
        # Points (FPR, CCR): (0,0) (0,.25) (0,.25) (.5,.25) (.5,.5) (.5,.75) (1,.75)
        # Area = .5*.25 + .5*.75 = 0.5 -> 50 (acc = 75, AUROC = 75).
        pred = np.array([0, 0, 1, 0, 1, 0])
        label = np.array([0, 1, 1, 0, 2, 3])
        score = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2])
        assert oscr(pred, label, score, 2) == pytest.approx(50.0)
        m = open_set_metrics(pred, label, score, 2)
        assert m["acc"] == pytest.approx(75.0)
        assert m["auroc"] == pytest.approx(75.0)

    def test_tie_counts_half_like_auroc(self):
        # All knowns correct: knowns .9, .5; unknowns .5, .1 -> same as AUROC = 87.5.
        pred = np.array([0, 1, 0, 0])
        label = np.array([0, 1, 2, 2])
        score = np.array([0.9, 0.5, 0.5, 0.1])
        assert oscr(pred, label, score, 2) == pytest.approx(87.5)

    def test_perfect_and_reversed(self):
        pred = np.array([0, 1, 0, 1])
        label = np.array([0, 1, 2, 2])
        score = np.array([2.0, 1.5, 0.5, 0.1])
        assert oscr(pred, label, score, 2) == pytest.approx(100.0)
        assert oscr(pred, label, -score, 2) == pytest.approx(0.0)

    def test_bounds_and_brute_force(self):
        rng = np.random.default_rng(3)
        for _ in range(20):
            n, k = 60, 3
            label = rng.integers(0, 5, size=n)
            pred = np.where(rng.random(n) < 0.7, np.minimum(label, k - 1), rng.integers(0, k, size=n))
            score = rng.integers(0, 8, size=n).astype(float) + (label < k)
            if (label < k).all() or (label >= k).all():
                continue
            m = open_set_metrics(pred, label, score, k)
            assert 0.0 <= m["oscr"] <= min(m["acc"], m["auroc"]) + 1e-9
            assert m["oscr"] == pytest.approx(_brute_oscr(pred, label, score, k))

    def test_empty_group_nan(self):
        assert math.isnan(oscr([0, 1], [0, 1], [0.3, 0.2], 2))


class TestHarmonicMean:
    def test_values(self):
        assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
        assert harmonic_mean(50.0, 50.0) == pytest.approx(50.0)
        assert harmonic_mean(100.0, 0.0) == 0.0
        assert harmonic_mean(0.0, 0.0) == 0.0

    def test_nan(self):
        assert math.isnan(harmonic_mean(float("nan"), 50.0))
        assert math.isnan(harmonic_mean(50.0, float("nan")))


class TestOtsu:
    def test_two_clusters_cut_between_them(self):
        # sigma_b^2 is largest for the cut between .2 and .8: threshold = their midpoint .5
        assert otsu_threshold([0.1, 0.2, 0.2, 0.8, 0.9]) == pytest.approx(0.5)

    def test_hand_case_unequal_groups(self):
        # cuts of [0, 1, 2, 10]: k=1: .25*.75*(0-13/3)^2 = 3.52; k=2: .5*.5*(.5-6)^2 = 7.5625;
        # k=3: .75*.25*(1-10)^2 = 15.19 -> cut between 2 and 10
        assert otsu_threshold([10.0, 0.0, 2.0, 1.0]) == pytest.approx(6.0)

    def test_ties_never_split(self):
        t = otsu_threshold([1.0, 1.0, 1.0, 2.0])
        assert 1.0 < t < 2.0

    def test_degenerate_nan(self):
        assert math.isnan(otsu_threshold([0.3]))
        assert math.isnan(otsu_threshold([0.3, 0.3, 0.3]))


class TestUnidaHScore:
    # K = 2; samples: known 0 (correct, score .9), known 1 (correct, .4), known 1 (wrong, .8),
    # unknown (.3), unknown (.7)
    PRED = np.array([0, 1, 0, 0, 1])
    LABEL = np.array([0, 1, 1, 2, 3])
    SCORE = np.array([0.9, 0.4, 0.8, 0.3, 0.7])

    def test_hand_case(self):
        # threshold .5: accepted .9 .8 .7; class 0: 1/1 correct & accepted; class 1: .4 rejected,
        # .8 wrong -> 0/2. known = (1 + 0)/2 = 50; unknown rejected: .3 yes, .7 no -> 50; H = 50
        m = unida_hscore(self.PRED, self.LABEL, self.SCORE, 2, 0.5)
        assert m["hos_known"] == pytest.approx(50.0)
        assert m["hos_unknown"] == pytest.approx(50.0)
        assert m["hos"] == pytest.approx(50.0)
        # threshold .35: class 1's .4 is accepted and correct -> (1 + 1/2)/2 = 75; unknown 50
        m = unida_hscore(self.PRED, self.LABEL, self.SCORE, 2, 0.35)
        assert m["hos_known"] == pytest.approx(75.0)
        assert m["hos"] == pytest.approx(2 * 75 * 50 / 125)

    def test_reject_everything(self):
        m = unida_hscore(self.PRED, self.LABEL, self.SCORE, 2, 1.0)
        assert (m["hos_known"], m["hos_unknown"], m["hos"]) == (0.0, 100.0, 0.0)

    def test_reject_nothing(self):
        m = unida_hscore(self.PRED, self.LABEL, self.SCORE, 2, 0.0)
        assert m["hos_unknown"] == 0.0 and m["hos"] == 0.0
        assert m["hos_known"] == pytest.approx((1.0 + 0.5) / 2 * 100)

    def test_undefined(self):
        assert math.isnan(unida_hscore([0, 1], [0, 1], [0.1, 0.2], 2, 0.5)["hos"])
        assert math.isnan(unida_hscore(self.PRED, self.LABEL, self.SCORE, 2, float("nan"))["hos"])

    def test_rejection_rule_reads_no_labels(self):
        # open_set_metrics fits Otsu on the scores alone: permuting the labels keeps the threshold
        rng = np.random.default_rng(0)
        label = rng.integers(0, 4, 200)
        pred = rng.integers(0, 2, 200)
        score = rng.normal(size=200)
        t1 = open_set_metrics(pred, label, score, 2)["threshold"]
        t2 = open_set_metrics(pred, rng.permutation(label), score, 2)["threshold"]
        assert t1 == t2 == otsu_threshold(score)

    def test_zero_shot_like_scores_get_a_real_value(self):
        rng = np.random.default_rng(1)
        label = np.repeat(np.arange(6), 50)
        pred = np.where(label < 4, label, 0)
        score = rng.normal(size=300) + 1.5 * (label < 4)
        m = open_set_metrics(pred, label, score, 4)
        assert 0.0 < m["hos"] < 100.0


class TestOpenSetMetrics:
    def test_keys_and_constants(self):
        assert METRIC_NAMES == (
            "acc",
            "acc_pc",
            "auroc",
            "fpr95",
            "aupr_in",
            "aupr_out",
            "oscr",
            "hm_accpc_auroc",
            "hos",
            "hos_known",
            "hos_unknown",
        )
        assert set(HIGHER_IS_BETTER) == set(METRIC_NAMES)
        assert HIGHER_IS_BETTER["fpr95"] is False
        assert all(v for key, v in HIGHER_IS_BETTER.items() if key != "fpr95")
        m = open_set_metrics([0, 1, 0], [0, 1, 2], [0.9, 0.8, 0.1], 2)
        assert list(m) == ["acc", "acc_pc", "n", "n_known", "n_unknown", *METRIC_NAMES[2:], "threshold"]
        assert (m["n"], m["n_known"], m["n_unknown"]) == (3, 2, 1)
        assert all(isinstance(m[key], int) for key in ("n", "n_known", "n_unknown"))

    def test_hand_case_all_metrics(self):
        # Knowns .9 (correct), .5 (correct); unknowns .5, .1. K=2.
        # aupr_in: 1/2*1 + 1/2*(2/3) = 5/6. aupr_out on -s (-.1 U | -.5 K,U | -.9 K):
        # 1/2*1 + 1/2*(2/3) = 5/6. fpr95: ROC (0,.5)->(.5,1), TPR .95 at 90% of the way -> 45.
        pred = np.array([0, 1, 1, 0])
        label = np.array([0, 1, 2, 3])
        score = np.array([0.9, 0.5, 0.5, 0.1])
        m = open_set_metrics(pred, label, score, 2)
        assert m["acc"] == pytest.approx(100.0)
        assert m["acc_pc"] == pytest.approx(100.0)
        assert m["auroc"] == pytest.approx(87.5)
        assert m["fpr95"] == pytest.approx(45.0)
        assert m["aupr_in"] == pytest.approx(500 / 6)
        assert m["aupr_out"] == pytest.approx(500 / 6)
        assert m["oscr"] == pytest.approx(87.5)
        assert m["hm_accpc_auroc"] == pytest.approx(2 * 100 * 87.5 / 187.5)

    def test_no_unknowns_nan(self):
        m = open_set_metrics([0, 1, 1], [0, 1, 0], [0.9, 0.8, 0.1], 2)
        assert m["acc"] == pytest.approx(200 / 3)
        assert m["acc_pc"] == pytest.approx(75.0)
        for key in ("auroc", "fpr95", "aupr_in", "aupr_out", "oscr", "hm_accpc_auroc", "hos"):
            assert math.isnan(m[key]), key
        assert m["n_unknown"] == 0

    def test_no_knowns_nan(self):
        m = open_set_metrics([0, 1], [2, 3], [0.9, 0.8], 2)
        assert all(math.isnan(m[key]) for key in METRIC_NAMES)
        assert m["n_known"] == 0

    def test_large_input(self):
        rng = np.random.default_rng(4)
        n, k = 100_000, 10
        label = rng.integers(0, 15, size=n)
        pred = rng.integers(0, k, size=n)
        score = rng.normal(size=n) + (label < k)
        m = open_set_metrics(pred, label, score, k)
        assert all(0.0 <= m[key] <= 100.0 for key in METRIC_NAMES)


class TestValidation:
    def test_unequal_lengths(self):
        with pytest.raises(ValueError, match="equal lengths"):
            open_set_metrics([0, 1], [0, 1, 2], [0.1, 0.2], 2)
        with pytest.raises(ValueError, match="equal lengths"):
            auroc([0.1, 0.2, 0.3], [True, False])

    def test_not_1d(self):
        with pytest.raises(ValueError, match="1-D"):
            open_set_metrics([[0, 1]], [[0, 1]], [[0.1, 0.2]], 2)
        with pytest.raises(ValueError, match="1-D"):
            average_precision(np.zeros((2, 2)), np.ones(4, bool))

    def test_bad_values(self):
        with pytest.raises(ValueError, match="num_known"):
            accuracy([0], [0], 0)
        with pytest.raises(ValueError, match="pred"):
            accuracy([0, 2], [0, 1], 2)
        with pytest.raises(ValueError, match="label"):
            accuracy([0, 1], [0, -1], 2)
        with pytest.raises(ValueError, match="integers"):
            accuracy([0.0, 1.0], [0, 1], 2)
        with pytest.raises(ValueError, match="finite"):
            auroc([0.1, float("nan")], [True, False])
        with pytest.raises(ValueError, match="boolean"):
            auroc([0.1, 0.2], [2, 0])
