"""Augmented views of each test image and the statistics episodic and training-free methods take of them.

TPT (azshue/TPT ``tpt_classification.py:41-51``) and the methods built on it (TDA's AugMix
setting, C-TPT, TPS, ZERO, MTA, DMN, BoostAdapter) start from the same thing: the image features
of the original view and ``V - 1`` random augmentations of each test image, through a frozen
image encoder. Each image's views come from a generator seeded by the run seed and the image's
position in the stream (``image_generators``), so they do not depend on the batching and are
the same for every method of a seed.
"""
from __future__ import annotations

import math

import torch

from benchmark.adapt.augment import Augment, image_generators
from benchmark.adapt.losses import softmax_entropy
from benchmark.model.clip import ClipClassifier


def confident_views(logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, k) indices of each image's ``k = int(V * fraction)`` lowest-entropy views of (B, V, K) logits.

    TPT's ``select_confident_samples`` (tpt_classification.py:41-44): ascending entropy, the
    first ``int(V * top)``; ties keep the lower view index.
    """
    k = max(1, int(logits.shape[1] * fraction))
    entropy = softmax_entropy(logits.flatten(0, 1)).view(logits.shape[:2])
    return entropy.argsort(dim=1, stable=True)[:, :k]


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B,) entropy of the mean of the views' probabilities, ``H(mean_v softmax(z_v))``, of (B, V, K) logits.

    TPT's ``avg_entropy`` (tpt_classification.py:46-51): ``log mean_v p_v`` as
    ``logsumexp_v log_softmax(z_v) - log V``, clamped at the type's minimum, then ``-sum p log p``.
    """
    log_p = logits.float().log_softmax(dim=-1)
    avg = torch.logsumexp(log_p, dim=1) - math.log(logits.shape[1])
    avg = avg.clamp(min=torch.finfo(avg.dtype).min)
    return -(avg * avg.exp()).sum(dim=-1)


@torch.no_grad()
def view_features(model: ClipClassifier, batch: dict, views: int, augment: Augment, seed: int) -> torch.Tensor:
    """(B, V, D) image features of every image's original view (``batch["images"]``) and ``views - 1``
    augmentations of its whole image (``batch["raw"]``), drawn from the image's own generator."""
    original = model.image_features(batch["images"])
    n_aug = views - 1
    if n_aug == 0:
        return original.unsqueeze(1)
    raw = batch["raw"]
    augmented = torch.cat([augment(raw.select(slice(row, row + 1)).repeat(n_aug), g)
                           for row, g in enumerate(image_generators(seed, batch["index"]))])
    feats = torch.cat([model.image_features(chunk) for chunk in augmented.split(256)])
    return torch.cat([original.unsqueeze(1), feats.view(original.shape[0], n_aug, -1)], dim=1)
