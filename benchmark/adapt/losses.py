"""Unsupervised loss helpers shared by the methods: pure functions of logits or probabilities.

Every helper computes in float32 (logits may arrive in bf16 under autocast) so that entropies of
nearly uniform distributions keep their precision. Notation: ``p_i = softmax(logits_i)`` over the
K known classes, ``H(q) = -sum_k q_k log(q_k + eps)``.
"""

from __future__ import annotations

import torch

ENTROPY_EPS = 1e-5
"""The ``eps`` inside the log of UEO's and SHOT-IM's entropies (as in their official code)."""


def entropy(p: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """Shannon entropy of probability vectors along the last dim: ``-sum_k p_k log(p_k + eps)``.

    ``eps`` keeps ``log`` finite (and its gradient bounded) where a probability underflows to 0.
    A (N, K) input gives N entropies; a (K,) input gives a scalar.
    """
    p = p.float()
    return -(p * torch.log(p + eps)).sum(dim=-1)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """TENT's per-row entropy of ``softmax(logits)``: ``-sum_k softmax_k * log_softmax_k`` (no eps).

    ``log_softmax`` is exact where ``log(softmax)`` would underflow, so no ``eps`` is needed.
    """
    logits = logits.float()
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


def ueo_confidence_weights(cosine: torch.Tensor) -> torch.Tensor:
    """UEO's sample weights ``w_i = max_k softmax_k(cos_ik)``: MSP of the *unscaled* cosines.

    Temperature 1 on cosines in [-1, 1] keeps every weight in [1/K, 1) and close to 1/K, so
    the weighting reorders samples gently and ``1/w_i`` stays bounded by K.
    """
    return cosine.float().softmax(dim=-1).max(dim=-1).values


def ueo_loss(logits: torch.Tensor, weights: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """UEO's universal entropy objective on one batch.

    ``L = sum_i w_i H(p_i) / sum_i w_i  -  lam * H( sum_i (1/w_i) p_i / sum_i (1/w_i) )``:
    confident samples (likely known classes) are pushed to low entropy, while the marginal over
    the batch, dominated by unconfident samples (likely unknowns) through ``1/w``, is pushed to
    high entropy, which keeps predictions diverse and unknowns uncertain.
    """
    p = logits.float().softmax(dim=-1)
    w = weights.float()
    conditional = (w * entropy(p)).sum() / w.sum()
    inv = 1.0 / w
    marginal = (inv.unsqueeze(1) * p).sum(dim=0) / inv.sum()
    return conditional - lam * entropy(marginal)


def infomax_loss(logits: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """SHOT's information maximisation: ``L = mean_i H(p_i) - lam * H(mean_i p_i)``.

    Confident per-sample predictions (first term) that are diverse over the batch (second term);
    this is ``ueo_loss`` with uniform weights.
    """
    p = logits.float().softmax(dim=-1)
    return entropy(p).mean() - lam * entropy(p.mean(dim=0))
