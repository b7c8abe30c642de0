"""Class-keyed caches of test features for training-free online methods (TDA and BoostAdapter).

TDA (kdiAAA/TDA ``tda_runner.py``) keeps two caches keyed by the zero-shot pseudo-label and adds
their affinities to the zero-shot logits; BoostAdapter (taolinzhang/BoostAdapter ``runner.py``)
keeps the same two caches and, for each image, adds its boosting samples to a per-image copy of
the positive one. What both need lives here:

- :class:`ClassCache`: per-class entries ``(feature, entropy, extra)``, the lowest entropies kept;
- :func:`cache_logits`: ``alpha * exp(-(beta - beta f . keys)) @ values``;
- :func:`confident_statistics`: one image's feature, logits, entropy and probabilities from the
  10% most confident of its views (TDA's and BoostAdapter's ``get_clip_logits``);
- :class:`TDACaches`: the positive and negative caches with TDA's hyper-parameters, the rule
  that offers an image to them and the logits ``z + A_pos - A_neg``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from benchmark.adapt.views import marginal_entropy


class ClassCache:
    """Per-class entries ``(feature, entropy, extra)``, at most ``capacity`` per class: the lowest
    entropies, sorted (TDA), or with ``fifo`` the most recent, in arrival order (BoostAdapter's
    negative cache)."""

    def __init__(self, capacity: int, fifo: bool = False):
        self.capacity = capacity
        self.fifo = fifo
        self.entries: dict[int, list[tuple[torch.Tensor, float, torch.Tensor | None]]] = {}

    def offer(self, label: int, feature: torch.Tensor, entropy: float, extra: torch.Tensor | None = None) -> None:
        """TDA's ``update_cache``: append while below capacity, else replace the worst if the new one is better.

        The same entries as BoostAdapter's ``update_cache(..., fifo=False)`` (append, stable sort by
        entropy, keep the first ``capacity``): a tie with the worst entry keeps the old one in both.
        With ``fifo`` (BoostAdapter's ``fifo=True``): append, and drop the oldest beyond capacity.
        """
        items = self.entries.setdefault(label, [])
        if self.fifo:
            items.append((feature, entropy, extra))
            if len(items) > self.capacity:
                del items[0]
            return
        if len(items) < self.capacity:
            items.append((feature, entropy, extra))
        elif entropy < items[-1][1]:
            items[-1] = (feature, entropy, extra)
        items.sort(key=lambda item: item[1])

    def copy(self, capacity: int | None = None) -> ClassCache:
        """A copy whose later offers leave this cache alone (the entries' tensors are shared, never
        modified), holding at most ``capacity`` (default: the same) per class from now on."""
        other = ClassCache(self.capacity if capacity is None else capacity, self.fifo)
        other.entries = {label: list(items) for label, items in self.entries.items()}
        return other

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def keys_values(
        self, num_classes: int, mask: tuple[float, float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) stored features in class order and their (N, K) values: one-hot labels, or for a
        negative cache the ``mask`` of the stored probabilities."""
        labels, feats, extras = [], [], []
        for label in sorted(self.entries):
            for feature, _, extra in self.entries[label]:
                labels.append(label)
                feats.append(feature)
                extras.append(extra)
        keys = torch.stack(feats)
        if mask is None:
            values = F.one_hot(torch.tensor(labels), num_classes)
        else:
            stored = torch.stack(extras)
            values = (stored > mask[0]) & (stored < mask[1])
        return keys, values.to(device=keys.device, dtype=keys.dtype)


def cache_logits(
    feature: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """``alpha * exp(-(beta - beta * f . keys)) @ values`` (TDA's ``compute_cache_logits``)."""
    affinity = feature @ keys.t()
    return alpha * torch.exp(-(beta - beta * affinity)) @ values


def confident_statistics(feats: torch.Tensor, logits: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One image's statistics from its confident views ``keep`` of (V, D) features and (V, K) logits.

    TDA's ``get_clip_logits`` with several views (TDA/utils.py:76-85; BoostAdapter/utils.py:94-103):
    the mean feature (not re-normalised), the mean logits, the entropy of the mean probability and
    the mean probability.
    """
    z = logits[keep]
    return feats[keep].mean(0), z.mean(0), marginal_entropy(z.unsqueeze(0))[0], z.softmax(-1).mean(0)


class TDACaches:
    """TDA's positive and negative caches, keyed by the pseudo-label ``argmax`` of an image's logits.

    ``hp`` holds TDA's keys: ``pos_shot_capacity``, ``pos_alpha``, ``pos_beta``,
    ``neg_shot_capacity``, ``neg_alpha``, ``neg_beta``, ``neg_entropy_lower``/``upper`` (the gate on
    ``H / log2 K``, H in nats: TDA's ``get_entropy``) and ``neg_mask_lower``/``upper``; and
    optionally ``neg_fifo`` (default False: TDA's lowest-entropy rule; True: BoostAdapter's
    first-in-first-out negative cache).
    """

    def __init__(self, hp: dict[str, Any]):
        self.hp = hp
        self.positive = ClassCache(hp["pos_shot_capacity"])
        self.negative = ClassCache(hp["neg_shot_capacity"], fifo=hp.get("neg_fifo", False))

    def offer(self, label: int, feature: torch.Tensor, entropy: float, probs: torch.Tensor, num_classes: int) -> None:
        """Every image to the positive cache; to the negative one only inside the entropy window."""
        hp = self.hp
        self.positive.offer(label, feature, entropy)
        if hp["neg_entropy_lower"] < entropy / math.log2(num_classes) < hp["neg_entropy_upper"]:
            self.negative.offer(label, feature, entropy, probs)

    def logits(
        self, feature: torch.Tensor, logits: torch.Tensor, num_classes: int, positive: ClassCache | None = None
    ) -> torch.Tensor:
        """``logits + A_pos - A_neg`` (a term skipped while its cache is empty); ``positive`` replaces
        the positive cache (BoostAdapter's per-image copy)."""
        hp = self.hp
        positive = self.positive if positive is None else positive
        final = logits.clone()
        if len(positive):
            final += cache_logits(feature, *positive.keys_values(num_classes), hp["pos_alpha"], hp["pos_beta"])
        if len(self.negative):
            keys, values = self.negative.keys_values(num_classes, (hp["neg_mask_lower"], hp["neg_mask_upper"]))
            final -= cache_logits(feature, keys, values, hp["neg_alpha"], hp["neg_beta"])
        return final
