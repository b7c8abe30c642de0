"""Open-set evaluation metrics (pure numpy / scipy).

Conventions shared by every function:

- All metrics are returned in PERCENT (floats in ``[0, 100]``), or ``nan`` where undefined.
- ``pred``: integer array, argmax over the ``K = num_known`` known classes, so ``0 <= pred < K``.
- ``label``: integer array, ``label < K`` is a known-class sample, ``label >= K`` an unknown one.
- ``score``: float array, an OOD score where HIGHER means more likely known.
- Thresholds are applied as ``score >= t``; samples with equal scores always enter together
  (ties are grouped), which makes ties between a known and an unknown count one half in AUROC.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

CLASSIFICATION_METRICS: tuple[str, ...] = ("acc", "acc_pc")
"""Metrics of the argmax prediction alone (the same under every OOD score)."""

SCORE_METRICS: tuple[str, ...] = (
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
"""Metrics that depend on the OOD score (computed once per score)."""

METRIC_NAMES: tuple[str, ...] = CLASSIFICATION_METRICS + SCORE_METRICS
"""Every metric key of :func:`open_set_metrics`, in report order."""

HIGHER_IS_BETTER: dict[str, bool] = {name: name != "fpr95" for name in METRIC_NAMES}
"""Direction of each metric: only ``fpr95`` is lower-is-better."""

_NAN = float("nan")
_TPR_ATOL = 1e-12


def _as_1d(x: object, name: str) -> np.ndarray:
    """``np.asarray(x)``, which must be one-dimensional."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    return arr


def _as_int(x: object, name: str) -> np.ndarray:
    """A 1-D integer array (bool and float dtypes are rejected)."""
    arr = _as_1d(x, name)
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _as_score(x: object, name: str = "score") -> np.ndarray:
    """A 1-D finite float64 array."""
    arr = _as_1d(x, name)
    if arr.size and arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (found nan or inf)")
    return arr


def _as_mask(x: object, name: str) -> np.ndarray:
    """A 1-D bool array; integer input must hold only 0 and 1."""
    arr = _as_1d(x, name)
    if arr.dtype == bool:
        return arr
    if arr.size == 0:
        return arr.astype(bool)
    if arr.dtype.kind not in "iu" or not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must be boolean (or 0/1 integers), got dtype {arr.dtype}")
    return arr.astype(bool)


def _same_length(**arrays: np.ndarray) -> None:
    """Raise a ValueError naming the lengths unless all arrays have the same length."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"inputs must have equal lengths, got {desc}")


def _scored_groups(score: object, mask: object, name: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Validated ``(score, mask, n_positive, n_negative)`` of a binary scoring problem."""
    s = _as_score(score)
    pos = _as_mask(mask, name)
    _same_length(**{"score": s, name: pos})
    n_pos = int(pos.sum())
    return s, pos, n_pos, pos.size - n_pos


def _check_num_known(num_known: int) -> int:
    """``num_known`` must be a positive integer."""
    if isinstance(num_known, bool) or not isinstance(num_known, (int, np.integer)) or num_known < 1:
        raise ValueError(f"num_known must be a positive integer, got {num_known!r}")
    return int(num_known)


def _check_classification(pred: object, label: object, num_known: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate ``pred`` (in ``[0, K)``) and ``label`` (``>= 0``), equal lengths."""
    k = _check_num_known(num_known)
    pred_a = _as_int(pred, "pred")
    label_a = _as_int(label, "label")
    _same_length(pred=pred_a, label=label_a)
    if pred_a.size and (pred_a.min() < 0 or pred_a.max() >= k):
        raise ValueError(f"pred must lie in [0, num_known={k}), got range [{pred_a.min()}, {pred_a.max()}]")
    if label_a.size and label_a.min() < 0:
        raise ValueError(f"label must be non-negative, got {label_a.min()}")
    return pred_a, label_a, k


def _cumulative_counts(score: np.ndarray, *masks: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct thresholds (descending) and, per mask, ``#{i in mask : score_i >= t}`` at each one.

    Sorting is stable and tie groups are collapsed: the counts are taken at the last index of
    each group of equal scores, so samples with equal scores enter together.
    """
    order = np.argsort(-score, kind="mergesort")
    s = score[order]
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1] if s.size else np.empty(0, dtype=np.int64)
    counts = [np.cumsum(m[order], dtype=np.int64)[ends] for m in masks]
    return s[ends], counts


