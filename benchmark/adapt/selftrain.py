"""Self-training helpers: pseudo-label selection (UPL) and MUST's fairness regulariser.

Notation: ``probs`` is an (N, K) matrix of class probabilities ``p_ik = softmax_k(100 cos_ik)``;
the pseudo-label of image i is ``y_i = argmax_k p_ik`` and its confidence the maximum softmax
probability ``c_i = max_k p_ik`` (MSP). Selections return ``(indices, labels)``: LongTensors of
the selected rows (ascending) and their pseudo-labels.
"""

from __future__ import annotations

import torch


def class_balanced_topk(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """UPL's class-balanced selection: for every class, its ``k`` most confident images.

    The candidates of class ``c`` are the images with ``y_i = c``; they are ranked by ``c_i``
    (ties by index) and the first ``k`` are kept. A class with fewer than ``k`` candidates keeps
    all of them; a class that no image predicts gets none (UPL's
    ``select_top_k_similarity_per_class``).
    """
    conf, pred = probs.float().max(dim=1)
    keep = []
    for c in pred.unique().tolist():
        members = (pred == c).nonzero().squeeze(1)
        order = conf[members].argsort(descending=True, stable=True)
        keep.append(members[order[:k]])
    indices = torch.cat(keep).sort().values if keep else torch.empty(0, dtype=torch.long, device=probs.device)
    return indices, pred[indices]


def confident(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold selection: every image whose MSP exceeds ``threshold`` (``c_i > threshold``).

    Strict inequality, as UPL's ``select_top_by_value`` and MUST's confidence mask.
    """
    conf, pred = probs.float().max(dim=1)
    indices = (conf > threshold).nonzero().squeeze(1)
    return indices, pred[indices]


FAIRNESS_EPS = 1e-12
"""Floor of the batch-mean probability inside the log, so a class no sample predicts gives a finite loss."""


def fairness_loss(probs: torch.Tensor) -> torch.Tensor:
    """MUST's fairness regulariser: ``L = -(1/K) sum_k log( (1/N) sum_i p_ik )``.

    It is minimal (``log K``) when the batch-average prediction is uniform, so it discourages the
    self-training collapse onto a few classes (weight 1 in MUST's code). The mean is
    floored at ``FAIRNESS_EPS``, which only matters where a class's mean underflows to 0.
    """
    mean = probs.float().mean(dim=0).clamp_min(FAIRNESS_EPS)
    return -torch.log(mean).mean()
