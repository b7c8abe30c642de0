"""Label-free splits of a score distribution into likely known and likely unknown samples.

Open-set test-time methods decide which test samples to treat as unknown from their scores
alone: UniEnt fits a two-component Gaussian mixture to each batch's outlier scores, ROSITA
searches a threshold on a grid that minimises the within-group variance of its recent scores
(Otsu's criterion). Both are pure functions of the scores.
"""

from __future__ import annotations

import math

import numpy as np

GMM_MAX_ITER = 100
GMM_TOL = 1e-3
GMM_REG = 1e-6
"""scikit-learn's ``GaussianMixture`` defaults, which UniEnt uses (UniEnt/imagenet/tent.py:80)."""


def _kmeans2(x: np.ndarray, iters: int = 100) -> np.ndarray:
    """Two-cluster Lloyd iterations in 1-D from the extreme values; boolean 'upper cluster' labels."""
    lo, hi = float(x.min()), float(x.max())
    upper = x > (lo + hi) / 2
    for _ in range(iters):
        if upper.all() or not upper.any():
            break
        c0, c1 = x[~upper].mean(), x[upper].mean()
        new = np.abs(x - c1) < np.abs(x - c0)
        if np.array_equal(new, upper):
            break
        upper = new
    return upper


def gmm2_posteriors(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit a 1-D two-component Gaussian mixture by EM; (N, 2) posteriors and the two means, lower mean first.

    As scikit-learn's ``GaussianMixture(n_components=2)``: parameters initialised from a k-means
    split, variances regularised by ``1e-6``, E and M steps until the mean log-likelihood changes
    by less than ``1e-3`` or 100 iterations, then the posteriors of the fitted parameters. The
    k-means start is deterministic here (from the extreme values) where scikit-learn's is random.
    Degenerate input (fewer than two distinct values) puts every sample in the first component.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    n = x.size
    if n < 2 or np.ptp(x) == 0:
        post = np.zeros((n, 2))
        post[:, 0] = 1.0
        mean = float(x.mean()) if n else 0.0
        return post, np.array([mean, mean])
    upper = _kmeans2(x)
    params = _m_step(x, np.stack([~upper, upper], axis=1).astype(np.float64))
    previous = -math.inf
    for _ in range(GMM_MAX_ITER):
        resp, bound = _e_step(x, *params)
        params = _m_step(x, resp)
        if abs(bound - previous) < GMM_TOL:
            break
        previous = bound
    resp, _ = _e_step(x, *params)  # scikit-learn's final E-step: posteriors of the fitted parameters
    means = params[1]
    order = np.argsort(means, kind="stable")
    return resp[:, order], means[order]


def _m_step(x: np.ndarray, resp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights, means and (regularised) variances from responsibilities."""
    nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps
    means = (resp * x[:, None]).sum(axis=0) / nk
    var = (resp * (x[:, None] - means) ** 2).sum(axis=0) / nk + GMM_REG
    return nk / x.size, means, var


def _e_step(x: np.ndarray, weights: np.ndarray, means: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, float]:
    """Posteriors of the two components and the mean log-likelihood."""
    log_prob = -0.5 * (np.log(2 * np.pi * var) + (x[:, None] - means) ** 2 / var) + np.log(weights)
    norm = np.logaddexp(log_prob[:, 0], log_prob[:, 1])
    return np.exp(log_prob - norm[:, None]), float(norm.mean())


def grid_otsu(scores: np.ndarray, grid: np.ndarray | None = None) -> tuple[float, float, float]:
    """ROSITA's threshold: the grid value minimising ``w0 var0 + w1 var1`` of the scores split at it.

    A sample is above the threshold when ``score >= t``; a threshold that leaves a group empty is
    not considered (ROSITA methods/rosita.py:18-55, 118-124; grid ``arange(0, 1, 0.01)``).
    Returns ``(threshold, mu0, mu1)``, the means of the low and high groups (``(0, 0, 1)`` when no
    grid value splits the scores, as ROSITA's fallback statistics).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    grid = np.arange(0, 1, 0.01) if grid is None else np.asarray(grid, dtype=np.float64)
    high = s[None, :] >= grid[:, None]
    n1 = high.sum(axis=1)
    n0 = s.size - n1
    valid = (n1 > 0) & (n0 > 0)
    if not valid.any():
        return float(grid[0]), 0.0, 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        mu1 = (high * s).sum(axis=1) / n1
        mu0 = (~high * s).sum(axis=1) / n0
        var1 = (high * (s - mu1[:, None]) ** 2).sum(axis=1) / n1
        var0 = (~high * (s - mu0[:, None]) ** 2).sum(axis=1) / n0
        within = np.where(valid, n0 / s.size * var0 + n1 / s.size * var1, np.inf)
    j = int(np.argmin(within))
    return float(grid[j]), float(mu0[j]), float(mu1[j])