def roc_curve(score: object, is_known: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve with known = positive, as fractions in ``[0, 1]``.

    At each distinct threshold ``t`` (descending) ``TPR(t) = #{known: s >= t} / #known`` and
    ``FPR(t) = #{unknown: s >= t} / #unknown``; a first point ``(0, 0)`` with threshold ``+inf``
    is prepended. Ties are grouped (one point per distinct score, no points dropped), as in
    sklearn's ``roc_curve(drop_intermediate=False)``.
    Raises ValueError when either group is empty.
    Returns ``(fpr, tpr, thresholds)``.
    """
    s, pos, n_pos, n_neg = _scored_groups(score, is_known, "is_known")
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_curve needs both groups, got {n_pos} known and {n_neg} unknown samples")
    thresholds, (tp, fp) = _cumulative_counts(s, pos, ~pos)
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    return fpr, tpr, np.r_[np.inf, thresholds]


def auroc(score: object, is_known: object) -> float:
    """Area under the ROC curve (known = positive), in percent.

    Mann-Whitney form: ``AUROC = P(s_known > s_unknown) + 0.5 * P(s_known == s_unknown)``,
    computed with average ranks ``R``: ``(sum_{i known} R_i - n_k (n_k + 1) / 2) / (n_k n_u)``.
    Equals sklearn's ``roc_auc_score``. ``nan`` if either group is empty.
    """
    s, pos, n_pos, n_neg = _scored_groups(score, is_known, "is_known")
    if n_pos == 0 or n_neg == 0:
        return _NAN
    ranks = rankdata(s, method="average")
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(100.0 * u / (n_pos * n_neg))


def fpr_at_tpr(score: object, is_known: object, tpr: float = 0.95) -> float:
    """False positive rate of unknowns at a given true positive rate of knowns, in percent.

    On the ROC curve of :func:`roc_curve` (points ``(FPR_j, TPR_j)``, starting at ``(0, 0)``),
    let ``j`` be the first point with ``TPR_j >= tpr`` (up to 1e-12). The result is the linear
    interpolation between points ``j - 1`` and ``j``:
    ``FPR = FPR_{j-1} + (tpr - TPR_{j-1}) / (TPR_j - TPR_{j-1}) * (FPR_j - FPR_{j-1})``.
    When some point hits ``tpr`` exactly this is its FPR, and of several such points the
    first, i.e. the smallest FPR. A tie group holding knowns and unknowns is a diagonal
    segment, so crossing ``tpr`` inside it gives a fractional FPR.
    ``nan`` if either group is empty. ``tpr`` must lie in ``(0, 1]``.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr}")
    s, pos, n_pos, n_neg = _scored_groups(score, is_known, "is_known")
    if n_pos == 0 or n_neg == 0:
        return _NAN
    fpr_c, tpr_c, _ = roc_curve(s, pos)
    j = int(np.argmax(tpr_c >= tpr - _TPR_ATOL))
    if j == 0:
        return 0.0
    t0, t1 = tpr_c[j - 1], tpr_c[j]
    f0, f1 = fpr_c[j - 1], fpr_c[j]
    frac = min(max((tpr - t0) / (t1 - t0), 0.0), 1.0)
    return float(100.0 * (f0 + frac * (f1 - f0)))


def average_precision(score: object, is_positive: object) -> float:
    """Step-wise average precision, in percent.

    Over distinct thresholds ``t_1 > t_2 > ...`` (ties grouped), with
    ``P_n = TP_n / (TP_n + FP_n)`` and ``R_n = TP_n / #positive``:
    ``AP = sum_n (R_n - R_{n-1}) * P_n`` with ``R_0 = 0`` (no interpolation); equivalently the
    mean over positives ``i`` of the precision at threshold ``score_i``. Equals sklearn's
    ``average_precision_score``. ``aupr_in`` is AP(score, known); ``aupr_out`` is
    AP(-score, unknown). ``nan`` if there is no positive.
    """
    s, pos, n_pos, _ = _scored_groups(score, is_positive, "is_positive")
    if n_pos == 0:
        return _NAN
    _, (tp, fp) = _cumulative_counts(s, pos, ~pos)
    precision = tp / (tp + fp)
    recall_gain = np.diff(np.r_[0, tp]) / n_pos
    return float(100.0 * np.sum(recall_gain * precision))


def accuracy(pred: object, label: object, num_known: int) -> float:
    """Closed-set accuracy on known samples only, in percent: ``mean_{label_i < K} [pred_i == label_i]``.

    ``nan`` if there is no known sample.
    """
    pred_a, label_a, k = _check_classification(pred, label, num_known)
    known = label_a < k
    if not known.any():
        return _NAN
    return float(100.0 * np.mean(pred_a[known] == label_a[known]))


def per_class_accuracy(pred: object, label: object, num_known: int) -> float:
    """Mean per-class accuracy over the known classes present in ``label``, in percent.

    ``acc_pc = mean_{c in C} #{i: label_i = c, pred_i = c} / #{i: label_i = c}`` where ``C`` is
    the set of known classes (``c < K``) with at least one sample; absent classes are skipped,
    not counted as 0. ``nan`` if there is no known sample.
    """
    pred_a, label_a, k = _check_classification(pred, label, num_known)
    known = label_a < k
    if not known.any():
        return _NAN
    lab = label_a[known]
    total = np.bincount(lab, minlength=k)
    correct = np.bincount(lab, weights=(pred_a[known] == lab).astype(np.float64), minlength=k)
    present = total > 0
    return float(100.0 * np.mean(correct[present] / total[present]))


def oscr(pred: object, label: object, score: object, num_known: int) -> float:
    """Open-Set Classification Rate (Dhamija et al., 2018), in percent.

    For a threshold ``t``: ``CCR(t) = #{known i: pred_i == label_i and s_i >= t} / #known`` and
    ``FPR(t) = #{unknown i: s_i >= t} / #unknown``. ``t`` sweeps the distinct scores in
    descending order (ties grouped: equal scores enter together), giving the points
    ``(0, 0), (FPR(t_1), CCR(t_1)), ..., (1, acc / 100)``; OSCR is the trapezoid-rule area under
    ``CCR`` against ``FPR`` over ``[0, 1]``. A tie between a correct known and an unknown thus
    counts one half, as in AUROC; with every known correctly classified OSCR equals AUROC.
    Bounds: ``0 <= OSCR <= min(acc, AUROC)``, and 100 for perfect separation and
    classification. ``nan`` if either group is empty.
    """
    pred_a, label_a, k = _check_classification(pred, label, num_known)
    s = _as_score(score)
    _same_length(pred=pred_a, label=label_a, score=s)
    known = label_a < k
    n_known = int(known.sum())
    n_unknown = known.size - n_known
    if n_known == 0 or n_unknown == 0:
        return _NAN
    correct = known & (pred_a == label_a)
    _, (cc, fp) = _cumulative_counts(s, correct, ~known)
    ccr = np.r_[0.0, cc / n_known]
    fpr = np.r_[0.0, fp / n_unknown]
    area = np.sum(np.diff(fpr) * (ccr[1:] + ccr[:-1]) / 2.0)
    return float(100.0 * area)


def harmonic_mean(a: float, b: float) -> float:
    """``2 a b / (a + b)`` (percent in, percent out); ``0`` if both are 0, ``nan`` if either is ``nan``.

    ``hm_accpc_auroc`` is the harmonic mean of ``acc_pc`` and ``auroc`` (UEO's summary of
    closed-set and open-set performance); ``hos`` is that of ``hos_known`` and ``hos_unknown``.
    """
    a, b = float(a), float(b)
    if np.isnan(a) or np.isnan(b):
        return _NAN
    if a + b == 0.0:
        return 0.0
    return 2.0 * a * b / (a + b)


def otsu_threshold(score: object) -> float:
    """Otsu's threshold of a score distribution: the cut that maximises the between-class variance.

    Over the sorted scores ``s_1 <= ... <= s_n`` and every cut ``k`` between two distinct values,
    ``sigma_b^2(k) = w_0 w_1 (mu_0 - mu_1)^2`` with ``w`` the group fractions and ``mu`` the
    group means; the threshold is the midpoint of the best cut (``score >= t`` is accepted as
    known). Exact (no histogram bins), deterministic, and it reads nothing but the scores: the
    label-free rejection rule of :func:`unida_hscore`. ``nan`` when fewer than two distinct
    values exist.
    """
    s = np.sort(_as_score(score))
    if s.size < 2 or s[0] == s[-1]:
        return _NAN
    n = s.size
    csum = np.cumsum(s)
    k = np.arange(1, n)
    cut = s[1:] != s[:-1]
    w0 = k / n
    mu0 = csum[:-1] / k
    mu1 = (csum[-1] - csum[:-1]) / (n - k)
    between = np.where(cut, w0 * (1.0 - w0) * (mu0 - mu1) ** 2, -np.inf)
    j = int(np.argmax(between))
    return float((s[j] + s[j + 1]) / 2.0)


def unida_hscore(pred: object, label: object, score: object, num_known: int, threshold: float) -> dict[str, float]:
    """The UniDA H-score with a given rejection threshold, in percent.

    A sample is rejected as unknown when ``score < threshold``. ``hos_known`` is the mean over
    the known classes present of the per-class accuracy, where a known sample counts as correct
    only when accepted and classified correctly; ``hos_unknown`` is the fraction of unknown
    samples rejected; ``hos`` is their harmonic mean (Fu et al., ECCV 2020; OVANet, Saito &
    Saenko, ICCV 2021). Rejecting everything gives ``hos_known = 0``, accepting everything
    ``hos_unknown = 0``, so both give ``hos = 0``. ``nan`` when either group is empty or the
    threshold is undefined.
    """
    pred_a, label_a, k = _check_classification(pred, label, num_known)
    s = _as_score(score)
    _same_length(pred=pred_a, label=label_a, score=s)
    known = label_a < k
    if not known.any() or known.all() or not np.isfinite(threshold):
        return {"hos": _NAN, "hos_known": _NAN, "hos_unknown": _NAN}
    accepted = s >= threshold
    lab = label_a[known]
    hit = (accepted & (pred_a == label_a))[known].astype(np.float64)
    total = np.bincount(lab, minlength=k)
    correct = np.bincount(lab, weights=hit, minlength=k)
    present = total > 0
    a_known = float(100.0 * np.mean(correct[present] / total[present]))
    a_unknown = float(100.0 * np.mean(~accepted[~known]))
    return {"hos": harmonic_mean(a_known, a_unknown), "hos_known": a_known, "hos_unknown": a_unknown}


def classification_metrics(pred: object, label: object, num_known: int) -> dict[str, float]:
    """``acc``, ``acc_pc`` and the counts ``n``, ``n_known``, ``n_unknown`` (no score needed)."""
    pred_a, label_a, k = _check_classification(pred, label, num_known)
    n_known = int((label_a < k).sum())
    return {
        "acc": accuracy(pred_a, label_a, k),
        "acc_pc": per_class_accuracy(pred_a, label_a, k),
        "n": int(label_a.size),
        "n_known": n_known,
        "n_unknown": int(label_a.size - n_known),
    }


def score_metrics(
    pred: object, label: object, score: object, num_known: int, threshold: float = _NAN, acc_pc: float | None = None
) -> dict[str, float]:
    """The metrics of one OOD score, in percent.

    ``auroc``, ``fpr95`` (FPR at 95% TPR), ``aupr_in`` (AP, known positive, ``score``),
    ``aupr_out`` (AP, unknown positive, ``-score``), ``oscr``, ``hm_accpc_auroc`` (harmonic
    mean of ``acc_pc`` and ``auroc``), and the UniDA H-score ``hos`` with its parts at
    ``threshold`` (which the caller fits without labels, e.g. :func:`otsu_threshold` of the
    adapt set's scores), plus ``threshold`` itself. Known-vs-unknown metrics are ``nan`` when
    either group is empty.
    """
    pred_a, label_a, k = _check_classification(pred, label, num_known)
    s = _as_score(score)
    _same_length(pred=pred_a, label=label_a, score=s)
    is_known = label_a < k
    both = bool(is_known.any() and (~is_known).any())
    if acc_pc is None:
        acc_pc = per_class_accuracy(pred_a, label_a, k)
    au = auroc(s, is_known)
    out = {
        "auroc": au,
        "fpr95": fpr_at_tpr(s, is_known, 0.95) if both else _NAN,
        "aupr_in": average_precision(s, is_known) if both else _NAN,
        "aupr_out": average_precision(-s, ~is_known) if both else _NAN,
        "oscr": oscr(pred_a, label_a, s, k),
        "hm_accpc_auroc": harmonic_mean(acc_pc, au),
    }
    out.update(unida_hscore(pred_a, label_a, s, k, threshold))
    out["threshold"] = float(threshold)
    return out


def open_set_metrics(
    pred: object, label: object, score: object, num_known: int, threshold: float | None = None
) -> dict[str, float]:
    """All open-set metrics of one evaluation with one score, in percent (a flat dict).

    :func:`classification_metrics` plus :func:`score_metrics`; ``threshold`` None fits Otsu's
    threshold on ``score`` itself (label-free).
    """
    out = classification_metrics(pred, label, num_known)
    t = otsu_threshold(score) if threshold is None else threshold
    out.update(score_metrics(pred, label, score, num_known, t, out["acc_pc"]))
    return out


LABEL_FREE = "infomax"
"""The label-free criterion recorded in every run (``label_free``): what ``unsupervised`` selection maximises."""


def infomax_criterion(probs: np.ndarray) -> float:
    """``H(mean_i p_i) - mean_i H(p_i)`` of (N, K) probabilities (natural log; higher is better)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0:
        return float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = lambda q: -np.sum(np.where(q > 0, q * np.log(q), 0.0), axis=-1)  # noqa: E731
        return float(ent(p.mean(axis=0)) - ent(p).mean())
